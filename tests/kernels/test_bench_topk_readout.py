"""benchmarks/bench_topk_readout.py without a GPU: it measures nothing, says so in one line, exits 0."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_topk_readout.py"


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present: the benchmark would run")
def test_benchmark_without_a_gpu_says_so_and_exits_cleanly():
    done = subprocess.run([sys.executable, str(BENCH), "--budget-s", "1"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines() == ["bench_topk_readout: no CUDA GPU, nothing measured "
                                                "(the kernels' timings need one)"]
    sys.path.insert(0, str(BENCH.parent))
    try:
        import bench_topk_readout
    finally:
        sys.path.remove(str(BENCH.parent))
    assert bench_topk_readout.run(1.0) == {"skipped": bench_topk_readout.NO_GPU}
