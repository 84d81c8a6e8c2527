"""JointFormer: checkpoint layout, the reference key/value cache, the top-K joint attention,
the session, and parity with the official outputs (../shared/reference)."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch

import vosrt
from helpers import (GOLDEN_MAX_DPROB, JOINTFORMER_GOLDEN_CONFIG, REFERENCE, assert_golden, layer_output_dtypes,
                     require_shared, run_golden_clip, synthetic_frame, synthetic_mask)
from vosrt.api import build_network
from vosrt.cli import main
from vosrt.export.onnx import export_onnx
from vosrt.export.verify import compare_with_eager
from vosrt.kernels import topk_joint_attention_reference
from vosrt.models.jointformer.model import JointFormer
from vosrt.models.jointformer.topk import TopK, TopKConfig
from vosrt.models.jointformer.vit import JointBlock
from vosrt.runtime.artifacts import read_manifest
from vosrt.runtime.backends.torch import TorchBackend
from vosrt.runtime.jointformer.config import JointFormerSessionConfig
from vosrt.runtime.jointformer.family import FAMILY
from vosrt.runtime.jointformer.reference_cache import ReferenceCache
from vosrt.runtime.jointformer.session import JointFormerSession

JOINTFORMER = "jointformer"
GOLDEN_CONFIG = JOINTFORMER_GOLDEN_CONFIG


def torch_session(model, config: JointFormerSessionConfig, amp: bool = False) -> JointFormerSession:
    return JointFormerSession(TorchBackend(FAMILY, model, config.export_settings(), "cpu"), config, amp=amp)


@pytest.fixture(scope="module")
def weights(seeded_weights):
    return seeded_weights(JOINTFORMER)


@pytest.fixture(scope="module")
def model(weights):
    return build_network(JOINTFORMER, weights)


def test_state_dict_matches_official_layout():
    require_shared()
    layout = json.loads((REFERENCE / "jointformer.layout.json").read_text())
    with torch.device("meta"):  # shapes only: no 127 M-value initialisation
        state = JointFormer().state_dict()
    assert sorted(state) == sorted(layout)
    assert all(list(state[k].shape) == layout[k][0] for k in layout)
    assert sum(v.numel() for v in state.values()) == sum(int(np.prod(s)) for s, _ in layout.values())


def test_block_depths_follow_the_checkpoint():
    with torch.device("meta"):
        state = JointFormer(update_block_depth=3, enhance_block_depth=2).state_dict()
        deeper = JointFormer.for_state_dict(state)
    assert (len(deeper.convmae.blocks4), len(deeper.convmae.blocks5)) == (3, 2)


def test_seeded_checkpoint_loads_strictly_and_cutie_does_not(model, weights, seeded_weights):
    reference = torch.load(weights, weights_only=True)
    assert torch.equal(model.state_dict()["convmae.blocks3.10.attn.qkv.weight"],
                       reference["convmae.blocks3.10.attn.qkv.weight"])
    with pytest.raises(ValueError, match="does not fit JointFormer"):
        build_network(JOINTFORMER, seeded_weights("cutie-small"))


def _official_joint_attention(q, k, v, top_k, query_tokens, frame_tokens=None):
    """The official ``Attention.query_topk`` + value product, written out densely: scores over
    [query ; reference] tokens, top-K of the reference part, one softmax, scatter, matmul."""
    scores = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5
    own, ref = scores[..., :query_tokens], scores[..., query_tokens:]
    if frame_tokens is None:
        top, index = ref.topk(top_k, dim=-1)
    else:
        frames = ref.unflatten(-1, (-1, frame_tokens))
        top, index = frames.topk(top_k, dim=-1)
        top, index = top.flatten(-2), (index + torch.arange(0, ref.shape[-1], frame_tokens)[:, None]).flatten(-2)
    weights = torch.cat([own, top], dim=-1).softmax(dim=-1)
    dense = torch.zeros_like(ref).scatter_(-1, index, weights[..., query_tokens:])
    return torch.cat([weights[..., :query_tokens], dense], dim=-1) @ v


@pytest.mark.parametrize("frame_tokens", [None, 12])
def test_topk_joint_attention_matches_the_official_formulation(frame_tokens):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 12, 16, generator=g) for _ in range(3))
    ref_k, ref_v = (torch.randn(2, 3, 36, 16, generator=g) for _ in range(2))
    ours = topk_joint_attention_reference(q, k, v, ref_k, ref_v, None, 5, frame_tokens)
    official = _official_joint_attention(q, torch.cat([k, ref_k], 2), torch.cat([v, ref_v], 2), 5, 12, frame_tokens)
    torch.testing.assert_close(ours, official, rtol=1e-5, atol=1e-5)


def test_invalid_reference_slots_have_no_influence():
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 2, 8, 16, generator=g) for _ in range(3))
    ref_k, ref_v = (torch.randn(1, 2, 24, 16, generator=g) for _ in range(2))
    valid = torch.zeros(1, 24, dtype=torch.bool)
    valid[:, :8] = True
    padded = topk_joint_attention_reference(q, k, v, ref_k * 100, ref_v, valid, 4)  # padding would win the top-K
    unpadded = topk_joint_attention_reference(q, k, v, ref_k[:, :, :8] * 100, ref_v[:, :, :8], None, 4)
    torch.testing.assert_close(padded, unpadded)
    few = topk_joint_attention_reference(q, k, v, ref_k, ref_v, valid, 20)  # more kept than valid tokens
    torch.testing.assert_close(few, topk_joint_attention_reference(q, k, v, ref_k[:, :, :8], ref_v[:, :, :8], None, 20))


def test_cached_reference_keys_values_equal_the_joint_sequence():
    """Reading a block's cache (keys/values of the reference tokens, computed once) gives what
    the official block computes over the concatenated [query ; reference] sequence."""
    torch.manual_seed(2)
    block = JointBlock(dim=32, num_heads=4).eval()
    query, reference = torch.randn(2, 6, 32), torch.randn(2, 18, 32)
    with torch.no_grad():
        ref_k, ref_v = block.token_kv(reference)
        ours = block.forward_joint(query, ref_k, ref_v, None, TopK(4))
        q, k, v = block.attn.heads(block.norm1(torch.cat([query, reference], 1)))
        x = query + block.attn.merge(_official_joint_attention(q[:, :, :6], k, v, 4, 6))
        official = x + block.mlp(block.norm2(x))
    torch.testing.assert_close(ours, official, rtol=1e-5, atol=1e-5)


def test_unfiltered_blocks_skip_empty_reference_slots():
    torch.manual_seed(3)
    block = JointBlock(dim=32, num_heads=4).eval()
    query, reference = torch.randn(1, 5, 32), torch.randn(1, 12, 32)
    valid = torch.tensor([[True] * 8 + [False] * 4])
    with torch.no_grad():
        ref_k, ref_v = block.token_kv(reference)
        padded = block.forward_joint(query, ref_k, ref_v, valid, None)
        unpadded = block.forward_joint(query, ref_k[:, :, :8], ref_v[:, :, :8], None, None)
    torch.testing.assert_close(padded, unpadded)


def test_summary_topk_keeps_the_best_tokens_only():
    """``topk_clstoken='Y'``: the summary token's softmax runs over itself and its top-K tokens."""
    torch.manual_seed(4)
    block = JointBlock(dim=32, num_heads=4).eval()
    summary, tokens = torch.randn(2, 1, 32), torch.randn(2, 9, 32)
    with torch.no_grad():
        ours, _, _, _ = block.forward_summary(summary, tokens, TopK(3), update_tokens=False)
        q, k, v = block.attn.heads(block.norm1(torch.cat([summary, tokens], 1)))
        x = summary + block.attn.merge(_official_joint_attention(q[:, :, :1], k, v, 3, 1))
        official = x + block.mlp(block.norm2(x))
    torch.testing.assert_close(ours, official, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("topk_block, filtered", [
    ("all_blocks", list(range(11))), ("last_block", [10]), ("half", [5, 6, 7, 8, 9, 10]), ("None", [])])
def test_topk_block_options_pick_the_official_blocks(topk_block, filtered):
    config = TopKConfig(top_k=20, topk_block=topk_block, topk_range="every_frame", topk_clstoken=True)
    assert [i for i in range(11) if config.joint(i, frame_tokens=50) is not None] == filtered
    assert all(config.joint(i, 50) == TopK(20, 50) for i in filtered)
    assert [i for i in range(11) if config.summary(i) is not None] == filtered
    assert (config.summary(None) is not None) == bool(filtered)  # the update blocks


def _frame_ids(bucket):
    """Which frame each slot of a bucket holds (-1: empty), read back from its keys (one token per slot)."""
    ids = bucket.keys[0, 0, 0, :, 0].long().tolist()
    return [i if valid else -1 for i, valid in zip(ids, bucket.valid[0].tolist())]


def test_reference_cache_follows_the_official_memory_store():
    """max_memory_frames=2 with include_last: slot 0 = first frame, slot 1 = the last frame, one FIFO slot."""
    cache = ReferenceCache(max_mem_frames=2, include_last=True)
    assert cache.slots == 3

    def add(frame, objects, is_mem_frame):
        kv = torch.full((1, len(objects), 1, 1, 1), float(frame))
        cache.add(kv, kv, objects, is_mem_frame)

    add(0, [1, 2], True)
    add(1, [1, 2], False)
    add(2, [1, 2], False)
    add(3, [1, 2], True)
    assert [b.object_ids for b in cache.buckets] == [[1, 2]]
    assert _frame_ids(cache.buckets[0]) == [0, 2, 3]
    add(6, [1, 2, 3], True)  # a mask with the new object 3: a new bucket
    assert _frame_ids(cache.buckets[0]) == [0, 2, 6]
    assert cache.buckets[1].object_ids == [3] and _frame_ids(cache.buckets[1]) == [6, -1, -1]
    assert cache.buckets[1].tokens_to_read(1) == slice(0, 1)  # only the first frame is read
    add(7, [1, 2, 3], False)
    assert _frame_ids(cache.buckets[1]) == [6, 7, -1]
    assert cache.buckets[1].tokens_to_read(1) == slice(0, 2) and cache.buckets[1].tokens_to_read(3) == slice(0, 3)
    cache.remove_objects([1, 2])
    assert [b.object_ids for b in cache.buckets] == [[3]]


def test_single_memory_frame_replaces_the_last_frame_slot():
    cache = ReferenceCache(max_mem_frames=1, include_last=False)
    for frame in (0, 5, 10):
        kv = torch.full((1, 1, 1, 1, 1), float(frame))
        cache.add(kv, kv, [1], is_mem_frame=True)
    assert _frame_ids(cache.buckets[0]) == [0, 10]


def test_options_are_checked_before_loading():
    with pytest.raises(TypeError, match="stagger_updates"):
        vosrt.load(JOINTFORMER, "unused.pth", stagger_updates=5)
    with pytest.raises(ValueError, match="backend='tensorrt' needs an NVIDIA GPU"):
        vosrt.load(JOINTFORMER, "unused.pth", backend="tensorrt")
    with pytest.raises(ValueError, match="no torch fp16 mode"):
        vosrt.load(JOINTFORMER, "unused.pth", device="cuda", fp16=True)
    for gpu_mode, option in ((dict(amp=True), "amp"), (dict(cuda_graph=True), "cuda_graph")):
        with pytest.raises(ValueError, match=f"{option}=True needs an NVIDIA GPU"):
            vosrt.load(JOINTFORMER, "unused.pth", **gpu_mode)
    with pytest.raises(ValueError, match="topk_range"):
        vosrt.load(JOINTFORMER, "unused.pth", topk_range="some_frames")


def test_session_tracks_adds_and_removes_objects(model):
    session = torch_session(model, JointFormerSessionConfig(mem_every=2, max_mem_frames=2))
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (40, 56, 3), dtype=np.uint8) for _ in range(4)]
    with pytest.raises(ValueError, match="first frame needs a mask"):
        session.step(frames[0])
    labels = np.zeros((40, 56), np.int64)
    labels[5:20, 5:25], labels[22:35, 30:50] = 1, 2
    prob = session.step(frames[0], labels)
    assert prob.shape == (3, 40, 56) and np.array_equal(session.to_mask(prob), labels)
    prob = session.step(frames[1])
    assert prob.shape == (3, 40, 56) and np.allclose(prob.sum(0), 1, atol=1e-5)
    new = np.zeros_like(labels)
    new[30:38, 2:12] = 7
    prob = session.step(frames[2], new, objects=[7])
    assert session.object_ids == [1, 2, 7] and np.all(session.to_mask(prob)[30:38, 2:12] == 7)
    session.remove_objects([1])
    prob = session.step(frames[3], end=True)
    assert session.object_ids == [2, 7] and prob.shape == (3, 40, 56)

    session = torch_session(model, JointFormerSessionConfig(topk_range="every_frame", top_k=4))  # per frame
    session.step(frames[0], labels)
    prob = session.step(frames[1])
    assert prob.shape == (3, 40, 56) and np.allclose(prob.sum(0), 1, atol=1e-5)


