"""The Python backend model of a repository written by ``vosrt export-triton``.

The repository's ``model.py`` imports :class:`TritonPythonModel` from here. Each model instance
(a stub process of Triton's Python backend) loads one ``vosrt.load_batch`` with the settings in
``<version>/vosrt.json`` and serves its sequences through a :class:`~.streams.StreamTable`. The
number of open streams is the gauge ``vosrt_open_streams`` on Triton's metrics endpoint.
Runs inside the server's Python environment (``triton_python_backend_utils`` exists only there).
"""
from __future__ import annotations

import json
import os
import threading
from pathlib import Path

from .contract import CORRID, END, IMAGE, MASK, OBJECTS, START
from .streams import Reply, Request, StreamTable

SETTINGS = "vosrt.json"
SWEEP_SECONDS = 1.0  # how often idle streams are looked for between calls


def load_settings(model_dir: str | Path, version: str) -> dict:
    """``<model_dir>/<version>/vosrt.json`` with its paths made absolute."""
    folder = Path(model_dir) / version
    settings = json.loads((folder / SETTINGS).read_text())
    for key in ("weights", "export_dir"):
        if settings.get(key):
            settings[key] = str(folder / settings[key])
    return settings


def idle_seconds(model_config: dict) -> float:
    """The sequence batcher's idle timeout in seconds (Triton's default: 1 s)."""
    micros = model_config.get("sequence_batching", {}).get("max_sequence_idle_microseconds") or 1_000_000
    return int(micros) / 1e6


class TritonPythonModel:
    """One model instance: one batch of streams (see the module docstring)."""

    def initialize(self, args: dict) -> None:
        # Idle OpenMP threads sleep instead of spinning (unless the server's environment chose a
        # policy): an instance shares the cores with Triton's threads and the other instances, and
        # spinning threads slow it many times over (as in vosrt bench). Before torch loads.
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        import triton_python_backend_utils as pb_utils

        import vosrt

        self.pb_utils = pb_utils
        config = json.loads(args["model_config"])
        settings = load_settings(args["model_repository"], args["model_version"])
        device = settings.pop("device")
        if args.get("model_instance_kind") == "GPU":
            device = f"cuda:{args['model_instance_device_id']}"
        batch = vosrt.load_batch(settings.pop("model"), device=device, **settings)
        self.table = StreamTable(batch, idle_seconds(config))
        # The family must outlive its metric: both are kept.
        self.metric_family = pb_utils.MetricFamily(name="vosrt_open_streams", description="streams holding memory",
                                                    kind=pb_utils.MetricFamily.GAUGE)
        self.gauge = self.metric_family.Metric(labels={"model": args["model_name"],
                                                       "instance": args["model_instance_name"]})
        self.gauge.set(0)
        self.stopping = threading.Event()
        self.sweeper = threading.Thread(target=self._sweep, daemon=True)
        self.sweeper.start()

    def execute(self, requests: list) -> list:
        parsed, responses = [], [None] * len(requests)
        for index, request in enumerate(requests):
            try:
                parsed.append((index, self._parse(request)))
            except ValueError as err:
                responses[index] = self._error(str(err))
        replies = self.table.execute([request for _, request in parsed])
        for (index, _), reply in zip(parsed, replies):
            responses[index] = self._response(reply)
        self.gauge.set(self.table.count)
        return responses

    def finalize(self) -> None:
        self.stopping.set()
        self.sweeper.join(timeout=5)

    def _sweep(self) -> None:
        """Free idle streams between calls too (a stream whose client went away)."""
        while not self.stopping.wait(SWEEP_SECONDS):
            if self.table.free_idle():
                self.gauge.set(self.table.count)

    def _parse(self, request) -> Request:
        def tensor(name: str):
            found = self.pb_utils.get_input_tensor_by_name(request, name)
            return None if found is None else found.as_numpy()

        def flag(name: str) -> int:
            value = tensor(name)
            if value is None:
                raise ValueError(f"control input {name} missing: send the frames as a sequence (sequence_id)")
            return int(value.reshape(-1)[0])

        def item(name: str):
            value = tensor(name)
            if value is None:
                return None
            if value.shape[:1] != (1,):
                raise ValueError(f"{name}: one frame per request (batch dimension 1), got {list(value.shape)}")
            return value[0]

        return Request(sequence=flag(CORRID), start=bool(flag(START)), end=bool(flag(END)), image=item(IMAGE),
                       mask=item(MASK), objects=item(OBJECTS), outputs=list(request.requested_output_names()))

    def _response(self, reply: Reply):
        if reply.error is not None:
            return self._error(reply.error, self.pb_utils.TritonError.NOT_FOUND if reply.lost else None)
        tensors = [self.pb_utils.Tensor(name, value[None]) for name, value in reply.outputs.items()]
        return self.pb_utils.InferenceResponse(output_tensors=tensors)

    def _error(self, message: str, code: int | None = None):
        """A failed response: INVALID_ARG (a bad frame), or ``code``."""
        error = self.pb_utils.TritonError(message, self.pb_utils.TritonError.INVALID_ARG if code is None else code)
        return self.pb_utils.InferenceResponse(output_tensors=[], error=error)
