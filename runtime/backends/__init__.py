"""One backend per runtime (eager torch, ONNX Runtime, TensorRT, AOTInductor packages) behind :class:`~.base.Backend`,
and CUDA-graph replay as a wrapper around any CUDA backend. No torch import here."""

BACKENDS = ("torch", "onnxruntime", "tensorrt", "aoti")
