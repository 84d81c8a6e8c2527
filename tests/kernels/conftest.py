"""Imports :mod:`kernel_testing` first: it sets TRITON_INTERPRET=1 (no GPU) before triton is imported."""
import kernel_testing  # noqa: F401
