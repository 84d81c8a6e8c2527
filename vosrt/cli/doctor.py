"""``vosrt doctor``: what this machine can run, and the command that installs what it lacks.

It looks at the GPU (name, compute capability, memory, driver), torch and its CUDA build, Triton
(and whether it compiles a kernel for this GPU), ONNX Runtime (release, which build: CPU or GPU,
execution providers, onnxruntime-extensions), onnx and Polygraphy, and TensorRT (release, ahead-of-time plugins, DLA
cores). Each probe catches its own failure: a package that is missing or fails to import is a
line of the report, never a traceback. :func:`collect` returns the same facts to other tools
(the GPU acceptance run records them). ``python -m vosrt.doctor`` runs it too.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from vosrt import requirements

TORCH_CUDA = "install torch's CUDA build for this driver: https://pytorch.org/get-started/locally/"
ORT_GPU = "pip uninstall -y onnxruntime onnxruntime-gpu && pip install 'onnxruntime-gpu>=1.26'"
ORT_CPU = "pip install 'vosrt[onnxruntime]'"
# The distributions that install the ``onnxruntime`` module, and which build each is.
ORT_BUILDS = {"onnxruntime": "CPU", "onnxruntime-gpu": "GPU (CUDA)", "onnxruntime-directml": "DirectML",
              "onnxruntime-openvino": "OpenVINO", "onnxruntime-qnn": "QNN"}
TENSORRT_JETSON = "use JetPack's TensorRT (python3-libnvinfer): see docs/jetson.md"
JETPACK_TENSORRT = (10, 3)  # JetPack 6's TensorRT (docs/jetson.md): engines without the plugins
PROBE_TIMEOUT_S = 600  # the probe compiles in about 2 s; only a hung compiler reaches this
# A kernel small enough to compile in a moment: Triton is asked to build it for this GPU, in a
# process of its own (argv[1]: the compute capability as 90), and prints whether it got a cubin.
_PROBE = """import sys
import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource


@triton.jit
def double(x_ptr, n, BLOCK: tl.constexpr):
    offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    keep = offsets < n
    tl.store(x_ptr + offsets, tl.load(x_ptr + offsets, mask=keep) * 2, mask=keep)


source = ASTSource(double, {"x_ptr": "*fp32", "n": "i32"}, constexprs={"BLOCK": 128})
compiled = triton.compile(source, target=GPUTarget("cuda", int(sys.argv[1]), 32))
print("cubin" if compiled.asm.get("cubin") else "no cubin")
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
    ort_build: str | None = None  # "CPU build (onnxruntime)", "GPU (CUDA) build (onnxruntime-gpu)", ...
    ort_providers: tuple[str, ...] = ()
    ort_dlpack: bool = False
    ort_both_builds: bool = False
    onnxruntime_extensions: str | None = None
    onnx: str | None = None
    polygraphy: str | None = None
    tensorrt: str | None = None
    tensorrt_plugins: bool = False
    dla_cores: int | None = None
    opencv: tuple[str, ...] = ()  # the installed OpenCV distributions (each writes the one cv2 module)


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
    facts.opencv = tuple(sorted({d.metadata["Name"].lower() for d in importlib.metadata.distributions()
                                 if d.metadata["Name"] and d.metadata["Name"].lower().startswith("opencv-")}))
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
    facts.triton_compiles = _compile_probe(major * 10 + minor)


