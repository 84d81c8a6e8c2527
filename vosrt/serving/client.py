"""``vosrt.connect``: the ``load_batch`` interface, each stream a sequence on a Triton server.

>>> streams = vosrt.connect(["10.0.0.5:8001", "10.0.0.6:8001"], "cutie-small")
>>> probs = streams.step({"cam0": (image0, mask0), "cam1": (image1, mask1, [1, 2])})
>>> probs = streams.step({"cam0": next0, "cam1": next1})           # {stream: [K + 1, H, W] float32}
>>> probs = streams.step({"cam0": last0}, last=["cam0"])           # the sequence's END
>>> streams.end("cam0")

Each stream's frames go, in order, as one sequence (a random 63-bit correlation id) over gRPC to
one server, chosen by rendezvous hashing of the stream id over ``urls``: every client places a
stream on the same server, and adding a server moves only the streams that hash to it. The frames
of one ``step`` are sent at once, so the server's sequence batcher can run them in one call. A
server that does not answer within ``timeout`` seconds, or that lost the stream (it died or
restarted), fails the stream's call with :class:`StepFailed`; start the stream again with its first
mask (a new sequence).
"""
from __future__ import annotations

import hashlib
import secrets
import threading
from collections.abc import Collection, Hashable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass

import numpy as np

from vosrt.runtime.streams import unpack_frame

from .contract import IMAGE, MASK, OBJECTS, PROBABILITIES

DEFAULT_TIMEOUT = 60.0


class StepFailed(RuntimeError):
    """Some streams of a ``step`` failed. ``errors``: {stream: message}; ``results``: the outputs of
    the streams that succeeded (they moved on; the failed ones did not, or were lost)."""

    def __init__(self, errors: dict[Hashable, str], results: dict[Hashable, np.ndarray]):
        self.errors, self.results = errors, results
        super().__init__("; ".join(f"stream {stream!r}: {message}" for stream, message in errors.items()))


def place(stream: Hashable, urls: Sequence[str]) -> str:
    """The server of ``stream`` among ``urls``: highest rendezvous hash of (url, stream id)."""
    def score(url: str) -> bytes:
        return hashlib.blake2b(f"{url}\0{stream}".encode(), digest_size=8).digest()

    return max(urls, key=score)


@dataclass
class _Stream:
    url: str
    sequence: int
    objects: list[int]
    started: bool = False  # whether the server has seen its START
    closed: bool = False  # whether its last frame ended the sequence on the server


