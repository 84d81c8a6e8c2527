"""A real ``tritonserver`` on 127.0.0.1 serving repositories written by ``vosrt export-triton`` (CPU
instances, seeded weights, small frames): streams from client threads get what in-process sessions
get, bad requests fail alone, a killed server fails its calls in time, two servers share streams."""
from __future__ import annotations

import os
import re
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import vosrt
from serving_setup import CUTIE, JOINTFORMER
from stream_clips import (THREAD_SPREAD, label_flips_outside_near_ties, long_clip, max_dprob_per_stream,
                          run_independent, shapes_clip, stream_schedule)
from vosrt.serving.client import StepFailed, place

STREAMS_MAX_DPROB = 1e-5  # a stream that has the server's executes to itself: what its in-process session gives


def open_streams(server) -> int:
    """The model's open streams, summed over its instances (the ``vosrt_open_streams`` gauge)."""
    return sum(int(float(value)) for value in re.findall(r"^vosrt_open_streams\{[^}]*\} (\S+)$", server.metrics(),
                                                         re.MULTILINE))


def wait_for_open_streams(server, count: int, seconds: float) -> int:
    deadline = time.monotonic() + seconds
    while (found := open_streams(server)) != count and time.monotonic() < deadline:
        time.sleep(0.5)
    return found


def batch_sizes(url: str, model: str) -> dict[int, int]:
    """{requests per execute: executes} from the server's statistics."""
    import tritonclient.grpc as grpcclient

    with grpcclient.InferenceServerClient(url) as client:
        stats = client.get_inference_statistics(model, as_json=True)["model_stats"][0]
    return {int(b["batch_size"]): int(b["compute_infer"].get("count", 0)) for b in stats.get("batch_stats", [])}


def run_threads(url: str, model: str, schedule) -> dict[str, list[np.ndarray]]:
    """Each stream of ``schedule`` stepped from its own thread and its own ``vosrt.connect``; the
    threads go step by step together (a barrier), so the server sees the streams' frames at once;
    a stream joins on its step and its last frame ends it."""
    steps = max(start + len(clip) for start, clip in schedule.values())
    barrier = threading.Barrier(len(schedule), timeout=300)
    outputs: dict[str, list[np.ndarray]] = {stream: [] for stream in schedule}

    def run(stream: str) -> None:
        start, clip = schedule[stream]
        with vosrt.connect(url, model, timeout=120) as client:
            for t in range(steps):
                barrier.wait()
                if 0 <= t - start < len(clip):
                    image, mask, objects = clip[t - start]
                    last = t - start == len(clip) - 1
                    frame = image if mask is None else (image, mask, objects)
                    outputs[stream].append(client.step({stream: frame}, last=[stream] if last else [])[stream])
                    if last:
                        client.end(stream)

    with ThreadPoolExecutor(len(schedule)) as pool:
        for future in [pool.submit(run, stream) for stream in schedule]:
            future.result()
    return outputs


def check_threads_match_in_process(server, model: str, weights, options: dict, frames: int) -> None:
    schedule = stream_schedule(4, frames)
    served = run_threads(server.url, model, schedule)
    independent = run_independent(lambda: vosrt.load(model, weights=weights, **options), schedule)
    worst, flips = max_dprob_per_stream(served, independent), label_flips_outside_near_ties(served, independent)
    sizes = batch_sizes(server.url, model)
    print(f"{model} 4 streams from 4 threads: max |dprob| per stream {worst}, label flips {flips}; "
          f"executes by requests {sizes}")
    # as load_batch in-process (tests/unit/test_batch.py): a stream batched with others rounds differently
    assert flips == {stream: 0 for stream in schedule}, flips
    assert max(worst.values()) <= THREAD_SPREAD[model], worst
    assert any(size > 1 and count > 0 for size, count in sizes.items()), sizes  # streams shared executes
    assert wait_for_open_streams(server, 0, 10) == 0  # every stream's END freed it


def test_cutie_streams_from_threads_match_in_process(cutie_server, seeded_weights):
    check_threads_match_in_process(cutie_server, "cutie-small", seeded_weights("cutie-small"), CUTIE, 7)


