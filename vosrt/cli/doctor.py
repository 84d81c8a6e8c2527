"""``vosrt doctor``: what this machine can run, and the command that installs what it lacks.

It looks at the GPU (name, compute capability, memory, driver), torch and its CUDA build, Triton
(and whether it compiles a kernel for this GPU), ONNX Runtime (release, execution providers,
onnxruntime-extensions), onnx and Polygraphy, and TensorRT (release, ahead-of-time plugins, DLA
cores). Each probe catches its own failure: a package that is missing or fails to import is a
line of the report, never a traceback. :func:`collect` returns the same facts to other tools
(the GPU acceptance run records them). ``python -m vosrt.doctor`` runs it too.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.metadata
import importlib.util
import os
import platform
import re
import shutil
import subprocess
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

TORCH_CUDA = "install torch's CUDA build for this driver: https://pytorch.org/get-started/locally/"
ORT_GPU = "pip uninstall -y onnxruntime onnxruntime-gpu && pip install 'onnxruntime-gpu>=1.26'"
TENSORRT_JETSON = "use JetPack's TensorRT (python3-libnvinfer): see docs/jetson.md"
TENSORRT_RANGE = ((10, 3), (12, 0))  # what vosrt's engine code runs on; plugins need 10.9


def required_release(package: str) -> tuple[int, ...]:
    """The lowest (major, minor) of ``package`` that vosrt's installed metadata asks for (a ``>=``
    bound of its dependencies or extras, as pyproject.toml declares it); () without one."""
    for requirement in importlib.metadata.requires("vosrt") or ():
        match = re.match(rf"{re.escape(package)}\s*>=\s*(\d+)\.(\d+)", requirement)
        if match:
            return int(match[1]), int(match[2])
    return ()


TRITON_MIN = required_release("triton")
_TRITON = ".".join(map(str, TRITON_MIN))
# A kernel small enough to compile in a moment: Triton is asked to build it for this GPU.
_PROBE_KERNEL = """import triton
import triton.language as tl


@triton.jit
def double(x_ptr, n, BLOCK: tl.constexpr):
    offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    keep = offsets < n
    tl.store(x_ptr + offsets, tl.load(x_ptr + offsets, mask=keep) * 2, mask=keep)
