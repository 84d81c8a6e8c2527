"""Several streams in one batch give what independent sessions give (torch and ONNX Runtime, Cutie and
JointFormer), and the batch's API: joining, leaving, objects, errors, outputs."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import vosrt
from fakes.backends import ArithmeticBackend, OneStreamPerCall, ReusedOutputBuffers
from stream_clips import (THREAD_SPREAD, label_flips_outside_near_ties, long_clip, max_dprob_per_stream, run_batched, run_independent,
                          shapes_clip, stream_schedule)
from vosrt.api import build_network
from vosrt.runtime.backends.onnxruntime import OnnxRuntimeBackend
from vosrt.runtime.backends.torch import TorchBackend
from vosrt.runtime.streams import BatchSession
from vosrt.runtime.stage_batcher import StageBatcher
from vosrt.runtime.registry import model_spec
from vosrt.runtime.stages import StageSpec, TensorSpec, example_inputs


def _check_parity(model, weights, backend, export_dir, streams, frames, **options):
    """Streams batched give what independent sessions give up to rounding: the same labels except
    where the top-2 probabilities are within 1e-3, and max |dprob| within :data:`THREAD_SPREAD`."""
    kwargs = dict(weights=weights, backend=backend, export_dir=export_dir, **options)
    schedule = stream_schedule(streams, frames)
    independent = run_independent(lambda: vosrt.load(model, **kwargs), schedule)
    batched = run_batched(vosrt.load_batch(model, **kwargs), schedule)
    worst, flips = max_dprob_per_stream(batched, independent), label_flips_outside_near_ties(batched, independent)
    print(f"{model} {backend} {streams} streams: max |dprob| per stream {worst}, label flips {flips}")
    assert flips == {stream: 0 for stream in schedule}, flips
    assert max(worst.values()) <= THREAD_SPREAD[model], worst


def _check_exact(model, weights, streams, frames, **options):
    """The batch on a backend whose calls of several streams are computed stream by stream
    (:class:`OneStreamPerCall`): each stream's results must be its own session's, to the bit."""
    spec = model_spec(model)
    config = spec.config_type(**options)
    backend = OneStreamPerCall(TorchBackend(spec.family, build_network(model, weights), config.export_settings(), "cpu"))
    schedule = stream_schedule(streams, frames)
    independent = run_independent(lambda: spec.family.new_session(backend, config), schedule)
    worst = max_dprob_per_stream(run_batched(BatchSession(spec.family, backend, config), schedule), independent)
    print(f"{model} stream by stream, {streams} streams: max |dprob| per stream {worst}")
    assert max(worst.values()) == 0, worst


CUTIE = dict(mem_every=2, max_mem_frames=3, top_k=30, max_internal_size=128)
CUTIE_LONG_TERM = dict(mem_every=1, max_internal_size=128, use_long_term=True, long_term_max_mem_frames=3,
                       long_term_min_mem_frames=2, long_term_num_prototypes=8, long_term_max_num_tokens=40,
                       long_term_buffer_tokens=8, chunk_size=1)
JOINTFORMER = dict(mem_every=2, max_mem_frames=2, top_k=30, max_internal_size=128)


@pytest.mark.parametrize("streams", [1, 2, 4])
@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_cutie_streams_match_independent_sessions(streams, backend, seeded_weights, cutie_export):
    export_dir = cutie_export("cutie-small") if backend == "onnxruntime" else None
    _check_parity("cutie-small", seeded_weights("cutie-small"), backend, export_dir, streams, 9, **CUTIE)


@pytest.mark.parametrize("streams", [1, 2, 4])
@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_jointformer_streams_match_independent_sessions(streams, backend, seeded_weights, jointformer_export):
    export_dir = jointformer_export("fp32") if backend == "onnxruntime" else None
    _check_parity("jointformer", seeded_weights("jointformer"), backend, export_dir, streams, 6, **JOINTFORMER)


def _max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max((float((a[key].float() - b[key].float()).abs().max()) for key in a if a[key].numel()), default=0.0)


def _stage_rounding(family, backend, height: int, width: int, objects: int = 2, streams: int = 3
                    ) -> dict[str, tuple[float, float]]:
    """{stage: (max |a stream's outputs from one call with ``streams`` streams - its outputs alone|,
    max |its outputs alone with 1 thread - with 2 threads| + 1e-6 of the outputs' scale)} for random
    inputs (other draws per stream) of every stage of ``family`` on ``backend``."""
    sizes = family.example_sizes(backend.architecture, height, width, objects, 2)
    batcher = StageBatcher(backend)
    figures, saved = {}, torch.get_num_threads()
    for name, stage in family.stages.items():
        members = [(stream, dict(zip(stage.input_names, example_inputs(stage, sizes, seed=stream))))
                   for stream in range(streams)]
        assert len(batcher._calls(stage, members)) == 1, name  # the streams share one call
        together = [{key: value.clone() for key, value in outputs.items()}  # the next run may reuse buffers
                    for outputs in batcher.run(name, members)]
        batch_difference = spread = 0.0
        for (_, inputs), batched in zip(members, together):
            alone = {}
            for threads in (1, 2):
                torch.set_num_threads(threads)
                alone[threads] = {key: value.clone() for key, value in backend.run(name, **inputs).items()}
            torch.set_num_threads(saved)
            scale = max((float(value.float().abs().max()) for value in alone[2].values() if value.numel()), default=0.0)
            batch_difference = max(batch_difference, _max_difference(batched, alone[2]))
            spread = max(spread, _max_difference(alone[1], alone[2]) + 1e-6 * scale)
        figures[name] = batch_difference, spread
    return figures


@pytest.mark.slow  # full-size networks
@pytest.mark.parametrize("size", [(128, 176), (240, 432)], ids=["128x176", "240x432"])
@pytest.mark.parametrize("model", ["cutie-small", "jointformer"])
def test_each_stage_computes_a_stream_in_a_batch_as_alone_up_to_rounding(model, size):
    """Three streams of two objects, every stage, random weights and inputs, eager torch: each stream's
    outputs in one call with the others differ from its outputs alone by no more than its outputs
    alone differ between 1 and 2 threads (plus 1e-6 of their scale: some stages round alike at both)."""
    spec = model_spec(model)
    config = spec.config_type(top_k=30, max_mem_frames=2)
    torch.manual_seed(0)
    backend = TorchBackend(spec.family, spec.family.build_network(spec.variant), config.export_settings(), "cpu")
    figures = _stage_rounding(spec.family, backend, *size)
    print(f"{model} {size}: (batch - alone, 1 - 2 threads) per stage {figures}")
    assert all(difference <= spread for difference, spread in figures.values()), figures


@pytest.mark.parametrize("model", ["cutie-small", "jointformer"])
def test_each_exported_stage_computes_a_stream_in_a_batch_as_alone_up_to_rounding(model, cutie_export,
                                                                                    jointformer_export):
    """The same on ONNX Runtime, for the exports of the parity tests (ONNX Runtime's threads are its
    own: the spread is the 1e-6 of the outputs' scale there)."""
    spec = model_spec(model)
    directory = cutie_export(model) if model != "jointformer" else jointformer_export("fp32")
    figures = _stage_rounding(spec.family, OnnxRuntimeBackend(directory), 128, 176)
    print(f"{model} ONNX Runtime: (batch - alone, 1 - 2 threads) per stage {figures}")
    assert all(difference <= spread for difference, spread in figures.values()), figures


@pytest.mark.parametrize("model, options", [("cutie-small", CUTIE), ("cutie-small", CUTIE_LONG_TERM),
                                            ("jointformer", JOINTFORMER)],
                         ids=["cutie", "cutie-long-term", "jointformer"])
def test_batch_bookkeeping_is_exact(model, options, seeded_weights):
    """Stacking, splitting, memory windows, per-stream memory (long-term usage, consolidations on each
    stream's own frames, chunked readouts): nothing but the backend's rounding differs from independent
    sessions."""
    _check_exact(model, seeded_weights(model), 4, 8 if model == "cutie-small" else 6, **options)


def test_streams_stepped_apart_keep_their_state_on_backends_that_reuse_output_buffers(seeded_weights):
    """Streams stepped in separate calls replay the same engine or graph: no stream may keep a view of
    an output buffer that the next stream's call overwrites."""
    spec = model_spec("cutie-small")
    config = spec.config_type(**CUTIE)
    network = build_network("cutie-small", seeded_weights("cutie-small"))

    def backend():
        return ReusedOutputBuffers(TorchBackend(spec.family, network, config.export_settings(), "cpu"))

    clips = {"a": shapes_clip(5), "b": long_clip(5)}  # one frame size: the same buffers
    independent = {stream: [] for stream in clips}
    for stream, clip in clips.items():
        session = spec.family.new_session(backend(), config)
        independent[stream] = [session.step(*frame) for frame in clip]
    batch, apart = BatchSession(spec.family, backend(), config), {stream: [] for stream in clips}
    for t in range(5):
        for stream, clip in clips.items():
            apart[stream].append(batch.step({stream: clip[t]})[stream])
    assert max(max_dprob_per_stream(apart, independent).values()) == 0


# -- what shares a call ---------------------------------------------------------------------


class _Recording:
    """Wraps a session's backend to record (stage, batch size of the first input) per call."""

    def __init__(self, batch):
        self.calls, run = [], batch.backend.run

        def recorded(stage, **inputs):
            first = next(iter(inputs.values()))
            self.calls.append((stage, first.shape[0]))
            return run(stage, **inputs)

        batch.backend.run = recorded


def test_one_call_per_stage_for_streams_of_one_size(seeded_weights):
    batch = vosrt.load_batch("cutie-small", weights=seeded_weights("cutie-small"), **CUTIE)
    frames = shapes_clip(3)
    cropped = [(image[:224], None if mask is None else mask[:224], objects) for image, mask, objects in frames]
    batch.step({s: frames[0] for s in "abc"})
    calls = _Recording(batch).calls
    batch.step({s: frames[1] for s in "abc"})
    assert calls == [("image_encoder", 3), ("memory_readout", 3), ("mask_decoder", 3)]
    calls.clear()
    batch.step({"a": frames[2], "b": frames[2], "d": cropped[0]})  # d joins with another frame size
    assert calls == [("image_encoder", 2), ("image_encoder", 1), ("memory_readout", 2), ("mask_decoder", 2),
                     ("mask_encoder", 2), ("mask_encoder", 1)]
    calls.clear()
    batch.step({"a": frames[2], "b": frames[2], "d": cropped[1]})
    assert calls == [("image_encoder", 2), ("image_encoder", 1), ("memory_readout", 2), ("memory_readout", 1),
                     ("mask_decoder", 2), ("mask_decoder", 1)]


def test_max_streams_splits_calls(seeded_weights):
    session = vosrt.load("cutie-small", weights=seeded_weights("cutie-small"), **CUTIE)
    batch = BatchSession(model_spec("cutie-small").family, session.backend, session.config, max_streams=2)
    frames = shapes_clip(2)
    batch.step({s: frames[0] for s in "abcde"})
    calls = _Recording(batch).calls
    batch.step({s: frames[1] for s in "abcde"})
    assert [n for stage, n in calls if stage == "image_encoder"] == [2, 2, 1]


# -- the batch's API ------------------------------------------------------------------------


@pytest.fixture()
def batch(seeded_weights):
    return vosrt.load_batch("cutie-small", weights=seeded_weights("cutie-small"), **CUTIE)


def test_a_bad_frame_leaves_every_stream_as_it_was(batch):
    frames = shapes_clip(2)
    batch.step({"a": frames[0]})
    with pytest.raises(ValueError, match="stream 'b': the first frame needs a mask"):
        batch.step({"a": frames[1][0], "b": frames[1][0]})
    assert batch.streams == ["a"] and batch.sessions["a"].frame_index == 0
    with pytest.raises(ValueError, match="last names streams without a frame"):
        batch.step({"a": frames[1][0]}, last=["z"])
    with pytest.raises(ValueError, match="not a tuple of 4"):
        batch.step({"a": (*frames[1], None)})
    with pytest.raises(ValueError, match="no stream 'z'"):
        batch.end("z")


def test_streams_join_leave_and_change_objects(batch):
    frames = shapes_clip(7)
    batch.step({"a": frames[0]})
    batch.step({"a": frames[1][0], "b": frames[0]})
    assert batch.streams == ["a", "b"] and batch.object_ids("b") == [1, 2]
    outs = batch.step({"a": frames[5], "b": frames[2][0]})  # object 3 joins stream a only
    assert outs["a"].shape[0] == 4 and outs["b"].shape[0] == 3
    batch.remove_objects("a", [1])
    outs = batch.step({"a": frames[6][0], "b": frames[3][0]})
    assert batch.object_ids("a") == [2, 3] and outs["a"].shape[0] == 3
    assert set(np.unique(batch.to_mask("a", outs["a"]))) <= {0, 2, 3}
    batch.end("a")
    assert batch.streams == ["b"]


def test_tensor_output_is_the_numpy_output_on_the_device(seeded_weights):
    frames = shapes_clip(3)
    sessions = [vosrt.load("cutie-small", weights=seeded_weights("cutie-small"), **CUTIE) for _ in range(2)]
    for i, (image, mask, objects) in enumerate(frames):
        expected = sessions[0].step(image, mask, objects)
        got = sessions[1].step(image, mask, objects, output="tensor")
        assert isinstance(got, torch.Tensor) and got.device == sessions[1].backend.device
        np.testing.assert_array_equal(got.numpy(), expected)
        np.testing.assert_array_equal(sessions[1].to_mask(got).numpy(), sessions[0].to_mask(expected))
    with pytest.raises(ValueError, match="output must be one of 'numpy', 'tensor'"):
        sessions[0].step(frames[0][0], output="labels")


# -- the stage batcher ----------------------------------------------------------------------


def test_batcher_stacks_on_the_stream_axis_and_splits_back():
    backend = ArithmeticBackend()
    backend.stages = {"double": StageSpec("double", "double", (TensorSpec("x", (2, "BK")),),
                                          (TensorSpec("y", (2, "BK")),))}
    batcher = StageBatcher(backend)
    members = [("a", {"x": torch.ones(2, 1)}), ("b", {"x": torch.full((2, 3), 2.0)}),
               ("a", {"x": torch.full((2, 2), 3.0)}), ("c", {"x": torch.ones(3, 1)})]
    outputs = batcher.run("double", members)
    assert backend.calls == 3  # a and b together; a's second member, and c (another shape), alone
    for (_, inputs), result in zip(members, outputs):
        torch.testing.assert_close(result["y"], 2 * inputs["x"])