class ServerStreams:
    """Streams segmented on Triton servers; see the module docstring. Create with :func:`connect`."""

    def __init__(self, urls: Sequence[str] | str, model: str, *, timeout: float = DEFAULT_TIMEOUT):
        import tritonclient.grpc as grpcclient

        self.urls = [urls] if isinstance(urls, str) else list(urls)
        if not self.urls:
            raise ValueError("connect needs at least one server URL (host:port of its gRPC endpoint)")
        self.model = model
        self.timeout = timeout
        self._grpc = grpcclient
        self._clients = {url: grpcclient.InferenceServerClient(url, channel_args=_channel_args(grpcclient))
                         for url in self.urls}
        self._streams: dict[Hashable, _Stream] = {}
        self._lock = threading.Lock()

    @property
    def streams(self) -> list[Hashable]:
        """The ids of the open streams, in order of arrival."""
        return list(self._streams)

    def server_of(self, stream: Hashable) -> str:
        """The URL serving ``stream`` (where it would go, if it is not open)."""
        known = self._streams.get(stream)
        return known.url if known else place(stream, self.urls)

    def object_ids(self, stream: Hashable) -> list[int]:
        """Ids of ``stream``'s objects, sorted: channel i + 1 of its probabilities is ``object_ids[i]``."""
        return list(self._stream(stream).objects)

    def to_mask(self, stream: Hashable, prob: np.ndarray) -> np.ndarray:
        """``stream``'s probabilities -> its uint8 label map."""
        return np.array([0, *self.object_ids(stream)], dtype=np.uint8)[np.argmax(prob, axis=0)]

    def step(self, frames: Mapping[Hashable, object], *, last: Collection[Hashable] = ()) -> dict[Hashable, np.ndarray]:
        """One frame of each stream in ``frames``, as ``BatchSession.step``: ``{stream: image}``,
        ``(image, mask)`` or ``(image, mask, objects)``; a new stream needs a mask. ``last``: the
        streams whose frame ends their sequence. Returns ``{stream: [K + 1, H, W] float32}``;
        :class:`StepFailed` when any stream failed (with the others' results)."""
        unknown = [stream for stream in last if stream not in frames]
        if unknown:
            raise ValueError(f"last names streams without a frame in this step: {unknown}")
        requests = {stream: self._request(stream, given, stream in last) for stream, given in frames.items()}
        pending = {stream: self._send(stream, *request) for stream, request in requests.items()}
        results, errors = {}, {}
        for stream, future in pending.items():
            try:
                results[stream] = future.result(timeout=self.timeout + 5)
            except Exception as err:  # noqa: BLE001 - every failure becomes the stream's error
                errors[stream] = self._failed(stream, err)
        for stream in last:
            if stream in results:
                self._streams[stream].closed = True
            else:  # a failed END frame closes the sequence on the server all the same
                self._forget(stream)
        if errors:
            raise StepFailed(errors, results)
        return results

    def end(self, stream: Hashable) -> None:
        """``stream`` leaves (after its last frame, as in ``load_batch``; or at any time: its sequence
        is then closed on its server by an END without a frame)."""
        record = self._stream(stream)
        self._forget(stream)
        if record.started and not record.closed:
            self._send_end(record)

    def close(self) -> None:
        """End every open stream and close the connections."""
        for stream in self.streams:
            try:
                self.end(stream)
            except Exception:  # noqa: BLE001 - a dead server: its streams are gone anyway
                pass
        for client in self._clients.values():
            client.close()

    def __enter__(self) -> "ServerStreams":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- one request ----------------------------------------------------------------------

    def _request(self, stream: Hashable, given, is_last: bool) -> tuple:
        """Check and encode one frame -> (record, inputs, start, end); the record is new for a new stream."""
        image, mask, objects = unpack_frame(stream, given)
        image = np.asarray(image)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"stream {stream!r}: the image must be HxWx3 uint8 RGB, got {image.dtype} "
                             f"{list(image.shape)}")
        record = self._streams.get(stream)
        if record is None or record.closed:
            if mask is None:
                raise ValueError(f"stream {stream!r}: the first frame needs a mask (a new stream, or one its "
                                 "server lost: start it again with its first mask)")
            record = _Stream(place(stream, self.urls), secrets.randbits(63) | 1, [])
        inputs = [self._tensor(IMAGE, image[None], "UINT8")]
        if mask is not None:
            mask = np.asarray(mask)
            if not np.issubdtype(mask.dtype, np.integer):
                raise ValueError(f"stream {stream!r}: the mask must be an integer label map, got {mask.dtype}")
            inputs.append(self._tensor(MASK, mask.astype(np.int32)[None], "INT32"))
            if objects is not None:
                inputs.append(self._tensor(OBJECTS, np.asarray(objects, dtype=np.int32)[None], "INT32"))
        return record, inputs, not record.started, is_last, mask, objects

    def _send(self, stream: Hashable, record: _Stream, inputs: list, start: bool, end: bool, mask, objects) -> Future:
        future: Future = Future()
        if start:
            with self._lock:
                self._streams[stream] = record

        def done(result, error) -> None:
            if error is not None:
                future.set_exception(error)
                return
            if mask is not None:
                given = objects if objects is not None else [int(v) for v in np.unique(mask) if v]
                record.objects = sorted(set(record.objects) | {int(v) for v in given})
            record.started = True
            future.set_result(result.as_numpy(PROBABILITIES)[0])

        try:
            self._clients[record.url].async_infer(
                self.model, inputs, done, outputs=[self._grpc.InferRequestedOutput(PROBABILITIES)],
                sequence_id=record.sequence, sequence_start=start, sequence_end=end, client_timeout=self.timeout)
        except Exception as err:  # noqa: BLE001 - raised before sending: the stream's error
            future.set_exception(err)
        return future

    def _send_end(self, record: _Stream) -> None:
        """Close ``record``'s sequence on its server: a request with END and no frame."""
        self._clients[record.url].infer(self.model, [], sequence_id=record.sequence, sequence_end=True,
                                        client_timeout=self.timeout)

    def _failed(self, stream: Hashable, err: Exception) -> str:
        """The message of ``stream``'s failure; a stream the server may no longer hold is forgotten
        (its next frame must bring its first mask again)."""
        record = self._streams.get(stream)
        status = getattr(err, "status", lambda: None)() or ""
        message = getattr(err, "message", lambda: str(err))() or str(err)
        # A bad frame of an open stream leaves the stream as it was; anything else may have lost
        # it: the server's "no stream is open" (NOT_FOUND), the sequence batcher's "must specify the
        # START flag" (a restarted server), an unreachable or silent server.
        bad_frame = (status == "StatusCode.INVALID_ARGUMENT" and "START flag" not in message
                     and record is not None and record.started)
        if not bad_frame:
            self._forget(stream)
        where = record.url if record else "?"
        if "DEADLINE_EXCEEDED" in status or isinstance(err, TimeoutError):
            message = f"no answer within {self.timeout:g} s"
        elif "UNAVAILABLE" in status:
            message = f"server unreachable ({message})"
        hint = "" if bad_frame else "; the stream is closed: start it again with its first mask"
        return f"server {where}: {message}{hint}"

    def _forget(self, stream: Hashable) -> None:
        with self._lock:
            self._streams.pop(stream, None)

    def _stream(self, stream: Hashable) -> _Stream:
        if stream not in self._streams:
            raise ValueError(f"no stream {stream!r}; the open streams are {self.streams}")
        return self._streams[stream]

    def _tensor(self, name: str, value: np.ndarray, dtype: str):
        tensor = self._grpc.InferInput(name, list(value.shape), dtype)
        tensor.set_data_from_numpy(value)
        return tensor