def test_official_amp_runs_every_step_under_autocast(model):
    """``amp=True`` (CUDA in vosrt.load; CPU autocast here): every conv and linear layer runs in fp16
    (JointFormer's official code has no fp32 region around one), the reference cache fills with the
    fp16 keys/values computed under autocast, objects join and leave, and the output stays near fp32."""
    config = JointFormerSessionConfig(mem_every=2, max_mem_frames=2)
    rng = np.random.default_rng(1)
    frames = [rng.integers(0, 256, (40, 56, 3), dtype=np.uint8) for _ in range(4)]
    labels = np.zeros((40, 56), np.int64)
    labels[5:20, 5:25], labels[22:35, 30:50] = 1, 2
    added = np.zeros_like(labels)
    added[30:38, 2:12] = 7
    probs = {}
    for amp in (False, True):
        session = torch_session(model, config, amp=amp)
        with layer_output_dtypes(model) as dtypes:
            probs[amp] = [session.step(frames[0], labels), session.step(frames[1]),
                          session.step(frames[2], added, objects=[7]), session.step(frames[3])]
        assert len(dtypes) > 100 and set().union(*dtypes.values()) == {torch.float16 if amp else torch.float32}
    assert session.object_ids == [1, 2, 7] and session._cache.buckets[0].keys.dtype == torch.float16
    for fp32, amp in zip(probs[False], probs[True]):
        assert amp.dtype == np.float32 and np.abs(amp - fp32).max() <= 2e-2  # 2.7e-3 measured


