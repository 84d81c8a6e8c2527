"""Session API behaviour: inputs, objects, resizing, and the working-memory store."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import vosrt
from helpers import layer_output_dtypes, synthetic_frame, synthetic_mask
from vosrt.runtime.cutie.memory import MemoryStore


@pytest.fixture(scope="module")
def session(seeded_weights):
    return vosrt.load("cutie-small", weights=seeded_weights("cutie-small"), mem_every=2, max_mem_frames=3)


@pytest.fixture()
def fresh(session):
    session.reset()
    return session


def test_first_frame_without_mask(fresh):
    with pytest.raises(ValueError, match="first frame needs a mask"):
        fresh.step(synthetic_frame(0))


def test_mask_size_must_pad_like_the_image(fresh):
    """240x320 pads to itself; a mask 16 px narrower pads elsewhere: the official code cannot align it."""
    with pytest.raises(ValueError, match=r"mask is 240x304 but the frame is 240x320 \(a mask a few pixels off"):
        fresh.step(synthetic_frame(0), synthetic_mask(0)[:, :-16])


def test_mask_labels_must_be_listed(fresh):
    with pytest.raises(ValueError, match=r"labels \[2\] that are not listed in objects=\[1\]"):
        fresh.step(synthetic_frame(0), synthetic_mask(0), objects=[1])


@pytest.mark.parametrize("image, message", [
    (np.zeros((240, 320), np.uint8), "HxWx3 RGB"),
    (np.zeros((240, 320, 4), np.uint8), "HxWx3 RGB"),
])
def test_bad_images(fresh, image, message):
    with pytest.raises(ValueError, match=message):
        fresh.step(image, synthetic_mask(0))


def test_float_mask_and_empty_mask(fresh):
    with pytest.raises(ValueError, match="integer label map"):
        fresh.step(synthetic_frame(0), synthetic_mask(0).astype(np.float32))
    with pytest.raises(ValueError, match="no object"):
        fresh.step(synthetic_frame(0), np.zeros((240, 320), np.int64))


def test_frame_size_change_needs_reset(fresh):
    fresh.step(synthetic_frame(0), synthetic_mask(0))
    with pytest.raises(ValueError, match="frame size changed"):
        fresh.step(synthetic_frame(1)[:224])


def test_probabilities_and_labels(fresh):
    prob = fresh.step(synthetic_frame(0), synthetic_mask(0))
    assert prob.shape == (3, 240, 320) and prob.dtype == np.float32
    np.testing.assert_allclose(prob.sum(0), 1, atol=1e-5)
    np.testing.assert_array_equal(fresh.to_mask(prob), synthetic_mask(0))  # the given mask comes back
    prob = fresh.step(synthetic_frame(1))
    assert prob.shape == (3, 240, 320)
    np.testing.assert_allclose(prob.sum(0), 1, atol=1e-5)


def test_objects_come_out_in_id_order(fresh):
    first = synthetic_mask(0)
    relabelled = np.where(first == 1, 7, np.where(first == 2, 4, 0))
    fresh.step(synthetic_frame(0), np.where(relabelled == 7, 7, 0), objects=[7])
    prob = fresh.step(synthetic_frame(1), np.where(relabelled == 4, 4, 0), objects=[4])
    assert fresh.object_ids == [4, 7] and prob.shape[0] == 3
    labels = fresh.to_mask(prob)
    assert set(np.unique(labels)) <= {0, 4, 7}
    assert (labels[relabelled == 4] == 4).all()  # the mask given for 4 on this frame is kept


def test_add_and_remove_objects(fresh):
    fresh.step(synthetic_frame(0), synthetic_mask(0), objects=[1, 2])
    fresh.step(synthetic_frame(1))
    prob = fresh.step(synthetic_frame(15), synthetic_mask(15), objects=[3])
    assert fresh.object_ids == [1, 2, 3] and prob.shape[0] == 4
    assert len(fresh._memory.buckets) == 2  # object 3 entered memory on its own
    fresh.remove_objects([2])
    assert fresh.object_ids == [1, 3]
    prob = fresh.step(synthetic_frame(16))
    assert prob.shape[0] == 3 and not (fresh.to_mask(prob) == 2).any()
    with pytest.raises(ValueError, match="cannot remove objects \\[9\\]"):
        fresh.remove_objects([9])


def test_max_internal_size_resizes_and_restores(seeded_weights):
    session = vosrt.load("cutie-small", weights=seeded_weights("cutie-small"), max_internal_size=120)
    prob = session.step(synthetic_frame(0), synthetic_mask(0))
    assert session._geometry.internal == (120, 160)
    assert prob.shape == (3, 240, 320)
    prob = session.step(synthetic_frame(1))
    assert prob.shape == (3, 240, 320)
    np.testing.assert_allclose(prob.sum(0), 1, atol=1e-5)


def test_chunked_readout_runs_object_by_object(seeded_weights):
    session = vosrt.load("cutie-small", weights=seeded_weights("cutie-small"), chunk_size=1)
    calls, run = [], session.backend.run

    def recorded(stage, **inputs):
        if stage == "memory_readout":
            calls.append((stage, inputs["memory_value"].shape[1]))
        return run(stage, **inputs)

    session.backend.run = recorded
    session.step(synthetic_frame(0), synthetic_mask(0))
    prob = session.step(synthetic_frame(1))
    assert calls == [("memory_readout", 1), ("memory_readout", 1)] and prob.shape == (3, 240, 320)


def test_unknown_options_and_backends():
    with pytest.raises(TypeError, match="unknown option"):
        vosrt.load("cutie-small", weights="x.pth", mem_evry=3)
    with pytest.raises(ValueError, match="unknown backend"):
        vosrt.load("cutie-small", weights="x.pth", backend="tensorflow")
    with pytest.raises(ValueError, match="unknown model"):
        vosrt.load("cutie-large", weights="x.pth")
    with pytest.raises(ValueError, match="top_k must be >= 1"):
        vosrt.load("cutie-small", weights="x.pth", top_k=0)


def test_missing_gpu_is_a_clear_error(seeded_weights):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(RuntimeError, match="no CUDA GPU is available"):
        vosrt.load("cutie-small", weights=seeded_weights("cutie-small"), device="cuda")


def _frame(value: float, ck: int = 2, h: int = 1, w: int = 2) -> tuple[torch.Tensor, ...]:
    """key, shrinkage, selection, values of a 2-object frame whose entries are all ``value``."""
    key = torch.full((1, ck, h, w), value)
    return key, torch.ones(1, 1, h, w), torch.ones(1, ck, h, w), torch.full((1, 2, 3, h, w), value)


def test_working_memory_keeps_first_frame_and_fifo():
    memory = MemoryStore(frames=3)
    for value in (1.0, 2.0, 3.0, 4.0):
        memory.add(*_frame(value), object_ids=[1, 2])
    (bucket,) = memory.buckets
    kept = bucket.key[0, 0, ::2].tolist()  # first token of each 2-token frame slot
    assert kept == [1.0, 4.0, 3.0]  # first frame permanent, 2 pushed out by 4
    assert bucket.valid.all()


def test_working_memory_masks_unwritten_slots_and_new_buckets():
    memory = MemoryStore(frames=4)
    memory.add(*_frame(1.0), object_ids=[1, 2])
    key, shrinkage, selection, value = _frame(2.0)
    memory.add(key, shrinkage, selection, torch.cat([value, value[:, :1]], 1), object_ids=[1, 2, 3])
    first, second = memory.buckets
    assert first.object_ids == [1, 2] and second.object_ids == [3]
    assert first.valid.tolist() == [[True, True, True, True, False, False, False, False]]
    assert second.valid.tolist() == [[True, True, False, False, False, False, False, False]]
    assert first.active == slice(0, 4) and second.active == slice(0, 2)  # what a readout reads
    assert second.tokens_to_read(3) == slice(0, 3) and second.tokens_to_read(30) == slice(0, 8)
    assert second.key[0, 0, 0] == 2.0  # frame 2 is object 3's permanent memory
    memory.remove_objects([1])
    assert memory.buckets[0].object_ids == [2] and memory.buckets[0].value.shape[1] == 1
    memory.remove_objects([2])
    assert [b.object_ids for b in memory.buckets] == [[3]]


def test_eager_readout_reads_the_stored_values_in_place(seeded_weights, monkeypatch):
    """The torch backend's sessions store memory values slot-major, and each readout gets a view of
    that buffer whose value rows are contiguous: the Triton kernels gather them in place and the
    CPU path's embedding_bag table is the buffer itself (no copy of the memory per readout)."""
    from vosrt.kernels import readout

    session = vosrt.load("cutie-small", weights=seeded_weights("cutie-small"), mem_every=1, max_mem_frames=3)
    read, tables = [], []
    dispatch, kept_rows = readout._dispatch, readout._kept_slot_rows
    monkeypatch.setattr(readout, "_dispatch", lambda inputs, *a, **k: read.append(inputs[4]) or dispatch(inputs, *a, **k))
    monkeypatch.setattr(readout, "_kept_slot_rows",
                        lambda index, values: tables.append(kept_rows(index, values)[0]) or kept_rows(index, values))
    session.step(synthetic_frame(0), synthetic_mask(0), objects=[1, 2])
    for i in range(1, 3):
        session.step(synthetic_frame(i))
    (bucket,) = session._memory.buckets
    buffer = bucket.value.untyped_storage().data_ptr()
    assert len(read) == 2 and len(tables) == 2
    for values, table in zip(read, tables):
        assert values.untyped_storage().data_ptr() == buffer and values.stride(1) == 1
        assert table.untyped_storage().data_ptr() == buffer


