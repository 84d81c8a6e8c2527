"""Exporters: ONNX graphs of a model's stages, fp16 conversion, TensorRT engines, verification."""