"""


@dataclass
class Facts:
    """What :func:`collect` found. A package is its version, None when not installed, or
    ``"broken: <error>"`` when its import fails."""

    python: str
    platform: str
    jetson: bool
    torch: str | None = None
    torch_cuda: str | None = None  # the CUDA release torch was built for; None: CPU build
    gpu: str | None = None
    capability: str | None = None
    gpu_memory_gib: float | None = None
    driver: str | None = None
    triton: str | None = None
    triton_compiles: str | None = None  # "yes (sm_90)", or why not
    c_compiler: str | None = None  # Triton builds its launcher with it
    onnxruntime: str | None = None
    ort_providers: tuple[str, ...] = ()
    ort_dlpack: bool = False
    ort_both_builds: bool = False
    onnxruntime_extensions: str | None = None
    onnx: str | None = None
    polygraphy: str | None = None
    tensorrt: str | None = None
    tensorrt_plugins: bool = False
    dla_cores: int | None = None


def add_parser(sub) -> None:
    p = sub.add_parser("doctor", help="print what this machine can run (GPU, CUDA, torch, Triton, ONNX Runtime, "
                                      "TensorRT, DLA) and how to install what is missing")
    p.set_defaults(run=run)


def run(args: argparse.Namespace | None = None) -> None:
    from vosrt.runtime.artifacts import vosrt_version

    print(f"vosrt {vosrt_version()} doctor\n")
    print(format_report(collect()))


def collect() -> Facts:
    """Probe this machine; never raises for a missing or broken package."""
    from vosrt.export.profile import is_jetson

    facts = Facts(python=platform.python_version(), platform=f"{platform.system()} {platform.machine()}",
                  jetson=is_jetson())
    _probe_torch(facts)
    _probe_triton(facts)
    _probe_onnxruntime(facts)
    facts.onnx, facts.polygraphy = (_version(_import(name)) for name in ("onnx", "polygraphy"))
    _probe_tensorrt(facts)
    return facts


# -- probes -----------------------------------------------------------------------------------

def _import(name: str):
    """The module, None when not installed, or the one-line error of a failing import."""
    try:
        return importlib.import_module(name)
    except ImportError as err:
        if err.name is not None and (name == err.name or name.startswith(err.name + ".")):
            return None  # the package itself is not there (a missing dependency of it is an error)
        return _error(err)
    except Exception as err:  # noqa: BLE001  a broken install can raise anything (OSError for a missing .so)
        return _error(err)


def _error(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return f"broken: {type(err).__name__}: {lines[0] if lines else ''}"


def _version(module) -> str | None:
    return module if module is None or isinstance(module, str) else getattr(module, "__version__", "unknown")


def _release(version: str | None) -> tuple[int, ...]:
    """``"10.9.0.34"`` -> (10, 9); () when missing, broken or not a release number."""
    parts = (version or "").split("+")[0].split(".")[:2]
    return tuple(int(p) for p in parts) if all(p.isdigit() for p in parts) and len(parts) == 2 else ()


def _probe_torch(facts: Facts) -> None:
    torch = _import("torch")
    facts.torch = _version(torch)
    facts.driver = _driver()
    if torch is None or isinstance(torch, str):
        return
    facts.torch_cuda = torch.version.cuda
    try:
        if torch.cuda.is_available():
            properties = torch.cuda.get_device_properties(0)
            facts.gpu = properties.name
            facts.capability = "{}.{}".format(*torch.cuda.get_device_capability(0))
            facts.gpu_memory_gib = round(properties.total_memory / 2**30, 1)
    except Exception as err:  # noqa: BLE001  e.g. a driver too old for this torch
        facts.gpu = _error(err)


def _driver() -> str | None:
    """The NVIDIA driver release nvidia-smi reports, or None without one."""
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        done = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as err:
        return _error(err)
    return done.stdout.strip().splitlines()[0] if done.returncode == 0 and done.stdout.strip() else None


def _gpu_ready(facts: Facts) -> bool:
    return facts.capability is not None


def _probe_triton(facts: Facts) -> None:
    triton = _import("triton")
    facts.triton = _version(triton)
    facts.c_compiler = next((shutil.which(c) for c in ("cc", "gcc", "clang") if shutil.which(c)), None)
    if triton is None or isinstance(triton, str):
        return
    if not _gpu_ready(facts):
        facts.triton_compiles = "no GPU to compile for (on the CPU the kernels run under TRITON_INTERPRET=1)"
        return
    major, minor = (int(x) for x in facts.capability.split("."))
    try:
        facts.triton_compiles = f"yes (sm_{major}{minor})" if _compile_probe(major * 10 + minor) else "no"
    except Exception as err:  # noqa: BLE001  e.g. an architecture this Triton does not know
        facts.triton_compiles = _error(err).replace("broken: ", "no: ")


def _compile_probe(arch: int) -> bool:
    """Compile :data:`_PROBE_KERNEL` for ``sm_<arch>`` (PTX and cubin, no launch), also when
    ``TRITON_INTERPRET`` is set in this process (the question is what the GPU can run)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    with tempfile.TemporaryDirectory(prefix="vosrt-doctor-") as folder, warnings.catch_warnings(), \
            _unset("TRITON_INTERPRET"):
        warnings.simplefilter("ignore")  # Triton's notices about its own defaults
        path = Path(folder) / "vosrt_doctor_probe.py"
        path.write_text(_PROBE_KERNEL)
        spec = importlib.util.spec_from_file_location("vosrt_doctor_probe", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        source = ASTSource(module.double, {"x_ptr": "*fp32", "n": "i32"}, constexprs={"BLOCK": 128})
        compiled = triton.compile(source, target=GPUTarget("cuda", arch, 32))
    return bool(compiled.asm.get("cubin"))


@contextlib.contextmanager
def _unset(variable: str) -> Iterator[None]:
    """The environment without ``variable`` within the block."""
    saved = os.environ.pop(variable, None)
    try:
        yield
    finally:
        if saved is not None:
            os.environ[variable] = saved


def _probe_onnxruntime(facts: Facts) -> None:
    ort = _import("onnxruntime")
    facts.onnxruntime = _version(ort)
    installed = {d.metadata["Name"].lower() for d in importlib.metadata.distributions()}
    facts.ort_both_builds = {"onnxruntime", "onnxruntime-gpu"} <= installed
    facts.onnxruntime_extensions = _version(_import("onnxruntime_extensions"))
    if ort is None or isinstance(ort, str):
        return
    try:
        facts.ort_providers = tuple(ort.get_available_providers())
        facts.ort_dlpack = hasattr(ort.OrtValue, "__dlpack__")
    except Exception as err:  # noqa: BLE001
        facts.onnxruntime = _error(err)


def _probe_tensorrt(facts: Facts) -> None:
    trt = _import("tensorrt")
    facts.tensorrt = _version(trt)
    if trt is None or isinstance(trt, str):
        return
    plugin = _import("tensorrt.plugin")
    facts.tensorrt_plugins = not (plugin is None or isinstance(plugin, str)) and hasattr(plugin, "aot_impl")
    if _gpu_ready(facts):
        try:
            facts.dla_cores = trt.Builder(trt.Logger(trt.Logger.WARNING)).num_DLA_cores
        except Exception as err:  # noqa: BLE001
            facts.tensorrt = f"{facts.tensorrt} ({_error(err)})"


# -- what it means ----------------------------------------------------------------------------

def abilities(facts: Facts) -> list[tuple[str, bool, str]]:
    """(what, whether it can run here, what it needs otherwise)."""
    gpu = _gpu_ready(facts)
    ort = _release(facts.onnxruntime) != () and facts.ort_dlpack
    cuda_ep = "CUDAExecutionProvider" in facts.ort_providers
    trt = TENSORRT_RANGE[0] <= _release(facts.tensorrt) < TENSORRT_RANGE[1]
    triton = _release(facts.triton) >= TRITON_MIN
    return [
        ("backend='torch' on the CPU", facts.torch is not None and not facts.torch.startswith("broken"), "torch"),
        ("backend='torch' on CUDA: fp32, fp16, amp, cuda_graph", gpu, "an NVIDIA GPU and torch's CUDA build"),
        ("Triton top-K kernels on this GPU (eager torch on CUDA)",
         gpu and triton and str(facts.triton_compiles).startswith("yes") and facts.c_compiler is not None,
         f"a GPU, Triton >= {_TRITON} that compiles for it, and a C compiler"),
        ("ONNX export (export-engine --format onnx)", _ok(facts.onnx) and ort, "the export extra"),
        ("backend='onnxruntime' on the CPU", ort, "onnxruntime >= 1.26"),
        ("backend='onnxruntime' on CUDA", ort and cuda_ep and gpu, "a GPU and onnxruntime-gpu >= 1.26"),
        ("custom-op exports on ONNX Runtime (--custom-ops)", ort and _ok(facts.onnxruntime_extensions),
         "onnxruntime-extensions"),
        ("TensorRT engines: export-engine, backend='tensorrt'", trt and gpu, "a GPU and TensorRT 10.3-11.x"),
        ("TensorRT custom-op plugins (--custom-ops engines)",
         trt and gpu and facts.tensorrt_plugins and triton, f"TensorRT >= 10.9 and Triton >= {_TRITON}"),
        ("DLA (export-engine --dla-core)", bool(facts.dla_cores), "a Jetson with DLA cores (AGX Orin, Orin NX)"),
        ("vosrt verify", _ok(facts.polygraphy) and ort, "polygraphy and onnxruntime (the export extra)"),
    ]


def fixes(facts: Facts) -> list[tuple[str, str]]:
    """(what is missing or wrong, the command or step that fixes it)."""
    found = []
    if facts.driver and not facts.torch_cuda:
        found.append(("torch is a CPU build but this machine has an NVIDIA driver", TORCH_CUDA))
    if facts.triton is None:
        found.append(("Triton", "pip install 'vosrt[kernels]'"))
    elif _release(facts.triton) < TRITON_MIN:
        found.append((f"Triton {facts.triton} (vosrt needs >= {_TRITON})", f"pip install -U 'triton>={_TRITON}'"))
    if facts.triton and _gpu_ready(facts) and facts.c_compiler is None:
        found.append(("a C compiler (Triton builds its launcher)", "install gcc (e.g. apt-get install gcc)"))
    if facts.ort_both_builds:
        found.append(("onnxruntime and onnxruntime-gpu both installed (one module: they overwrite each other)",
                      ORT_GPU if _gpu_ready(facts) else "pip uninstall -y onnxruntime onnxruntime-gpu && "
                                                         "pip install 'onnxruntime>=1.26'"))
    elif facts.onnxruntime is None or facts.onnx is None:
        found.append(("onnx / onnxruntime (ONNX export and backend='onnxruntime')", "pip install 'vosrt[export]'"))
    elif not facts.ort_dlpack:
        found.append((f"onnxruntime {facts.onnxruntime} (backend='onnxruntime' needs >= 1.26)",
                      "pip install -U 'onnxruntime>=1.26'"))
    if _gpu_ready(facts) and facts.onnxruntime and "CUDAExecutionProvider" not in facts.ort_providers:
        found.append(("ONNX Runtime's CUDA provider (backend='onnxruntime' on CUDA)", ORT_GPU))
    if facts.onnxruntime_extensions is None:
        found.append(("onnxruntime-extensions (custom-op exports on ONNX Runtime)", "pip install 'vosrt[export]'"))
    if facts.tensorrt is None:
        found.append(("TensorRT (engines)", TENSORRT_JETSON if facts.jetson else "pip install 'vosrt[gpu]' "
                                                                               "(on a machine with an NVIDIA GPU)"))
    elif not TENSORRT_RANGE[0] <= _release(facts.tensorrt) < TENSORRT_RANGE[1]:
        found.append((f"TensorRT {facts.tensorrt} (vosrt runs on 10.3-11.x)", "pip install 'tensorrt>=10.9,<12'"))
    return found


def _ok(version: str | None) -> bool:
    return version is not None and not version.startswith("broken")


def format_report(facts: Facts) -> str:
    gpu = facts.gpu or "none visible to torch"
    if facts.capability:
        gpu += f", compute capability {facts.capability}, {facts.gpu_memory_gib} GiB"
    providers = ", ".join(facts.ort_providers) or "-"
    tensorrt = facts.tensorrt or "not installed"
    if facts.tensorrt and not facts.tensorrt.startswith("broken"):
        tensorrt += f"; ahead-of-time plugins: {'yes' if facts.tensorrt_plugins else 'no (10.9+)'}"
        tensorrt += f"; DLA cores: {facts.dla_cores if facts.dla_cores is not None else '- (no GPU)'}"
    rows = [("Python", f"{facts.python} on {facts.platform}{' (Jetson)' if facts.jetson else ''}"),
            ("NVIDIA driver", facts.driver or "none (nvidia-smi not found)"),
            ("GPU", gpu),
            ("torch", f"{facts.torch} ({'CUDA ' + facts.torch_cuda if facts.torch_cuda else 'CPU build'})"),
            ("Triton", f"{facts.triton or 'not installed'}"
                       + (f"; compiles for this GPU: {facts.triton_compiles}" if facts.triton_compiles else "")),
            ("C compiler", facts.c_compiler or "none"),
            ("ONNX Runtime", f"{facts.onnxruntime or 'not installed'}; providers: {providers}"),
            ("onnxruntime-extensions", facts.onnxruntime_extensions or "not installed"),
            ("onnx", facts.onnx or "not installed"),
            ("Polygraphy", facts.polygraphy or "not installed"),
            ("TensorRT", tensorrt)]
    lines = ["found"] + [f"  {name:24}{value}" for name, value in rows]
    lines += ["", "can run"] + [f"  {'yes' if ok else 'no ':4} {what}" + ("" if ok else f"  (needs {needs})")
                                for what, ok, needs in abilities(facts)]
    missing = fixes(facts)
    lines += ["", "missing" if missing else "nothing missing"]
    lines += [f"  {what}:\n      {command}" for what, command in missing]
    return "\n".join(lines)


def as_dict(facts: Facts) -> dict:
    """The facts and what they mean, for a JSON report."""
    return {"facts": asdict(facts), "can_run": {what: ok for what, ok, _ in abilities(facts)},
            "missing": dict(fixes(facts))}

