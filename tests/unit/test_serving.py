"""Serving without a server: stream placement by hashing, the served model's stream table, and
the repository export-triton writes (the real server: tests/serving)."""
from __future__ import annotations

import numpy as np
import pytest

from vosrt.cli import main
from vosrt.serving.client import place
from vosrt.serving.repository import MARKER, ServingOptions, export_triton, model_config
from vosrt.serving.streams import Request, StreamTable


def test_adding_a_server_moves_only_the_streams_that_hash_to_it():
    two = ["10.0.0.1:8001", "10.0.0.2:8001"]
    three = [*two, "10.0.0.3:8001"]
    streams = [f"camera-{i}" for i in range(300)]
    before = {stream: place(stream, two) for stream in streams}
    after = {stream: place(stream, three) for stream in streams}
    moved = [stream for stream in streams if before[stream] != after[stream]]
    assert {after[stream] for stream in moved} == {three[2]}  # every stream that moved went to the new server
    assert 0.25 < len(moved) / len(streams) < 0.42  # about a third: its share
    assert set(before.values()) == set(two)
    assert all(place(stream, list(reversed(three))) == after[stream] for stream in streams)  # order does not matter


class FakeBatch:
    """A batch whose streams count their frames; an image of 255s is refused (a bad frame)."""

    def __init__(self):
        self.frames: dict[int, int] = {}
        self.calls: list[list[int]] = []

    def step(self, frames, *, last=()):
        if any(image.min() == 255 for image, _, _ in frames.values()):
            raise ValueError("stream ?: a refused frame")
        self.calls.append(sorted(frames))
        for stream in frames:
            self.frames[stream] = self.frames.get(stream, 0) + 1
        return {stream: np.full((2, 2, 2), self.frames[stream], np.float32) for stream in frames}

    def end(self, stream):
        del self.frames[stream]

    def to_mask(self, stream, prob):
        return np.zeros(prob.shape[1:], np.uint8)


IMAGE = np.zeros((2, 2, 3), np.uint8)
MASK = np.ones((2, 2), np.int32)


def test_stream_table_steps_good_requests_together_and_fails_bad_ones_alone():
    now = [0.0]
    batch = FakeBatch()
    table = StreamTable(batch, idle_seconds=10, clock=lambda: now[0])
    replies = table.execute([Request(1, True, False, IMAGE, MASK), Request(2, True, False, IMAGE, MASK),
                             Request(3, False, False, IMAGE), Request(4, True, False, IMAGE)])
    assert [r.error is None for r in replies] == [True, True, False, False]
    assert replies[2].lost and "no stream is open" in replies[2].error
    assert "needs MASK" in replies[3].error
    assert batch.calls == [[1, 2]] and table.count == 2
    # A frame the batch refuses: the others of the call go on, each alone.
    replies = table.execute([Request(1, False, False, np.full((2, 2, 3), 255, np.uint8)),
                             Request(2, False, True, IMAGE, outputs=["LABELS"])])
    assert "a refused frame" in replies[0].error and replies[1].error is None
    assert list(replies[1].outputs) == ["LABELS"] and replies[1].outputs["LABELS"].dtype == np.int32
    assert table.count == 1 and 2 not in batch.frames  # END freed stream 2
    # Idle past the timeout: freed.
    now[0] = 11.0
    assert table.free_idle() == [1] and table.count == 0 and batch.frames == {}


def test_stream_table_end_without_a_frame_and_restart():
    batch = FakeBatch()
    table = StreamTable(batch, idle_seconds=10, clock=lambda: 0.0)
    table.execute([Request(5, True, False, IMAGE, MASK)])
    table.execute([Request(5, False, False, IMAGE)])
    assert batch.frames == {5: 2}
    [reply] = table.execute([Request(5, True, False, IMAGE, MASK)])  # START again: a new stream
    assert reply.error is None and batch.frames == {5: 1}
    [reply] = table.execute([Request(5, False, True)])  # END without IMAGE closes
    assert reply.error is None and reply.outputs == {} and table.count == 0
    [reply] = table.execute([Request(6, False, False)])
    assert "IMAGE is missing" in reply.error


def test_model_config_holds_the_sequence_batcher_and_the_instances():
    text = model_config("cutie-small", ServingOptions(instances=3, max_streams=6, idle_seconds=30))
    for expected in ('backend: "python"', "max_batch_size: 6", "oldest {", "max_candidate_sequences: 6",
                     "max_sequence_idle_microseconds: 30000000", "CONTROL_SEQUENCE_START", "CONTROL_SEQUENCE_END",
                     "CONTROL_SEQUENCE_CORRID", "TYPE_UINT64", "count: 3 kind: KIND_CPU", 'name: "IMAGE"',
                     'name: "PROBABILITIES"', 'name: "LABELS"'):
        assert expected in text, expected
    assert "count: 1 kind: KIND_GPU" in model_config("cutie-small", ServingOptions(device="cuda", instances=3))


def test_export_triton_writes_a_repository_and_never_replaces_user_files(tmp_path, capsys):
    weights = tmp_path / "weights.pth"
    weights.write_bytes(b"not read by the export")
    repository = tmp_path / "repository"
    argv = ["export-triton", "cutie-small", "--weights", str(weights), "--output", str(repository), "--instances", "2",
            "--max-internal-size", "128"]
    assert main(argv) == 0
    assert (repository / MARKER).is_file()
    assert "count: 2 kind: KIND_CPU" in (repository / "cutie-small" / "config.pbtxt").read_text()
    assert '"max_internal_size": 128' in (repository / "cutie-small" / "1" / "vosrt.json").read_text()
    assert (repository / "cutie-small" / "1" / "weights.pth").read_bytes() == weights.read_bytes()
    assert main(argv) == 0  # its own repository is replaced
    user = tmp_path / "mine"
    user.mkdir()
    (user / "notes.txt").write_text("mine")
    assert main(["export-triton", "cutie-small", "--weights", str(weights), "--output", str(user)]) == 2
    assert "not a vosrt model repository" in capsys.readouterr().err
    assert [p.name for p in user.iterdir()] == ["notes.txt"]
    assert main(["export-triton", "cutie-small", "--output", str(tmp_path / "x"), "--backend", "tensorrt"]) == 2
    assert "--device cuda" in capsys.readouterr().err


def test_connect_needs_a_server_url():
    pytest.importorskip("tritonclient.grpc")
    import vosrt

    with pytest.raises(ValueError, match="at least one server"):
        vosrt.connect([], "cutie-small")