def test_jointformer_streams_from_threads_match_in_process(triton_repository, start_server, seeded_weights):
    server = start_server(triton_repository("jointformer", JOINTFORMER, idle_seconds=120))
    check_threads_match_in_process(server, "jointformer", seeded_weights("jointformer"), JOINTFORMER, 5)


# -- bad requests ---------------------------------------------------------------------------

def _raw(url: str, inputs: dict, sequence: int, start: bool = False, end: bool = False, outputs=("PROBABILITIES",)):
    """One request with tritonclient as any client would send it -> None, or the error's message."""
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException, np_to_triton_dtype

    tensors = []
    for name, value in inputs.items():
        tensor = grpcclient.InferInput(name, list(value.shape), np_to_triton_dtype(value.dtype))
        tensor.set_data_from_numpy(value)
        tensors.append(tensor)
    with grpcclient.InferenceServerClient(url) as client:
        try:
            client.infer("cutie-small", tensors, outputs=[grpcclient.InferRequestedOutput(name) for name in outputs],
                         sequence_id=sequence, sequence_start=start, sequence_end=end, client_timeout=120)
        except InferenceServerException as err:
            return err.message()
    return None


def _bad_requests(frame: np.ndarray, mask: np.ndarray):
    """(case, request keywords for :func:`_raw`, what the error says). Sequence 0 is replaced by a
    fresh id; ``open`` is a sequence started before (frame ``frame`` with ``mask``)."""
    image, labels = frame[None], mask.astype(np.int32)[None]
    return [
        ("float image", dict(inputs={"IMAGE": image.astype(np.float32), "MASK": labels}, start=True), "IMAGE"),
        ("4 channels", dict(inputs={"IMAGE": np.zeros((1, 8, 8, 4), np.uint8), "MASK": labels[:, :8, :8]},
                            start=True), "IMAGE"),
        ("image without channels", dict(inputs={"IMAGE": image[..., 0], "MASK": labels}, start=True), "IMAGE"),
        ("two frames in one request", dict(inputs={"IMAGE": np.concatenate([image, image]),
                                                   "MASK": np.concatenate([labels, labels])}, start=True), "batch"),
        ("first frame without a mask", dict(inputs={"IMAGE": image}, start=True), "needs MASK"),
        ("float mask", dict(inputs={"IMAGE": image, "MASK": labels.astype(np.float32)}, start=True), "MASK"),
        ("mask of another size", dict(inputs={"IMAGE": image, "MASK": labels[:, ::2, ::2].copy()}, start=True),
         "but the frame is"),
        ("mask of background only", dict(inputs={"IMAGE": image, "MASK": np.zeros_like(labels)}, start=True),
         "no object"),
        ("labels not in objects", dict(inputs={"IMAGE": image, "MASK": labels, "OBJECTS": np.array([[1]], np.int32)},
                                       start=True), "not listed in objects"),
        ("object id 0", dict(inputs={"IMAGE": image, "MASK": labels, "OBJECTS": np.array([[0, 1, 2]], np.int32)},
                             start=True), "ids in 1.."),
        ("no IMAGE", dict(inputs={"MASK": labels}, start=True), "IMAGE is missing"),
        ("frame of a sequence never started", dict(inputs={"IMAGE": image}), "START"),
        ("unknown output", dict(inputs={"IMAGE": image, "MASK": labels}, start=True, outputs=("MASKS",)), "MASKS"),
        ("objects without a mask", dict(inputs={"IMAGE": image, "OBJECTS": np.array([[1]], np.int32)}, open=True),
         "no MASK was sent"),
        ("frame size changed", dict(inputs={"IMAGE": image[:, :64, :64].copy()}, open=True), "frame size changed"),
    ]