def test_fp16_stages_feed_the_fp32_session_state(seeded_weights):
    """The fp16 torch mode (autocast per stage; CUDA in vosrt.load, CPU autocast here) returns
    fp16 readouts that the session writes into its fp32 buffers."""
    from vosrt.api import build_network
    from vosrt.runtime.backends.torch import TorchBackend
    from vosrt.runtime.cutie.config import CutieSessionConfig
    from vosrt.runtime.cutie.family import FAMILY
    from vosrt.runtime.cutie.session import CutieSession

    network = build_network("cutie-small", seeded_weights("cutie-small"))
    backend = TorchBackend(FAMILY, network, {"top_k": 30}, "cpu", fp16=True)
    session = CutieSession(backend, CutieSessionConfig(mem_every=1, max_internal_size=64))
    frames = [synthetic_frame(i) for i in range(3)]
    prob = session.step(frames[0], synthetic_mask(0), objects=[1, 2])
    for frame in frames[1:]:
        prob = session.step(frame)
    assert prob.dtype == np.float32 and prob.shape == (3, *frames[0].shape[:2])
    assert np.isfinite(prob).all() and np.allclose(prob.sum(0), 1, atol=1e-3)


# Cutie's conv/linear layers that the official code runs in fp32 under AMP (autocast off): the
# final logits, the sensory updates (GRU) and the object summaries.
CUTIE_FP32_LAYERS = ("mask_decoder.pred", "mask_encoder.sensory_update.transform",
                     "mask_decoder.sensory_update.transform", "object_summarizer.weights_pred.",
                     "object_summarizer.feature_pred.")


