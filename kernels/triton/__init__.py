"""Triton kernels behind the dispatchers of :mod:`vosrt.kernels`.

Every module here imports triton at module level and defines its ``@triton.jit`` kernels at
module level. Only the dispatchers (:func:`vosrt.kernels.readout.topk_readout` and friends),
:mod:`vosrt.kernels.trt_plugin`, the benchmarks, the tests and ``tools/compile_kernels.py``
import them, and only inside functions, so that ``import vosrt.kernels`` never imports triton.

Triton picks between compiling and interpreting when it is first imported: to run these
kernels in its interpreter on CPU tensors, set ``TRITON_INTERPRET=1`` before that.

* :mod:`.select`: packed (score, slot) keys, bitonic networks and the running top-K that the
  kernels feed one tile of scores at a time.
* :mod:`.readout`: Cutie's top-K readout (and memory usage).
* :mod:`.joint_attention`: JointFormer's top-K joint attention.
* :mod:`.variants`: every kernel configuration the code launches, for the offline compile check.
"""

# The kernels' largest top_k, read by the dispatchers before they import a kernel (top-K buckets).
READOUT_MAX_TOP_K = 64  # 16, 32, 64
JOINT_ATTENTION_MAX_TOP_K = 256  # 32, 64, 128, 256