def test_bad_requests_fail_alone(cutie_server, seeded_weights):
    """Each bad request fails with its clear error, sent while a good stream steps (they may share
    an execute); the good stream's outputs stay those of its in-process session."""
    clip = shapes_clip(len(_bad_requests(*shapes_clip(1)[0][:2])) + 1)
    frame, mask = clip[0][0], clip[0][1]
    cases = _bad_requests(frame, mask)
    served = []
    with vosrt.connect(cutie_server.url, "cutie-small", timeout=120) as good, ThreadPoolExecutor(2) as pool:
        served.append(good.step({"good": clip[0]})["good"])
        for index, (case, request, expected) in enumerate(cases, start=1):
            sequence = 1000 + index
            opened = request.pop("open", False)
            if opened:
                assert _raw(cutie_server.url, {"IMAGE": frame[None], "MASK": mask.astype(np.int32)[None]},
                            sequence, start=True) is None
            image, labels, objects = clip[index]
            step = pool.submit(good.step, {"good": image if labels is None else (image, labels, objects)})
            error = _raw(cutie_server.url, sequence=sequence, **request)
            served.append(step.result()["good"])
            print(f"{case}: {error}")
            assert error is not None and expected in error, (case, error)
            if opened:  # the bad frame left its stream open: an END without a frame closes it
                assert _raw(cutie_server.url, {}, sequence, end=True, outputs=()) is None
        good.end("good")
    assert wait_for_open_streams(cutie_server, 0, 10) == 0
    session = vosrt.load("cutie-small", weights=seeded_weights("cutie-small"), **CUTIE)
    independent = [session.step(*frame_) for frame_ in clip]
    assert max(float(np.abs(a - b).max()) for a, b in zip(served, independent)) <= STREAMS_MAX_DPROB
    assert len(cases) >= 12


def test_outputs_are_sent_only_when_asked(cutie_server):
    import tritonclient.grpc as grpcclient

    frame, mask, _ = shapes_clip(1)[0]
    inputs = []
    for name, value in (("IMAGE", frame[None]), ("MASK", mask.astype(np.int32)[None])):
        inputs.append(grpcclient.InferInput(name, list(value.shape), "UINT8" if name == "IMAGE" else "INT32"))
        inputs[-1].set_data_from_numpy(value)
    with grpcclient.InferenceServerClient(cutie_server.url) as client:
        result = client.infer("cutie-small", inputs, outputs=[grpcclient.InferRequestedOutput("LABELS")],
                              sequence_id=77, sequence_start=True, sequence_end=True)
    labels = result.as_numpy("LABELS")[0]
    assert result.as_numpy("PROBABILITIES") is None
    assert labels.dtype == np.int32 and labels.shape == mask.shape
    assert set(np.unique(labels)) <= {0, 1, 2}
    assert (labels == mask).mean() > 0.99  # the first frame's output is its mask


def test_segment_command_on_the_server(cutie_server, tmp_path, capsys):
    from helpers import SYNTHETIC
    from vosrt.cli import main

    output = tmp_path / "labels"
    argv = ["segment", "cutie-small", "--server", cutie_server.url, "--input", str(SYNTHETIC / "images"),
            "--masks", str(SYNTHETIC / "masks" / "00000.png"), "--output", str(output), "--max-frames", "3"]
    assert main(argv) == 0, capsys.readouterr().err
    assert sorted(p.name for p in output.iterdir()) == ["00000.png", "00001.png", "00002.png"]
    assert main([*argv[:-3], str(tmp_path / "other"), "--max-internal-size", "64"]) == 2
    assert "the served repository fixes these" in capsys.readouterr().err


def test_bench_server_reports_server_and_in_process_throughput(cutie_server, seeded_weights, tmp_path, capsys):
    import json

    from vosrt.cli import main

    report = tmp_path / "bench.json"
    argv = ["bench", "cutie-small", "--server", cutie_server.url, "--streams", "1,2", "--resolution", "96x128",
            "--frames", "2", "--warmup", "2", "--max-internal-size", "128", "--top-k", "30", "--memory-frames", "3",
            "--mem-every", "2", "--weights", str(seeded_weights("cutie-small")), "--json", str(report)]
    assert main(argv) == 0, capsys.readouterr().err
    runs = json.loads(report.read_text())["runs"]
    assert [run["streams"] for run in runs] == [1, 2]
    for run in runs:
        assert run["server_fps"] > 0 and run["in_process_fps"] > 0
        assert len(run["server_per_stream_fps"]) == run["streams"]
        assert run["ratio"] == pytest.approx(run["server_fps"] / run["in_process_fps"], rel=1e-2)
        # every request of the run (4 frames per stream) counted once in the executes the server formed
        assert sum(int(size) * count for size, count in run["batch_sizes"].items()) == run["streams"] * 4
    assert "server / in-process" in capsys.readouterr().out


# -- failures ---------------------------------------------------------------------------------

