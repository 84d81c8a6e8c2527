"""TensorRT backend: the engines of an engine directory, run on torch's CUDA stream.

Engines are deserialised once. torch allocates all device memory: inputs are bound by their
``data_ptr``, every output goes into a buffer kept per execution context and reused while the
shapes stay the same, and the activation memory of an engine is one torch buffer that all its
execution contexts share (``ExecutionContextAllocationStrategy.USER_MANAGED``; they run one
after another on one stream, as TensorRT requires of contexts sharing memory), so a frame
allocates nothing and nothing leaves the GPU. Work is enqueued with ``execute_async_v3`` on
``torch.cuda.current_stream()``, so it is ordered with the session's own torch ops without
synchronisation.

Eager calls share one execution context per engine, re-set to each call's shapes and
addresses. A CUDA graph (:class:`~vosrt.runtime.backends.cuda_graphs.CudaGraphBackend`)
captures a run on an execution context of its own (:meth:`TensorRTBackend.graph_runner`): a
captured graph replays the shapes and addresses its context had at capture time, so Cutie's
buckets, which give one engine several shapes, get one context and one graph per shape.

TensorRT API used (the same from 10.3 to 11.x): ``Runtime.deserialize_cuda_engine``, the
engine's ``num_io_tensors``/``get_tensor_name``/``get_tensor_mode``/``get_tensor_dtype``/
``get_tensor_profile_shape``/``device_memory_size_v2``/``create_execution_context(strategy)``,
and the context's ``set_device_memory``/``set_input_shape``/``get_tensor_shape``/
``set_tensor_address``/``execute_async_v3``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import torch

from ..artifacts import (ENGINE_FORMAT, TensorRTEnvironment, check_compatible, engine_directory, import_tensorrt,
                         load_constants, read_manifest, register_custom_ops)
from ..registry import MODELS
from ..stages import StageSpec
from .base import Backend

_TORCH_TYPES = {"FLOAT": torch.float32, "HALF": torch.float16, "BF16": torch.bfloat16, "BOOL": torch.bool,
                "INT32": torch.int32, "INT64": torch.int64, "INT8": torch.int8, "UINT8": torch.uint8}


class Engine:
    """One deserialised engine: its tensors, the activation memory its execution contexts share,
    and the context eager calls run on."""

    def __init__(self, trt, engine, name: str, device: torch.device):
        self.name = name
        self.device = device
        self.engine = engine
        self._user_managed = trt.ExecutionContextAllocationStrategy.USER_MANAGED
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self.inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        self.dtypes = {n: _TORCH_TYPES[engine.get_tensor_dtype(n).name] for n in names}
        self.ranges = {n: tuple(tuple(s) for s in engine.get_tensor_profile_shape(n, 0)) for n in self.inputs}
        self.activations = torch.empty(engine.device_memory_size_v2, dtype=torch.uint8, device=device)
        self.context = self.new_context()

    def new_context(self) -> "EngineContext":
        """A new execution context on the shared activation memory, with output buffers of its own."""
        context = self.engine.create_execution_context(self._user_managed)
        context.set_device_memory(self.activations.data_ptr(), self.activations.numel())
        return EngineContext(self, context)

    def __call__(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Run on the eager context (see :meth:`EngineContext.__call__`)."""
        return self.context(inputs)

    def check_shape(self, name: str, shape: tuple[int, ...]) -> None:
        """ValueError unless ``shape`` of input ``name`` is inside the engine's profile."""
        low, _, high = self.ranges[name]
        if len(shape) == len(low) and all(lo <= s <= hi for s, lo, hi in zip(shape, low, high)):
            return
        if low == high:
            raise ValueError(f"{self.name} engine: input {name} has shape {list(shape)}, but the engine was built "
                             f"for exactly {list(low)} (a static profile, as DLA builds have): run it with exactly "
                             "--max-objects objects, all given on the first frame, and the engines' max_mem_frames, "
                             "or rebuild without --dla-core")
        raise ValueError(f"{self.name} engine: input {name} has shape {list(shape)}, outside the engine's profile "
                         f"{list(low)}..{list(high)}; rebuild the engines with --max-objects / --resolution / "
                         "--max-mem-frames covering this video (the resolution is the frame size padded to a "
                         "multiple of 16)")


