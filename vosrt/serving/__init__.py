"""Serving on NVIDIA Triton Inference Server, each stream's memory on the server (docs/serving.md).

- :mod:`.repository`: ``vosrt export-triton``, the model repository (config.pbtxt, model.py).
- :mod:`.streams`: what the server's model does with a call's requests (one ``batch.step``).
- :mod:`.triton_model`: the Python backend's ``TritonPythonModel`` around it.
- :mod:`.client`: ``vosrt.connect``, the ``load_batch`` interface over gRPC.
- :mod:`.local_server`: start a ``tritonserver`` on this machine (tests, local trials).
"""