@pytest.fixture(scope="module")
def onnx_export(jointformer_export):
    """The graphs written by ``export-engine jointformer --format onnx`` (default top-K options)."""
    return jointformer_export("fp32")


def test_inspect_shows_the_export_and_its_topk_options(onnx_export, capsys):
    assert main(["inspect", str(onnx_export)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("jointformer  fp32  opset 17  max_mem_frames 2")
    assert "settings top_k 30  topk_range all_frames  topk_block all_blocks  topk_clstoken False" in out
    assert all(f"\n{graph} ({graph}.onnx)" in out
               for graph in ("query_encoder", "reference_encoder", "joint_propagation", "decoder"))


@pytest.mark.parametrize("argv, message", [
    (["export", "cutie-small", "--format", "onnx", "--topk-block", "half"],
     "--topk-block: not an option of cutie-small"),
    (["segment", "jointformer", "--input", "x", "--masks", "y", "--output", "z", "--stagger-updates", "2"],
     "--stagger-updates: not an option of jointformer"),
])
def test_cli_refuses_what_jointformer_does_not_support(argv, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not list(tmp_path.iterdir())  # refused before anything was written


def test_export_refuses_what_it_cannot_export(model, tmp_path):
    with pytest.raises(ValueError, match="topk_range='all_frames' only"):
        export_onnx(model, JOINTFORMER, tmp_path / "x", config=JointFormerSessionConfig(topk_range="every_frame"))
    with pytest.raises(ValueError, match="topk_block='None' filters none"):
        export_onnx(model, JOINTFORMER, tmp_path / "x", custom_ops=True,
                    config=JointFormerSessionConfig(topk_block="None"))
    assert not list(tmp_path.iterdir())


def test_onnx_graphs_match_eager_at_another_size_and_object_count(onnx_export, model):
    manifest = read_manifest(onnx_export)
    assert sorted(manifest["graphs"]) == ["decoder", "joint_propagation", "query_encoder", "reference_encoder"]
    assert manifest["settings"] == {"top_k": 30, "topk_range": "all_frames", "topk_block": "all_blocks",
                                    "topk_clstoken": False}
    checks = compare_with_eager(onnx_export, model, sizes=((96, 128),), objects=(3,))
    assert len(checks) == 9 and all(c.passed for c in checks), [c for c in checks if not c.passed]


def test_onnx_export_with_other_topk_options_is_refused(onnx_export):
    with pytest.raises(ValueError, match="exported with topk_block='all_blocks'"):
        vosrt.load(JOINTFORMER, backend="onnxruntime", export_dir=onnx_export, topk_block="last_block")
    with pytest.raises(ValueError, match="fp16=True but .* holds fp32 graphs"):
        vosrt.load(JOINTFORMER, backend="onnxruntime", export_dir=onnx_export, fp16=True)


def test_fp16_export_keeps_softmax_norms_and_topk_scores_in_fp32(jointformer_export, model):
    """``export-engine jointformer --fp16``: weight layers in fp16; the q.k score products, what
    TopK ranks, Softmax and LayerNorm in fp32; each graph's outputs within their default fp16
    tolerance of the eager fp32 model."""
    directory = jointformer_export("fp16")
    assert read_manifest(directory)["precision"] == "fp16"
    graph = onnx.shape_inference.infer_shapes(onnx.load(str(directory / "joint_propagation.onnx"))).graph
    dtypes = {v.name: v.type.tensor_type.elem_type for v in [*graph.value_info, *graph.input, *graph.output]}
    weights = {t.name for t in graph.initializer}
    FLOAT, FLOAT16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16
    assert {dtypes[n.input[0]] for n in graph.node if n.op_type in ("TopK", "Softmax")} == {FLOAT}
    assert {dtypes[n.output[0]] for n in graph.node if n.op_type == "LayerNormalization"} == {FLOAT}
    matmuls = [n for n in graph.node if n.op_type == "MatMul"]
    assert {dtypes[n.output[0]] for n in matmuls if n.input[1] in weights} == {FLOAT16}  # qkv, proj, fc1, fc2
    scores = [n for n in matmuls if dtypes[n.output[0]] == FLOAT]
    assert len(scores) == 2 * 11 and not any(n.input[1] in weights for n in scores)  # q.k and q.ref_k per block
    checks = compare_with_eager(directory, model, sizes=((96, 128),), objects=(2,))
    worst = max(checks, key=lambda c: c.relative_error / c.tolerance)
    print(f"fp16: worst {worst.graph}/{worst.output}: {worst.relative_error:.2e} (tolerance {worst.tolerance})")
    assert {c.graph for c in checks} == {"query_encoder", "reference_encoder", "joint_propagation", "decoder"}
    assert all(c.passed for c in checks), [c for c in checks if not c.passed]


def test_onnxruntime_backend_runs_fp16_graphs(jointformer_export, onnx_export):
    sessions = {fp16: vosrt.load(JOINTFORMER, backend="onnxruntime", fp16=fp16, export_dir=directory,
                                 **GOLDEN_CONFIG) for fp16, directory in ((True, jointformer_export("fp16")),
                                                                          (False, onnx_export))}
    assert sessions[True].backend.manifest["precision"] == "fp16"
    for i in range(3):
        image, mask = (np.ascontiguousarray(a[::2, ::2]) for a in (synthetic_frame(i), synthetic_mask(0)))
        probs = {fp16: s.step(image, mask if i == 0 else None) for fp16, s in sessions.items()}
        assert np.abs(probs[True] - probs[False]).max() <= 2e-2, f"frame {i}"  # 4.8e-3 measured


@pytest.mark.slow
def test_onnxruntime_backend_reproduces_official_outputs(onnx_export):
    session = vosrt.load(JOINTFORMER, backend="onnxruntime", export_dir=onnx_export, **GOLDEN_CONFIG)
    assert_golden(run_golden_clip(session, JOINTFORMER, num_frames=20), GOLDEN_MAX_DPROB[JOINTFORMER, "onnxruntime"])


@pytest.mark.slow
def test_torch_backend_reproduces_official_outputs(weights):
    session = vosrt.load(JOINTFORMER, weights, backend="torch", device="cpu", **GOLDEN_CONFIG)
    assert_golden(run_golden_clip(session, JOINTFORMER, num_frames=20), GOLDEN_MAX_DPROB[JOINTFORMER, "torch"])