def _compile_probe(arch: int) -> str:
    """Whether Triton compiles :data:`_PROBE` for ``sm_<arch>`` (PTX and cubin, no launch):
    ``"yes (sm_90)"``, ``"no: <Triton's error>"``, or ``"not checked: <why>"`` when the probe could not run.

    It compiles in a fresh process with this Python: what the GPU can run does not depend on this
    process's Triton, which may have been imported in interpreter mode (``TRITON_INTERPRET=1``, as
    the kernel tests do) or have run kernels that left its state changed."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    try:
        with tempfile.TemporaryDirectory(prefix="vosrt-doctor-") as folder:
            probe = Path(folder) / "vosrt_doctor_probe.py"  # Triton reads a kernel's source from its file
            probe.write_text(_PROBE)
            done = subprocess.run([sys.executable, str(probe), str(arch)], capture_output=True, text=True, env=env,
                                  timeout=PROBE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return f"not checked: the probe compile ran over {PROBE_TIMEOUT_S} s"
    except OSError as err:
        return f"not checked: {_error(err).removeprefix('broken: ')}"
    answer = done.stdout.strip().splitlines()[-1:]
    if done.returncode == 0 and answer in (["cubin"], ["no cubin"]):
        return f"yes (sm_{arch})" if answer == ["cubin"] else "no: Triton made no cubin"
    errors = [line for line in done.stderr.strip().splitlines() if line.strip()]
    return f"no: {errors[-1] if errors else f'exit status {done.returncode}'}"


def _probe_onnxruntime(facts: Facts) -> None:
    ort = _import("onnxruntime")
    facts.onnxruntime = _version(ort)
    installed = {(d.metadata["Name"] or "").lower() for d in importlib.metadata.distributions()}
    builds = [name for name in ORT_BUILDS if name in installed]
    facts.ort_both_builds = len(builds) > 1
    facts.ort_build = " and ".join(f"{ORT_BUILDS[name]} build ({name})" for name in builds) or None
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
    """(what, whether it can run here, what it needs otherwise); versions from vosrt's metadata."""
    _ort, _trt = requirements.versions("onnxruntime"), requirements.versions("tensorrt")
    gpu = _gpu_ready(facts)
    ort = _release(facts.onnxruntime) != () and facts.ort_dlpack
    cuda_ep = "CUDAExecutionProvider" in facts.ort_providers
    trt = _tensorrt_runs_engines(facts)
    triton = requirements.satisfied("triton", facts.triton)
    return [
        ("backend='torch' on the CPU", facts.torch is not None and not facts.torch.startswith("broken"), "torch"),
        ("backend='torch' on CUDA: fp32, fp16, amp, cuda_graph", gpu, "an NVIDIA GPU and torch's CUDA build"),
        ("Triton top-K kernels on this GPU (eager torch on CUDA)",
         gpu and triton and str(facts.triton_compiles).startswith("yes") and facts.c_compiler is not None,
         f"a GPU, triton{requirements.versions('triton')} that compiles for it, and a C compiler"),
        ("ONNX export (export-engine --format onnx)", _ok(facts.onnx) and ort, "the export extra"),
        ("backend='onnxruntime' on the CPU", ort, f"onnxruntime{_ort}"),
        ("backend='onnxruntime' on CUDA", ort and cuda_ep and gpu, f"a GPU and onnxruntime-gpu{_ort}"),
        ("custom-op exports on ONNX Runtime (--custom-ops)", ort and _ok(facts.onnxruntime_extensions),
         "onnxruntime-extensions"),
        ("TensorRT engines: export-engine, backend='tensorrt'", trt and gpu, f"a GPU and tensorrt{_trt}"),
        ("TensorRT custom-op plugins (--custom-ops engines)", trt and gpu and facts.tensorrt_plugins and triton,
         f"tensorrt{_trt} (its ahead-of-time plugins) and triton{requirements.versions('triton')}"),
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
    elif not requirements.satisfied("triton", facts.triton):
        found.append((f"Triton {facts.triton} (vosrt's kernels need triton{requirements.versions('triton')})",
                       requirements.pip_install("triton").replace("install", "install -U", 1)))
    if facts.triton and _gpu_ready(facts) and facts.c_compiler is None:
        found.append(("a C compiler (Triton builds its launcher)", "install gcc (e.g. apt-get install gcc)"))
    if facts.ort_both_builds:
        found.append(("onnxruntime and onnxruntime-gpu both installed (one module: they overwrite each other)",
                      ORT_GPU if _gpu_ready(facts) else "pip uninstall -y onnxruntime onnxruntime-gpu && "
                                                         "pip install 'onnxruntime>=1.26'"))
    elif facts.onnxruntime is None:
        found.append(("onnxruntime (backend='onnxruntime', vosrt verify)", ORT_GPU if _gpu_ready(facts) else ORT_CPU))
    elif not facts.ort_dlpack:
        found.append((f"onnxruntime {facts.onnxruntime} (backend='onnxruntime' needs >= 1.26)",
                      "pip install -U 'onnxruntime>=1.26'"))
    if _gpu_ready(facts) and facts.onnxruntime and "CUDAExecutionProvider" not in facts.ort_providers:
        found.append(("ONNX Runtime's CUDA provider (backend='onnxruntime' on CUDA)", ORT_GPU))
    wanted = requirements.requirement("opencv-python").name
    if len(facts.opencv) > 1 and wanted in facts.opencv:
        others = [name for name in facts.opencv if name != wanted]
        found.append((f"{' and '.join(facts.opencv)} installed together (one cv2 module: they overwrite each other)",
                      f"pip uninstall -y {' '.join(others)} && pip install --force-reinstall --no-deps "
                      f"'{wanted}{requirements.versions(wanted)}'"))
    if facts.onnx is None:
        found.append(("onnx (ONNX export)", "pip install 'vosrt[export]'"))
    if facts.onnxruntime_extensions is None:
        found.append(("onnxruntime-extensions (custom-op exports on ONNX Runtime)", "pip install 'vosrt[export]'"))
    if facts.tensorrt is None:
        found.append(("TensorRT (engines)", TENSORRT_JETSON if facts.jetson else "pip install 'vosrt[gpu]' "
                                                                               "(on a machine with an NVIDIA GPU)"))
    elif not _tensorrt_runs_engines(facts):
        found.append((f"TensorRT {facts.tensorrt} (vosrt needs tensorrt{requirements.versions('tensorrt')})",
                      requirements.pip_install("tensorrt")))
    return found


def _tensorrt_runs_engines(facts: Facts) -> bool:
    """TensorRT in vosrt's range, or JetPack 6's (10.3, below vosrt's upper bound) on a Jetson:
    engines without the ahead-of-time plugins."""
    return requirements.satisfied("tensorrt", facts.tensorrt) or (
        facts.jetson and _release(facts.tensorrt) >= JETPACK_TENSORRT
        and requirements.satisfied("tensorrt", facts.tensorrt, lower_bounds=False))


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
            ("ONNX Runtime", f"{facts.onnxruntime or 'not installed'}"
                             + (f", {facts.ort_build}" if facts.ort_build else "") + f"; providers: {providers}"),
            ("onnxruntime-extensions", facts.onnxruntime_extensions or "not installed"),
            ("onnx", facts.onnx or "not installed"),
            ("OpenCV", ", ".join(facts.opencv) or "not installed"),
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

