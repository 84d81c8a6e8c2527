"""Stand-ins for the parts of the ``tensorrt`` module vosrt uses. They record calls and return
placeholder bytes: they test vosrt's bookkeeping around TensorRT, not TensorRT itself."""
from __future__ import annotations

import types
from pathlib import Path

ENVIRONMENT = {"tensorrt_version": "10.9.0.34", "gpu_name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"}


class FakeTensorRT(types.ModuleType):
    """The part of the ``tensorrt`` module the builder uses; records the calls, builds placeholder bytes."""

    def __init__(self, fail_on: str | None = None):
        super().__init__("tensorrt")
        self.__version__ = "10.9.0.34"
        self.fail_on = fail_on
        self.calls: list[tuple] = []
        self.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda s, level: None})
        self.NetworkDefinitionCreationFlag = types.SimpleNamespace(STRONGLY_TYPED=1)
        self.MemoryPoolType = types.SimpleNamespace(WORKSPACE="workspace")
        self.BuilderFlag = types.SimpleNamespace(GPU_FALLBACK="gpu_fallback", FP16="fp16", TF32="tf32")
        self.DeviceType = types.SimpleNamespace(DLA="dla")
        self.TensorIOMode = types.SimpleNamespace(INPUT="input", OUTPUT="output")
        self.ExecutionContextAllocationStrategy = types.SimpleNamespace(STATIC="static", USER_MANAGED="user_managed")
        fake = self

        class Config:
            def __getattr__(self, name):
                return lambda *args, **kwargs: fake.calls.append((name, *args, *kwargs.values()))

            def create_timing_cache(self, data):
                fake.calls.append(("create_timing_cache", bytes(data)))
                self.cache = bytes(data) + b"+"
                return self.cache

            def set_timing_cache(self, cache, ignore_mismatch):
                fake.calls.append(("set_timing_cache", cache, ignore_mismatch))
                return True

            def get_timing_cache(self):
                return types.SimpleNamespace(serialize=lambda: self.cache)

        class Builder:
            num_DLA_cores = 0

            def __init__(self, logger):
                pass

            def create_network(self, flags):
                fake.calls.append(("create_network", flags))
                return types.SimpleNamespace()

            create_builder_config = staticmethod(Config)
            create_optimization_profile = staticmethod(Config)

            def build_serialized_network(self, network, config):
                return None if fake.fail_on == network.path.stem else f"engine of {network.path.name}".encode()

        class OnnxParser:
            num_errors = 0

            def __init__(self, network, logger):
                self.network = network

            def parse_from_file(self, path):
                self.network.path = Path(path)
                return True

        self.Builder, self.OnnxParser = Builder, OnnxParser


class FakeEngine:
    """A deserialised engine with input ``x`` and output ``y`` of the same shape, ``[1..3, 4]``
    (``static``: exactly ``[3, 4]``). ``contexts``: the execution contexts created, each
    recording its allocation strategy, device memory, shapes and addresses and its runs."""

    num_io_tensors = 2
    device_memory_size_v2 = 256

    def __init__(self, static: bool = False):
        self.static = static
        self.contexts: list[FakeContext] = []

    def get_tensor_name(self, index):
        return ["x", "y"][index]

    def get_tensor_mode(self, name):
        return "input" if name == "x" else "output"

    def get_tensor_dtype(self, name):
        return types.SimpleNamespace(name="FLOAT")

    def get_tensor_profile_shape(self, name, profile):
        return [(3, 4)] * 3 if self.static else [(1, 4), (2, 4), (3, 4)]

    def create_execution_context(self, strategy="static"):
        self.contexts.append(FakeContext(strategy))
        return self.contexts[-1]


class FakeContext:
    """An execution context of :class:`FakeEngine`: records what it is given."""

    def __init__(self, strategy):
        self.strategy = strategy
        self.device_memory = None
        self.shapes, self.addresses = {}, {}
        self.runs = 0

    def set_device_memory(self, memory, size):
        self.device_memory = (memory, size)

    def set_input_shape(self, name, shape):
        self.shapes[name] = self.shapes["y"] = tuple(shape)
        return True

    def get_tensor_shape(self, name):
        return self.shapes[name]

    def set_tensor_address(self, name, address):
        self.addresses[name] = address
        return True

    def execute_async_v3(self, stream):
        self.runs += 1
        return True
