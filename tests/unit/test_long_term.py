"""Long-term memory (official ``use_long_term``): usage, consolidation, eviction, bounded memory.

The expected results come from a plain-torch re-statement of the official formulas and of
the official store's list-like bookkeeping (``_OfficialBucket``), which grows by
concatenation and slicing instead of preallocated buffers.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import vosrt
from helpers import SHARED, require_shared
from vosrt.kernels import topk_usage_reference
from vosrt.runtime.cutie.config import CutieSessionConfig as InferenceConfig
from vosrt.runtime.cutie.config import LongTermPolicy
from vosrt.runtime.cutie.long_term import consolidate
from vosrt.runtime.cutie.memory import MemoryStore

CK, CV, HW = 3, 2, 2  # tiny key/value channels and tokens per frame


def official_similarity(mk, ms, qk, qe):
    """XMem/Cutie anisotropic L2 similarity [B, N, HW], written out term by term."""
    diff = mk[:, :, :, None] - qk[:, :, None, :]  # [B, Ck, N, HW]
    return -(qe[:, :, None, :] * diff.pow(2)).sum(1) * ms.transpose(1, 2) / math.sqrt(mk.shape[1])


def official_usage(sim, top_k):
    """``do_softmax(sim, top_k, return_usage=True)[1]``: top-k softmax weights summed over queries
    (k capped at the token count, which the official code does not need)."""
    values, indices = torch.topk(sim, k=min(top_k, sim.shape[1]), dim=1)
    weights = values.exp() / values.exp().sum(1, keepdim=True)
    return torch.zeros_like(sim).scatter_(1, indices, weights).sum(2)


def official_consolidation(key, shrinkage, selection, value, usage, num_prototypes):
    chosen = torch.topk(usage[0], k=num_prototypes, sorted=True).indices
    affinity = torch.softmax(official_similarity(key, shrinkage, key[:, :, chosen], selection[:, :, chosen]), dim=1)
    return key[:, :, chosen], shrinkage @ affinity, torch.einsum("bkcn,bnp->bkcp", value, affinity)


def test_usage_is_the_official_top_k_attention_sum():
    g = torch.Generator().manual_seed(0)
    qk, qe = torch.randn(1, CK, 6, generator=g), torch.rand(1, CK, 6, generator=g)
    mk, ms = torch.randn(1, CK, 9, generator=g), 1 + torch.rand(1, 1, 9, generator=g)
    expected = official_usage(official_similarity(mk, ms, qk, qe), top_k=4)
    valid = torch.ones(1, 9, dtype=torch.bool)
    torch.testing.assert_close(topk_usage_reference(qk, qe, mk, ms, valid, 4), expected)
    assert torch.allclose(expected.sum(), torch.tensor(6.0))  # one unit of attention per query

    # Padded slots (here 4 of 13) take no attention: usage as if they were not there.
    padded = [torch.cat([t, torch.randn(*t.shape[:2], 4, generator=g).abs() + 1], 2) for t in (mk, ms)]
    valid = torch.cat([valid, torch.zeros(1, 4, dtype=torch.bool)], 1)
    usage = topk_usage_reference(qk, qe, *padded, valid, 4)
    torch.testing.assert_close(usage[:, :9], expected)
    assert (usage[:, 9:] == 0).all()


def test_consolidation_matches_the_official_formulas():
    g = torch.Generator().manual_seed(1)
    n = 10
    key, selection = torch.randn(1, CK, n, generator=g), torch.rand(1, CK, n, generator=g)
    shrinkage, value = 1 + torch.rand(1, 1, n, generator=g), torch.randn(1, 2, CV, n, generator=g)
    usage = torch.rand(1, n, generator=g)
    got = consolidate(key, shrinkage, selection, value, usage, num_prototypes=4)
    expected = official_consolidation(key, shrinkage, selection, value, usage, 4)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b)
    # The official code needs n >= num_prototypes; here every token becomes a prototype.
    assert consolidate(key, shrinkage, selection, value, usage, num_prototypes=50)[0].shape == (1, CK, n)


class _OfficialBucket:
    """One bucket of the official ``KeyValueMemoryStore`` pair (working + long-term), as lists
    of token columns that grow by concatenation: the bookkeeping of ``MemoryManager.add_memory``
    and ``read`` re-stated for a single bucket and object."""

    def __init__(self, frames: int, policy: LongTermPolicy):
        self.max_work, self.min_work = (frames - 1) * HW, policy.keep_frames * HW
        self.policy = policy
        self.perm = None
        empty = dict(k=torch.zeros(1, CK, 0), s=torch.zeros(1, 1, 0), v=torch.zeros(1, 1, CV, 0),
                     use=torch.zeros(1, 0), life=torch.zeros(1, 0))
        self.work = dict(empty, e=torch.zeros(1, CK, 0))
        self.long = dict(empty)

    def memory(self):
        """(key, shrinkage) in the official read order: long-term, permanent, temporary."""
        parts = [(self.long["k"], self.long["s"]), self.perm[:2], (self.work["k"], self.work["s"])]
        return torch.cat([p[0] for p in parts], 2), torch.cat([p[1] for p in parts], 2)

    def read(self, qk, qe, top_k):
        usage = official_usage(official_similarity(*self.memory(), qk, qe), top_k)
        n_long = self.long["k"].shape[2]
        for store, part in ((self.long, usage[:, :n_long]), (self.work, usage[:, n_long + HW:])):
            if store is self.long and not self.policy.count_usage:
                continue
            store["use"] = store["use"] + part
            store["life"] = store["life"] + 1

    def add(self, k, s, e, v):
        if self.perm is None:
            self.perm = (k, s, v)
            return
        new = dict(k=k, s=s, e=e, v=v, use=torch.zeros(1, HW), life=torch.full((1, HW), 1e-7))
        self.work = {name: torch.cat([self.work[name], new[name]], -1) for name in self.work}
        if self.work["k"].shape[2] < self.max_work:
            return
        n_long = self.long["k"].shape[2]
        if n_long >= self.policy.max_tokens - self.policy.num_prototypes:
            keep = self.policy.max_tokens - self.policy.num_prototypes - self.policy.buffer_tokens
            survivors = torch.topk(self.long["use"][0] / self.long["life"][0], k=keep).indices
            self.long = {name: t[..., survivors] for name, t in self.long.items()}
        end = self.work["k"].shape[2] - self.min_work
        old = {name: t[..., :end] for name, t in self.work.items()}
        pk, ps, pv = official_consolidation(old["k"], old["s"], old["e"], old["v"], old["use"] / old["life"],
                                            self.policy.num_prototypes)
        self.work = {name: t[..., end:] for name, t in self.work.items()}
        new = dict(k=pk, s=ps, v=pv, use=torch.zeros(1, pk.shape[2]), life=torch.full((1, pk.shape[2]), 1e-7))
        self.long = {name: torch.cat([self.long[name], new[name]], -1) for name in self.long}


def _sorted_columns(key: torch.Tensor, *others: torch.Tensor) -> list[torch.Tensor]:
    """Token columns ordered by their first key channel (unique for random keys)."""
    order = torch.argsort(key[0, 0])
    return [t[..., order] for t in (key, *others)]


@pytest.mark.parametrize("slot_major_values", [False, True], ids=["values_channel_major", "values_slot_major"])
@pytest.mark.parametrize("count_usage", [True, False])
def test_store_follows_the_official_bookkeeping(count_usage, slot_major_values):
    """Consolidation every 3 temporary frames, eviction once the long-term memory reaches 7
    tokens: the working and long-term tokens, their usage and values match the official
    store after every frame (in any order: the buffers are slots, not a queue)."""
    policy = LongTermPolicy(keep_frames=1, num_prototypes=3, max_tokens=10, buffer_tokens=2, count_usage=count_usage)
    frames, top_k = 4, 30  # top_k above the token count: every token is used, so no usage ties
    store, official = MemoryStore(frames, policy, slot_major_values), _OfficialBucket(frames, policy)
    g = torch.Generator().manual_seed(2)
    evicted = False
    for step in range(40):
        if step:
            qk, qe = torch.randn(1, CK, 5, generator=g), torch.rand(1, CK, 5, generator=g)
            bucket = store.buckets[0]
            tokens = bucket.active  # what a session reads
            usage = topk_usage_reference(qk, qe, bucket.key[:, :, tokens], bucket.shrinkage[:, :, tokens],
                                         bucket.valid[:, tokens], top_k)
            store.record_usage(bucket, usage, tokens)
            official.read(qk, qe, top_k)
        k, e = torch.randn(1, CK, 1, HW, generator=g), torch.rand(1, CK, 1, HW, generator=g)
        s, v = 1 + torch.rand(1, 1, 1, HW, generator=g), torch.randn(1, 1, CV, 1, HW, generator=g)
        evicted |= official.long["k"].shape[2] >= policy.max_tokens - policy.num_prototypes
        if count_usage or official.long["k"].shape[2] < policy.max_tokens - policy.num_prototypes:
            store.add(k, s, e, v, object_ids=[1])
            official.add(k.flatten(2), s.flatten(2), e.flatten(2), v.flatten(3))
        else:
            break  # the official code cannot evict without usage counts; checked separately below
        bucket = store.buckets[0]
        long = slice(bucket.long_start, policy.max_tokens)  # packed at the end of the long-term region
        assert bucket.valid[:, bucket.active].all() and int(bucket.valid.sum()) == len(range(*bucket.active.indices(
            bucket.valid.shape[1])))  # the tokens in use are one range
        got = _sorted_columns(bucket.key[:, :, long], bucket.shrinkage[:, :, long], bucket.value[..., long],
                              bucket.use_count[:, long], bucket.life_count[:, long])
        want = _sorted_columns(*(official.long[n] for n in ("k", "s", "v", "use", "life")))
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
        temporary = torch.cat([torch.arange(bucket.slot_tokens(t).start, bucket.slot_tokens(t).stop)
                               for t in bucket.temporary]) if bucket.temporary else torch.zeros(0, dtype=torch.long)
        torch.testing.assert_close(bucket.key[:, :, temporary], official.work["k"])
        torch.testing.assert_close(bucket.use_count[:, temporary], official.work["use"], rtol=1e-4, atol=1e-6)
        assert int(bucket.valid.sum()) == bucket.long_size + HW * (1 + len(bucket.temporary))
    assert evicted or not count_usage


def test_without_usage_counts_eviction_keeps_the_newest_prototypes():
    policy = LongTermPolicy(keep_frames=0, num_prototypes=2, max_tokens=6, buffer_tokens=1, count_usage=False)
    store = MemoryStore(2, policy)  # every temporary frame is consolidated at once into 2 prototypes
    for step in range(8):
        key = torch.full((1, CK, 1, HW), float(step))
        store.add(key, torch.ones(1, 1, 1, HW), torch.rand(1, CK, 1, HW), torch.zeros(1, 1, CV, 1, HW), [1])
    bucket = store.buckets[0]
    # Frames 1..7 each become 2 prototypes, copies of their keys. From 4 tokens on, each
    # consolidation first keeps the newest 6 - 2 - 1 = 3: [1 1] [1 1 2 2] [1 2 2 3 3] ... [5 6 6 7 7].
    assert sorted(bucket.key[0, 0, bucket.long_start:6].tolist()) == [5.0, 6.0, 6.0, 7.0, 7.0]
    assert bucket.long_start == 1 and not bucket.valid[:, :1].any()


def test_load_takes_the_official_long_term_defaults():
    config = InferenceConfig(use_long_term=True)
    assert (config.memory_frames, config.long_term_min_mem_frames, config.long_term_num_prototypes,
            config.long_term_max_num_tokens, config.long_term_buffer_tokens, config.long_term_count_usage) == \
        (10, 5, 128, 10000, 2000, True)
    assert InferenceConfig().memory_frames == 5 and InferenceConfig().long_term_policy() is None
    with pytest.raises(ValueError, match="must be smaller than"):
        InferenceConfig(use_long_term=True, long_term_min_mem_frames=10)
    with pytest.raises(ValueError, match="must hold"):
        InferenceConfig(use_long_term=True, long_term_max_num_tokens=100)


LONG_CLIP = SHARED / "data" / "synthetic-long"


def _long_clip_frame(index: int) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(LONG_CLIP / "images" / f"{index:05d}.png").convert("RGB"))


def test_session_memory_stays_bounded(seeded_weights):
    """A long stream at tiny size with small long-term settings: consolidation and eviction
    happen many times, the buffers never change, token counts stay within their bounds."""
    require_shared()
    from PIL import Image

    session = vosrt.load("cutie-small", weights=seeded_weights("cutie-small"), mem_every=1, max_internal_size=32,
                         use_long_term=True, long_term_max_mem_frames=3, long_term_min_mem_frames=2,
                         long_term_num_prototypes=3, long_term_max_num_tokens=16, long_term_buffer_tokens=4)
    mask = np.asarray(Image.open(LONG_CLIP / "masks" / "00000.png")).astype(np.int64)
    session.step(_long_clip_frame(0), mask)
    bucket = session._memory.buckets[0]
    buffers = {name: (t.data_ptr(), t.shape) for name, t in vars(bucket).items() if isinstance(t, torch.Tensor)}
    long_sizes = []
    for i in range(1, 60):
        prob = session.step(_long_clip_frame(i))
        long_sizes.append(bucket.long_size)
        assert len(bucket.temporary) <= 1 and bucket.long_size <= 16
        np.testing.assert_allclose(prob.sum(0), 1, atol=1e-5)
    assert session._memory.buckets == [bucket]
    assert buffers == {name: (t.data_ptr(), t.shape) for name, t in vars(bucket).items() if isinstance(t, torch.Tensor)}
    # hw = 2 x 3 tokens: 3 prototypes per consolidation, eviction down to 9 once 13 are reached.
    assert max(long_sizes) == 15 and 12 in long_sizes
