"""The rounding of a ``tl.dot``'s fp32 operands on each path a kernel's dots may run, emulated in torch.

Paths: ``ieee`` (fp32 products, what Triton's interpreter computes), ``tf32`` (each operand rounded to
TF32, 10 explicit mantissa bits, as ``cvt.rna.tf32.f32`` rounds: to nearest, ties away from zero),
``tf32x3`` (each operand split into a TF32 high part and a TF32 residue; the three products hi*hi,
hi*lo, lo*hi, the lo*lo term dropped). Products are summed in float64 here, so what this measures is
the operand rounding alone: the fp32 accumulation's own error is what the interpreter measures.
"""
from __future__ import annotations

import math

import torch

PATHS = ("ieee", "tf32", "tf32x3")


def round_tf32(x: torch.Tensor) -> torch.Tensor:
    """fp32 -> the nearest TF32 value (kept in fp32), ties away from zero."""
    bits = x.float().contiguous().view(torch.int32)
    rounded = ((bits + 0x1000) & ~0x1FFF).view(torch.float32)
    return torch.where(torch.isfinite(x), rounded, x.float())


def emulated_einsum(equation: str, a: torch.Tensor, b: torch.Tensor, path: str) -> torch.Tensor:
    """``torch.einsum(equation, a, b)`` of fp32 operands as a tensor-core dot on ``path`` forms it, in float64."""
    a, b = a.float(), b.float()
    if path == "ieee":
        return torch.einsum(equation, a.double(), b.double())
    a_hi, b_hi = round_tf32(a), round_tf32(b)
    result = torch.einsum(equation, a_hi.double(), b_hi.double())
    if path == "tf32":
        return result
    if path != "tf32x3":
        raise ValueError(f"unknown dot path {path!r}")
    a_lo, b_lo = round_tf32(a - a_hi), round_tf32(b - b_hi)
    return result + torch.einsum(equation, a_hi.double(), b_lo.double()) + torch.einsum(equation, a_lo.double(),
                                                                                         b_hi.double())


def readout(qk, qe, mk, ms, mv, valid, top_k: int, path: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The readout kernel's maths with its two similarity dots on ``path`` (``[B, Ck, *]`` inputs as in
    :mod:`vosrt.kernels.readout`): ``sim = (2 qk qe)^T mk + (-qe)^T mk^2``, ``score = (sim - sum qe qk^2) *
    ms / sqrt(Ck)``, the top-K, softmax and weighted sum of the values exact. Returns (readout ``[B, V, HW]``,
    usage ``[B, N]``), float64."""
    qk, qe, mk, ms, mv = (t.float() for t in (qk, qe, mk, ms, mv))
    sim = (emulated_einsum("bcq,bcn->bqn", 2 * qk * qe, mk, path)
           + emulated_einsum("bcq,bcn->bqn", -qe, mk * mk, path))  # [B, HW, N]
    scores = (sim - (qe * qk * qk).sum(1).double()[:, :, None]) * ms.double() / math.sqrt(qk.shape[1])
    scores = scores.masked_fill(~valid[:, None, :], -math.inf)
    top, index = scores.topk(min(top_k, scores.shape[2]), dim=2)
    weights = torch.softmax(top, dim=2).nan_to_num(0.0)  # a query without a valid slot reads zero
    picked = torch.gather(mv.double()[:, None].expand(-1, index.shape[1], -1, -1), 3,
                          index[:, :, None, :].expand(-1, -1, mv.shape[1], -1))  # [B, HW, V, K]
    result = (picked * weights[:, :, None, :]).sum(3).transpose(1, 2)
    usage = torch.zeros(mk.shape[0], mk.shape[2], dtype=torch.float64, device=mk.device)
    return result, usage.scatter_add_(1, index.flatten(1), weights.flatten(1))


def joint_attention(q, k, v, ref_k, ref_v, ref_valid, top_k: int, path: str) -> torch.Tensor:
    """The joint-attention kernel's maths with its dots on ``path``: the scores ``q k^T`` and ``q ref_k^T``
    (scaled by 1/sqrt(D)), the top-K reference tokens, one softmax over the current and kept tokens, and
    ``p @ v`` with p and the values as dot operands. ``[B, Hd, N, D]`` inputs; float64 ``[B, Hd, N, D]``."""
    scale = q.shape[-1] ** -0.5
    self_scores = emulated_einsum("bhnd,bhmd->bhnm", q, k, path) * scale
    ref_scores = emulated_einsum("bhnd,bhmd->bhnm", q, ref_k, path) * scale
    if ref_valid is not None:
        ref_scores = ref_scores.masked_fill(~ref_valid[:, None, None, :], -math.inf)
    top, index = ref_scores.topk(min(top_k, ref_scores.shape[-1]), dim=-1)
    weights = torch.cat([self_scores, top], dim=-1).softmax(dim=-1)
    n = self_scores.shape[-1]
    picked = torch.gather(ref_v.float()[:, :, None].expand(-1, -1, index.shape[2], -1, -1), 3,
                          index[..., None].expand(-1, -1, -1, -1, ref_v.shape[-1]))  # [B, Hd, N, K, D]
    own = emulated_einsum("bhnm,bhmd->bhnd", weights[..., :n].float(), v, path)
    kept = emulated_einsum("bhnk,bhnkd->bhnd", weights[..., n:].float(), picked, path)
    return own + kept