def _channel_args(grpcclient) -> list[tuple[str, int]]:
    """gRPC channel options: tritonclient's message sizes; a connection of this client's own (gRPC
    shares one per address within a process by default, which keeps failing fast for a while after
    a server at that address died, even once it is back); reconnect tries at most 2 s apart, so a
    restarted server is found again soon."""
    size = grpcclient.MAX_GRPC_MESSAGE_SIZE
    return [("grpc.max_send_message_length", size), ("grpc.max_receive_message_length", size),
            ("grpc.use_local_subchannel_pool", 1), ("grpc.initial_reconnect_backoff_ms", 250),
            ("grpc.max_reconnect_backoff_ms", 2000)]


def connect(urls: Sequence[str] | str, model: str, *, timeout: float = DEFAULT_TIMEOUT) -> ServerStreams:
    """Streams of ``model`` (the vosrt model name the repository serves) on the Triton servers at
    ``urls`` (``host:port`` of their gRPC endpoints). ``timeout``: seconds a call may take before
    it fails. Needs ``tritonclient[grpc]`` (``pip install 'vosrt[serve-client]'``)."""
    try:
        import tritonclient.grpc  # noqa: F401
    except ImportError:
        raise RuntimeError("vosrt.connect needs the Triton client: pip install 'vosrt[serve-client]' "
                           "(tritonclient[grpc])") from None
    return ServerStreams(urls, model, timeout=timeout)