class EngineContext:
    """An execution context of ``engine`` with its output buffers."""

    def __init__(self, engine: Engine, context):
        self.engine = engine
        self.context = context
        self.buffers: dict[str, torch.Tensor] = {}

    def __call__(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Run on torch's current stream. The outputs are this context's buffers: valid until its next call."""
        engine = self.engine
        keep_alive = []  # converted inputs must outlive the enqueue, or their memory could be reused before it
        for name in engine.inputs:
            x = inputs[name].to(engine.dtypes[name]).contiguous()
            engine.check_shape(name, tuple(x.shape))
            if not self.context.set_input_shape(name, tuple(x.shape)):
                raise RuntimeError(f"TensorRT refused the shape {list(x.shape)} of {engine.name} input {name}")
            self._bind(name, x)
            keep_alive.append(x)
        outputs = {name: self._buffer(name, tuple(self.context.get_tensor_shape(name))) for name in engine.outputs}
        for name, out in outputs.items():
            self._bind(name, out)
        if not self.context.execute_async_v3(torch.cuda.current_stream(engine.device).cuda_stream):
            raise RuntimeError(f"TensorRT failed to run the {engine.name} engine")
        return outputs

    def _bind(self, name: str, tensor: torch.Tensor) -> None:
        if not self.context.set_tensor_address(name, tensor.data_ptr()):
            raise RuntimeError(f"TensorRT refused the address of {self.engine.name} tensor {name}")

    def _buffer(self, name: str, shape: tuple[int, ...]) -> torch.Tensor:
        buffer = self.buffers.get(name)
        if buffer is None or tuple(buffer.shape) != shape:
            buffer = self.buffers[name] = torch.empty(shape, dtype=self.engine.dtypes[name], device=self.engine.device)
        return buffer


class TensorRTBackend(Backend):
    """Runs the engines of ``directory`` (an engine directory, or an ONNX export directory with
    engines in ``tensorrt/``; see :func:`vosrt.export.tensorrt.build_engines`) on a CUDA device.

    ``environment``: what to check the engines against (default: this machine's TensorRT and
    GPU); a mismatch raises RuntimeError before any engine is deserialised. ``manifest``: the
    engine directory's manifest when the caller has read (and checked) it already.
    """

    def __init__(self, directory: str | Path, device: torch.device | str = "cuda",
                 environment: TensorRTEnvironment | None = None, *, check_files: bool = True,
                 manifest: dict | None = None):
        self.device = torch.device(device)
        if self.device.type != "cuda":
            raise ValueError("backend='tensorrt' runs on an NVIDIA GPU: pass device='cuda'")
        engine_dir = self.directory = engine_directory(directory)
        self.manifest = manifest or read_manifest(engine_dir, ENGINE_FORMAT, check_files=check_files)
        trt = import_tensorrt("backend='tensorrt' needs")
        check_compatible(self.manifest, environment or TensorRTEnvironment.current(self.device), engine_dir)
        register_custom_ops(self.manifest)
        self.stages = MODELS[self.manifest["model"]].family.stages
        self.architecture = self.manifest["architecture"]
        self.constants = load_constants(engine_dir, self.manifest, self.device)
        self._runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engines = {}
        with torch.cuda.device(self.device):
            for name, info in self.manifest["engines"].items():
                engine = self._runtime.deserialize_cuda_engine((engine_dir / info["file"]).read_bytes())
                if engine is None:
                    raise RuntimeError(f"TensorRT could not load {engine_dir / info['file']}; rebuild the engines")
                self.engines[name] = Engine(trt, engine, name, self.device)

    def _run(self, stage: StageSpec, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        return _outputs(stage, self.engines[stage.name](dict(zip(stage.input_names, inputs))))

    def graph_runner(self, stage: StageSpec) -> Callable[[list[torch.Tensor]], Sequence[torch.Tensor]]:
        """A run of ``stage`` on a new execution context, which the graph capturing it owns."""
        context = self.engines[stage.name].new_context()
        return lambda inputs: _outputs(stage, context(dict(zip(stage.input_names, inputs))))


def _outputs(stage: StageSpec, outputs: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    return [outputs[name] for name in stage.output_names]
