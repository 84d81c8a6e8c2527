"""Every kernel configuration the code can launch, as inputs of ``triton.compile``.

``tools/compile_kernels.py`` compiles each :class:`Variant` for sm_90 and sm_87 without a GPU
and checks registers, spills and shared memory; :mod:`vosrt.kernels.trt_plugin` compiles its
variants (``plugin=True``) when TensorRT builds an engine. A variant is one kernel with all its
compile-time constants fixed: one per top-K bucket, input dtype and launch configuration.
Integer arguments are 32-bit scalars without specialisation (as TensorRT passes them; a
Python launch may specialise some, e.g. a stride of 1).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator

import torch

from . import joint_attention, readout
from .tuning import max_registers

DTYPE_NAMES = {torch.float32: "fp32", torch.float16: "fp16"}
READOUT_KEY_CHANNELS = 64  # Cutie's key dimension: CK_BLOCK of every readout variant
JOINT_HEAD_DIM = 64  # JointFormer's head size


@dataclass(frozen=True)
class Variant:
    """One compilable kernel configuration. ``pointers``: the element type of each pointer
    argument (Triton signature strings such as ``"*fp16"``); ``constants``: every constexpr
    argument (a None pointer is one); ``plugin``: launched by a TensorRT plugin, which gets
    48 KiB of shared memory and no scratch."""

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

    def source(self):
        """The ``triton.compiler.ASTSource`` to compile."""
        from triton.compiler import ASTSource

        return ASTSource(self.kernel, self.signature(), constexprs=self.constants)


def _float_pointers(names: tuple[str, ...], dtype: torch.dtype) -> dict[str, str]:
    return {name: f"*{DTYPE_NAMES[dtype]}" for name in names}


def readout_variants() -> Iterator[Variant]:
    """The readout's split kernel (every autotuning config), merge kernel (every split count) and
    single kernel (the plugin's config, fp32), for every top-K bucket and input dtype."""
    buckets = sorted({readout.k_pad(k) for k in range(1, readout.MAX_TOP_K + 1)})
    for dtype in DTYPE_NAMES:
        for kept in buckets:
            top_k = kept  # any top_k of the bucket compiles the same kernel
            for config in readout.SPLIT_CONFIGS[dtype]:
                constants = readout.kernel_constants(top_k, READOUT_KEY_CHANNELS, dtype, config)
                yield Variant(f"readout_split {DTYPE_NAMES[dtype]} K{kept} q{config.block_q} n{config.block_n} "
                              f"w{config.num_warps}", readout._readout_split_kernel,
                              {**_float_pointers(("qk_ptr", "qe_ptr", "mk_ptr", "ms_ptr"), dtype),
                               "valid_ptr": "*i1", "keys_ptr": "*i64"},
                              constants, config.num_warps, config.num_stages,
                              default=config == readout.SPLIT_CONFIGS[dtype][0])
            yield Variant(f"readout_merge {DTYPE_NAMES[dtype]} K{kept}", readout._readout_merge_kernel,
                          {"keys_ptr": "*i64", "mv_ptr": f"*{DTYPE_NAMES[dtype]}", "out_ptr": "*fp32",
                           "usage_ptr": "*fp32"},
                          dict(K_PAD=kept, BLOCK_Q=readout.MERGE_BLOCK_Q,
                               BLOCK_V=readout.value_block(readout.MERGE_BLOCK_Q, kept)),
                          readout.MERGE_WARPS, 2, default=True)
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


def joint_attention_variants() -> Iterator[Variant]:
    """The joint-attention kernel at every autotuning config of every top-K bucket, for fp32 and
    fp16 inputs; the plugin runs each bucket's first config on fp32 inputs."""
    buckets = sorted({joint_attention.k_pad(k) for k in range(1, joint_attention.MAX_TOP_K + 1)})
    for dtype in DTYPE_NAMES:
        for kept in buckets:
            configs = joint_attention.bucket_config(kept)
            for config in configs:
                yield _joint_attention_variant(kept, JOINT_HEAD_DIM, dtype, config,
                                               plugin=dtype == torch.float32 and config == configs[0],
                                               default=config == configs[0])


def joint_attention_plugin_variant(top_k: int, head_dim: int) -> Variant:
    """The joint-attention plugin's kernel: fp32 inputs at :func:`joint_attention.plugin_config`."""
    return _joint_attention_variant(top_k, head_dim, torch.float32, joint_attention.plugin_config(top_k),
                                    plugin=True, default=True)


def _joint_attention_variant(top_k: int, head_dim: int, dtype: torch.dtype, config, plugin: bool,
                             default: bool) -> Variant:
    constants = joint_attention.kernel_constants(top_k, head_dim, dtype, config)
    return Variant(f"joint_attention {DTYPE_NAMES[dtype]} K{constants['K_PAD']} D{head_dim} q{config.block_q} "
                   f"m{config.block_n} w{config.num_warps}", joint_attention._topk_joint_attention_kernel,
                   {**_float_pointers(("q_ptr", "k_ptr", "v_ptr", "rk_ptr", "rv_ptr", "out_ptr"), dtype),
                    "valid_ptr": "*i1"}, constants, config.num_warps, config.num_stages, plugin=plugin,
                   default=default)


def all_variants() -> Iterator[Variant]:
    """Every variant of every kernel."""
    yield from readout_variants()
    yield from joint_attention_variants()
