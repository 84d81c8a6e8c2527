"""Every kernel configuration the code can launch, as inputs of ``triton.compile``.

``tools/compile_kernels.py`` compiles each variant for sm_90 and sm_87 without a GPU and checks
registers, spills and shared memory; :mod:`vosrt.kernels.trt_plugin` compiles its variants
(``plugin=True``) when TensorRT builds an engine.

* :class:`LaunchVariant`: a kernel as a Python launch compiles it. The launchers run on meta
  tensors laid out as the sessions lay out their memory (:data:`MODEL_SHAPES`: Cutie and
  JointFormer at 480p and 1080p, every fill of the memory from one frame to its capacity, every
  top-K bucket, input dtype and autotuning config) while a recorder stands in for each kernel;
  Triton's own launch binder then specialises each recorded launch as a launch does (integers
  equal to 1 become constants, integers and pointers divisible by 16 get divisibility hints,
  bool tensors are ``*u1``). Launches that specialise alike are one variant.
* :class:`Variant`: the TensorRT plugins' kernels, integer arguments unspecialised 32-bit
  scalars (as TensorRT passes them).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch

from . import joint_attention, readout
from .tuning import TileConfig, max_registers

DTYPE_NAMES = {torch.float32: "fp32", torch.float16: "fp16"}
READOUT_KEY_CHANNELS = 64  # Cutie's key dimension: CK_BLOCK of every readout variant
JOINT_HEAD_DIM = 64  # JointFormer's head size


@dataclass(frozen=True)
class ModelShape:
    """What a session passes the kernels at one resolution: ``tokens`` per frame (the image /16,
    padded to a multiple of 16), memory of ``frames`` frames, ``objects`` in one bucket."""

    name: str
    tokens: int
    frames: int = 5  # Cutie's max_mem_frames default; JointFormer adds its last-frame slot below
    objects: int = 2


MODEL_SHAPES = (ModelShape("480p", 30 * 54), ModelShape("1080p", 68 * 120))  # 480x864 and 1088x1920 padded
CUTIE_VALUE_DIM = 256
JOINT_HEADS = 12


@dataclass(frozen=True)
class Variant:
    """One compilable kernel configuration with unspecialised integer arguments (a TensorRT
    plugin's). ``pointers``: the element type of each pointer argument (Triton signature
    strings such as ``"*fp16"``); ``constants``: every constexpr argument (a None pointer is
    one); ``plugin``: launched by a TensorRT plugin, which gets 48 KiB of shared memory and no
    scratch."""

    name: str
    kernel: Any
    pointers: dict[str, str]
    constants: dict[str, Any]
    num_warps: int
    num_stages: int
    plugin: bool = False
    default: bool = False

    @property
    def maxnreg(self) -> int:
        """The register cap its launch passes (two blocks per SM)."""
        return max_registers(self.num_warps)

    def options(self) -> dict[str, int]:
        """``triton.compile`` options: what its launch passes."""
        return dict(num_warps=self.num_warps, num_stages=self.num_stages, maxnreg=self.maxnreg)

    def signature(self) -> dict[str, str]:
        """``triton.compile``'s signature: each argument's type, ``"constexpr"`` for the constants."""
        return {name: "constexpr" if name in self.constants else self.pointers.get(name, "i32")
                for name in self.kernel.arg_names}

    def source(self, target=None):
        """The ``triton.compiler.ASTSource`` to compile (the same for every target)."""
        from triton.compiler import ASTSource

        return ASTSource(self.kernel, self.signature(), constexprs=self.constants)


@dataclass(frozen=True)
class LaunchVariant:
    """A recorded Python launch of ``kernel``: its positional ``args`` (meta tensors and
    integers), its constexpr keywords ``constants`` and launch options. ``shapes``: the launch
    shapes (model, resolution, memory fill) that specialise to it. ``default``: the config
    launched without autotuning."""

    name: str
    kernel: Any
    args: tuple
    constants: dict[str, Any]
    num_warps: int
    num_stages: int
    maxnreg: int
    default: bool = False
    shapes: list[str] = field(default_factory=list, compare=False)
    plugin = False

    def options(self) -> dict[str, int]:
        """``triton.compile`` options: what the launch passes."""
        return dict(num_warps=self.num_warps, num_stages=self.num_stages, maxnreg=self.maxnreg)

    def specialization(self, target=None) -> tuple[dict, dict, dict]:
        """``(signature, constexprs, attrs)`` as Triton's launcher derives them from the arguments
        (its binder and ``_pack_args``) for ``target`` (default: sm_90)."""
        from triton.backends.compiler import GPUTarget
        from triton.compiler import make_backend
        from triton.runtime.jit import create_function_from_signature

        backend = make_backend(target or GPUTarget("cuda", 90, 32))
        binder = create_function_from_signature(self.kernel.signature, self.kernel.params, backend)
        keywords = dict(self.constants, **self.options())
        bound, specialization, options = binder(*self.args, **keywords)
        _, signature, constexprs, attrs = self.kernel._pack_args(backend, keywords, bound, specialization, options)
        return signature, constexprs, attrs

    def key(self) -> tuple:
        """What the compile depends on: kernel, specialisation, options (constants and options only
        under Triton's interpreter, which has no launch binder)."""
        name, options = self.kernel.fn.__name__, tuple(self.options().items())
        if not hasattr(self.kernel, "params"):
            return name, tuple(sorted(self.constants.items(), key=str)), options
        signature, constexprs, attrs = self.specialization()
        return (name, tuple(signature.items()), tuple(sorted(constexprs.items(), key=str)),
                tuple(sorted((k, str(v)) for k, v in attrs.items())), options)

    def describe(self) -> str:
        """The launch's specialisation beyond the kernel's constexprs: arguments made constants
        (integers equal to 1, None pointers), integers divisible by 16 and pointers not 16-byte aligned."""
        signature, constexprs, attrs = self.specialization()
        names = list(signature)
        fixed = [f"{names[path[0]]}={value}" for path, value in constexprs.items() if names[path[0]] not in self.constants]
        divisible = [names[path[0]] for path, hints in attrs.items() if hints and signature[names[path[0]]] == "i32"]
        unaligned = [name for i, name in enumerate(names) if signature[name].startswith("*") and not attrs.get((i,))]
        return (f"constant: {', '.join(fixed) or '-'}; %16: {', '.join(divisible) or '-'}; "
                f"unaligned: {', '.join(unaligned) or '-'}")

    def source(self, target=None):
        """The ``triton.compiler.ASTSource`` of the launch's specialisation for ``target``."""
        from triton.compiler import ASTSource

        signature, constexprs, attrs = self.specialization(target)
        return ASTSource(self.kernel, signature, constexprs, attrs)


class _Recorder:
    """Stands in for a ``@triton.jit`` kernel: ``kernel[grid](*args, **keywords)`` records the launch."""

    def __init__(self, kernel, launches: list):
        self.kernel, self.launches = kernel, launches

    def __getitem__(self, grid):
        return lambda *args, **keywords: self.launches.append((self.kernel, args, keywords))


@contextlib.contextmanager
def recorded_launches():
    """Within: the readout and joint-attention kernels record their launches into the list yielded."""
    launches: list = []
    patched = [(readout, "_readout_split_kernel"), (readout, "_readout_merge_kernel"),
               (joint_attention, "_topk_joint_attention_kernel")]
    saved = [getattr(module, name) for module, name in patched]
    try:
        for (module, name), kernel in zip(patched, saved):
            setattr(module, name, _Recorder(kernel, launches))
        yield launches
    finally:
        for (module, name), kernel in zip(patched, saved):
            setattr(module, name, kernel)


def _launch_variants(launches: list, label: str, config_name: str, default: bool,
                     found: dict[tuple, LaunchVariant]) -> None:
    """Add each recorded launch to ``found`` (keyed by its specialisation), noting ``label``."""
    options = ("num_warps", "num_stages", "maxnreg")
    for kernel, args, keywords in launches:
        constants = {k: v for k, v in keywords.items() if k not in options}
        variant = LaunchVariant("", kernel, args, constants, keywords["num_warps"], keywords.get("num_stages", 3),
                                keywords["maxnreg"], default)
        key = variant.key()
        if key not in found:
            name = f"{kernel.fn.__name__.strip('_').replace('_kernel', '')} {config_name}"
            found[key] = LaunchVariant(name, kernel, args, constants, variant.num_warps, variant.num_stages,
                                       variant.maxnreg, default)
        found[key].shapes.append(label)


def _float_pointers(names: tuple[str, ...], dtype: torch.dtype) -> dict[str, str]:
    return {name: f"*{DTYPE_NAMES[dtype]}" for name in names}


def _cutie_memory(shape: ModelShape, dtype: torch.dtype, filled: int) -> list[torch.Tensor]:
    """Meta tensors of a Cutie readout as the eager session passes them: query key and selection
    ``[1, Ck, HW]``, then views of the first ``filled`` frames of its memory buffers (key, shrinkage,
    slot-major values of ``objects`` objects, valid)."""
    ck, hw, capacity = READOUT_KEY_CHANNELS, shape.tokens, shape.tokens * shape.frames
    values = shape.objects * CUTIE_VALUE_DIM
    meta = dict(device="meta", dtype=dtype)
    n = filled * hw
    return [torch.empty(1, ck, hw, **meta), torch.empty(1, ck, hw, **meta),
            torch.empty(1, ck, capacity, **meta)[:, :, :n], torch.empty(1, 1, capacity, **meta)[:, :, :n],
            torch.empty(1, capacity, values, **meta).transpose(1, 2)[:, :, :n],
            torch.empty(1, capacity, dtype=torch.bool, device="meta")[:, :n]]


def readout_variants() -> Iterator[LaunchVariant | Variant]:
    """The readout's split kernel (every autotuning config) and merge kernel as eager sessions launch
    them (:data:`MODEL_SHAPES`, every memory fill, every top-K bucket, fp32 and fp16 inputs, with and
    without usage), then the single kernel as the plugin compiles it (fp32)."""
    buckets = sorted({readout.k_pad(k) for k in range(1, readout.MAX_TOP_K + 1)})
    found: dict[tuple, LaunchVariant] = {}
    for dtype in readout.SPLIT_CONFIGS:
        for kept in buckets:
            configs = readout.split_configs(dtype, kept)
            top_k = kept - 2 if kept > readout.MIN_K_PAD else kept // 2  # e.g. Cutie's 30 in the bucket of 32
            for config in configs:
                name = (f"{DTYPE_NAMES[dtype]} K{kept} q{config.block_q} n{config.block_n} w{config.num_warps}")
                for shape in MODEL_SHAPES:
                    for filled in range(1, shape.frames + 1):
                        with recorded_launches() as launches:
                            readout.topk_readout_triton(*_cutie_memory(shape, dtype, filled), top_k,
                                                        with_usage=filled == shape.frames, config=config)
                        _launch_variants(launches, f"cutie {shape.name} {filled}/{shape.frames}", name,
                                         config == configs[0], found)
    yield from found.values()
    for kept in buckets:
        yield readout_plugin_variant(kept)


def readout_plugin_variant(top_k: int) -> Variant:
    """The readout plugin's kernel: the single kernel at ``FUSED_CONFIG`` on fp32 inputs."""
    kept = readout.k_pad(top_k)
    return Variant(f"readout_fused fp32 K{kept}", readout._readout_kernel,
                   {**_float_pointers(("qk_ptr", "qe_ptr", "mk_ptr", "ms_ptr", "mv_ptr"), torch.float32),
                    "valid_ptr": "*i1", "out_ptr": "*fp32"},
                   readout.fused_constants(top_k, READOUT_KEY_CHANNELS), readout.FUSED_CONFIG.num_warps,
                   readout.FUSED_CONFIG.num_stages, plugin=True, default=True)


def _joint_inputs(shape: ModelShape, dtype: torch.dtype, filled: int) -> list[torch.Tensor]:
    """Meta tensors of one joint block as JointFormer's session passes them: q, k, v
    ``[objects, heads, tokens, D]`` contiguous, then views of the first ``filled`` frames of one
    layer of the reference cache ``[L, objects, heads, slots * tokens, D]`` and its valid mask."""
    meta = dict(device="meta", dtype=dtype)
    slots = shape.frames + 1  # the FIFO and the last-frame slot
    q, k, v = torch.empty(3, shape.objects, JOINT_HEADS, shape.tokens, JOINT_HEAD_DIM, **meta)
    m = filled * shape.tokens
    cache = torch.empty(2, shape.objects, JOINT_HEADS, slots * shape.tokens, JOINT_HEAD_DIM, **meta)
    valid = torch.empty(shape.objects, slots * shape.tokens, dtype=torch.bool, device="meta")
    return [q, k, v, cache[1, :, :, :m], cache[1, :, :, :m], valid[:, :m]]


def joint_attention_variants() -> Iterator[LaunchVariant | Variant]:
    """The joint-attention kernel as JointFormer's eager session launches it (:data:`MODEL_SHAPES`,
    every fill of the reference cache, every autotuning config of every top-K bucket, fp32 and fp16
    inputs), then each bucket's plugin kernel (fp32, first config)."""
    buckets = sorted({joint_attention.k_pad(k) for k in range(1, joint_attention.MAX_TOP_K + 1)})
    found: dict[tuple, LaunchVariant] = {}
    for dtype in DTYPE_NAMES:
        for kept in buckets:
            top_k = kept - 2
            configs = joint_attention.bucket_config(kept)
            for config in configs:
                name = f"{DTYPE_NAMES[dtype]} K{kept} D{JOINT_HEAD_DIM} q{config.block_q} m{config.block_n} " \
                       f"w{config.num_warps}"
                for shape in MODEL_SHAPES:
                    for filled in range(1, shape.frames + 2):
                        with recorded_launches() as launches:
                            joint_attention.topk_joint_attention_triton(*_joint_inputs(shape, dtype, filled), top_k,
                                                                        config=config)
                        _launch_variants(launches, f"jointformer {shape.name} {filled}/{shape.frames + 1}", name,
                                         config == configs[0], found)
    yield from found.values()
    for kept in buckets:
        yield joint_attention_plugin_variant(kept, JOINT_HEAD_DIM)


def joint_attention_plugin_variant(top_k: int, head_dim: int) -> Variant:
    """The joint-attention plugin's kernel: fp32 inputs at :func:`joint_attention.plugin_config`."""
    config = joint_attention.plugin_config(top_k)
    constants = joint_attention.kernel_constants(top_k, head_dim, torch.float32, config)
    return Variant(f"joint_attention fp32 K{constants['K_PAD']} D{head_dim} q{config.block_q} m{config.block_n} "
                   f"w{config.num_warps}", joint_attention._topk_joint_attention_kernel,
                   {**_float_pointers(("q_ptr", "k_ptr", "v_ptr", "rk_ptr", "rv_ptr", "out_ptr"), torch.float32),
                    "valid_ptr": "*i1"}, constants, config.num_warps, config.num_stages, plugin=True, default=True)


def all_variants() -> Iterator[LaunchVariant | Variant]:
    """Every variant of every kernel."""
    yield from readout_variants()
    yield from joint_attention_variants()
