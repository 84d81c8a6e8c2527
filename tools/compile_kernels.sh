#!/usr/bin/env bash
# Offline GPU compile check of every Triton kernel configuration (sm_90 and sm_87, no GPU needed)
# with Triton 3.6, the version NVIDIA's GPU images ship, in a venv of its own (created on first use,
# CPU torch beside it; triton does not depend on torch, so no CUDA torch is pulled). Writes the
# table to benchmarks/results/kernel-compile-sm90-sm87.md; exits non-zero if a check fails.
# Arguments go to tools/compile_kernels.py (e.g. --output elsewhere, --jobs N, --match NAME).
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
venv="${VOSRT_TRITON_VENV:-$repo/build/triton-3.6-venv}"
if [ ! -x "$venv/bin/python" ]; then
  "${PYTHON:-python3}" -m venv "$venv"
  "$venv/bin/pip" install -q triton==3.6.0 torch==2.13.0 numpy
fi
exec "$venv/bin/python" "$repo/tools/compile_kernels.py" \
  --output "$repo/benchmarks/results/kernel-compile-sm90-sm87.md" "$@"