@pytest.mark.parametrize("mode", ["amp", "fp16"])
def test_fp16_modes_run_the_conv_and_linear_layers_in_fp16(seeded_weights, mode):
    """``amp=True`` (the official AMP: every step under autocast) and ``fp16=True`` (autocast in
    every stage) on CPU autocast (CUDA in vosrt.load): each conv/linear layer's output is fp16,
    but for the layers of the official fp32 regions."""
    from vosrt.api import build_network
    from vosrt.runtime.backends.torch import TorchBackend
    from vosrt.runtime.cutie.config import CutieSessionConfig
    from vosrt.runtime.cutie.family import FAMILY
    from vosrt.runtime.cutie.session import CutieSession

    network = build_network("cutie-small", seeded_weights("cutie-small"))
    backend = TorchBackend(FAMILY, network, {"top_k": 30}, "cpu", fp16=mode == "fp16")
    session = CutieSession(backend, CutieSessionConfig(mem_every=1, max_internal_size=64), amp=mode == "amp")
    with layer_output_dtypes(network) as dtypes:
        for i in range(3):
            session.step(synthetic_frame(i), synthetic_mask(0) if i == 0 else None, objects=[1, 2] if i == 0 else None)
    fp32 = {name for name in dtypes if name.startswith(CUTIE_FP32_LAYERS)}
    print(f"{mode}: {len(dtypes)} layers ran, {len(fp32)} in fp32 regions")
    assert len(fp32) == 7 and len(dtypes) > 100
    assert {name: kinds for name, kinds in dtypes.items() if name not in fp32} == {
        name: {torch.float16} for name in dtypes if name not in fp32}
    assert all(dtypes[name] == {torch.float32} for name in fp32)