def test_killed_server_fails_calls_in_time_and_a_restart_serves_new_streams(triton_repository, start_server,
                                                                              seeded_weights):
    repository = triton_repository("cutie-small", CUTIE, idle_seconds=20)
    server = start_server(repository)
    clip = shapes_clip(4)
    timeout = 10
    client = vosrt.connect(server.url, "cutie-small", timeout=timeout)
    client.step({"cam": clip[0]})
    client.step({"cam": clip[1][0]})
    other = vosrt.connect(server.url, "cutie-small", timeout=timeout)
    other.step({"frozen": clip[0]})
    os.killpg(server.process.pid, signal.SIGSTOP)  # a server that hangs: the call ends at the timeout
    began = time.monotonic()
    with pytest.raises(StepFailed, match=f"no answer within {timeout} s"):
        other.step({"frozen": clip[1][0]})
    assert time.monotonic() - began < timeout + 5
    server.kill()
    began = time.monotonic()
    with pytest.raises(StepFailed, match="start it again with its first mask") as failed:
        client.step({"cam": clip[2][0]})
    elapsed = time.monotonic() - began
    print(f"killed server: failed in {elapsed:.2f} s: {failed.value}")
    assert elapsed < timeout + 5
    with pytest.raises(ValueError, match="first frame needs a mask"):  # the stream was closed
        client.step({"cam": clip[3][0]})

    restarted = start_server(repository, grpc_port=server.grpc_port)
    with vosrt.connect(restarted.url, "cutie-small", timeout=60) as fresh:
        served = [fresh.step({"cam": clip[0]})["cam"], fresh.step({"cam": clip[1][0]})["cam"]]
        session = vosrt.load("cutie-small", weights=seeded_weights("cutie-small"), **CUTIE)
        assert max(float(np.abs(a - session.step(*f).astype(np.float32)).max())
                   for a, f in zip(served, clip[:2])) <= STREAMS_MAX_DPROB
        assert open_streams(restarted) == 1
        # Left idle past the timeout (20 s: above the slowest frame, the first of a fresh instance, on a
        # loaded machine), the stream is freed, and its next frame fails clearly.
        assert wait_for_open_streams(restarted, 0, 60) == 0
        with pytest.raises(StepFailed, match="start it again with its first mask"):
            fresh.step({"cam": clip[2][0]})


def _frame(item: tuple) -> object:
    """A clip's (image, mask, objects) as a step's frame: the image alone where it has no mask."""
    return item[0] if item[1] is None else item


# -- two servers --------------------------------------------------------------------------------

def test_two_servers_keep_each_stream_on_one_server(cutie_server, triton_repository, start_server, seeded_weights):
    second = start_server(triton_repository("cutie-small", CUTIE, idle_seconds=120))
    urls = [cutie_server.url, second.url]
    streams = [f"cam{i}" for i in range(8)]
    clips = {"shapes": shapes_clip(4), "long": long_clip(4)}
    which = {stream: "shapes" if i % 2 == 0 else "long" for i, stream in enumerate(streams)}
    placed = {stream: place(stream, urls) for stream in streams}
    assert set(placed.values()) == set(urls)  # these names spread over both servers
    served = {stream: [] for stream in streams}
    already = open_streams(cutie_server)
    with vosrt.connect(urls, "cutie-small", timeout=120) as client:
        for t in range(4):
            frames = {stream: _frame(clips[which[stream]][t]) for stream in streams}
            for stream, prob in client.step(frames, last=streams if t == 3 else ()).items():
                served[stream].append(prob)
            assert {stream: client.server_of(stream) for stream in streams} == placed
            if t == 1:  # each server holds the streams that hash to it (and the first server, those of no other test)
                assert open_streams(cutie_server) - already == list(placed.values()).count(cutie_server.url)
                assert open_streams(second) == list(placed.values()).count(second.url)
        for stream in streams:
            client.end(stream)
    independent = run_independent(lambda: vosrt.load("cutie-small", weights=seeded_weights("cutie-small"), **CUTIE),
                                  {name: (0, clip) for name, clip in clips.items()})
    worst = max(float(np.abs(a - b).max()) for stream in streams
                for a, b in zip(served[stream], independent[which[stream]]))
    assert worst <= STREAMS_MAX_DPROB
    assert wait_for_open_streams(cutie_server, already, 10) == already and wait_for_open_streams(second, 0, 10) == 0
