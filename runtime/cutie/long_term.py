"""Cutie's long-term memory: the rules that turn old working memory into prototypes.

As in the official ``MemoryManager`` (``use_long_term``): every memory token of a bucket
counts its *usage*, the top-k attention weight it received summed over the query pixels of
each readout, normalised by the number of readouts it took part in. When a bucket's working
memory holds ``max_mem_frames - 1`` frames besides its permanent first frame, its oldest
frames, all but the newest ``min_mem_frames - 1``, are *consolidated*: the
``num_prototypes`` most used of their tokens become prototypes, whose values and shrinkage
are read out of all the consolidated tokens by a full softmax over the similarity. The
prototypes join the bucket's long-term memory; when it holds ``max_num_tokens -
num_prototypes`` tokens or more, only the ``max_num_tokens - num_prototypes - buffer_tokens``
most used survive, so it never exceeds ``max_num_tokens`` tokens.
"""
from __future__ import annotations

import torch

from vosrt.kernels import anisotropic_similarity


# Readout count a new token starts with (the official ``life_cnt``), so an unread token has usage 0.
INITIAL_LIFE = 1e-7


def normalized_usage(use_count: torch.Tensor, life_count: torch.Tensor) -> torch.Tensor:
    """Usage per token: accumulated attention / number of readouts (the official ``get_usage``)."""
    return use_count / life_count


def consolidate(key: torch.Tensor, shrinkage: torch.Tensor, selection: torch.Tensor, value: torch.Tensor,
                usage: torch.Tensor, num_prototypes: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Prototypes of ``n`` working-memory tokens (the official ``consolidation``).

    key ``[1, Ck, n]``, shrinkage ``[1, 1, n]``, selection ``[1, Ck, n]``, value ``[1, K, Cv, n]``,
    usage ``[1, n]`` (normalised) -> prototype key ``[1, Ck, p]``, shrinkage ``[1, 1, p]``,
    value ``[1, K, Cv, p]`` in fp32, p = ``min(num_prototypes, n)`` (the official code needs
    ``n >= num_prototypes``), most used first.
    """
    count = min(num_prototypes, key.shape[-1])
    chosen = torch.topk(usage[0].float(), k=count, sorted=True).indices
    prototype_key = key[:, :, chosen].float()
    # Prototypes query the candidates: affinity [1, n, p], a softmax over all candidates.
    similarity = anisotropic_similarity(prototype_key, selection[:, :, chosen], key, shrinkage)
    affinity = torch.softmax(similarity, dim=1)
    _, objects, channels, n = value.shape
    prototype_value = torch.bmm(value.reshape(1, objects * channels, n).float(), affinity)
    prototype_shrinkage = torch.bmm(shrinkage.float(), affinity)
    return prototype_key, prototype_shrinkage, prototype_value.view(1, objects, channels, count)
