"""The optional dependencies in pyproject.toml: what ``pip install 'vosrt[...]'`` brings for each path."""
from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

tomllib = pytest.importorskip("tomllib")
PROJECT = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())["project"]
EXTRAS = PROJECT["optional-dependencies"]


def requirements(*extras: str) -> dict[str, Requirement]:
    """The distributions ``vosrt[extras]`` installs besides the base ones, ``vosrt[...]`` references resolved."""
    found: dict[str, Requirement] = {}
    for extra in extras:
        for requirement in map(Requirement, EXTRAS[extra]):
            if requirement.name == "vosrt":
                found |= requirements(*requirement.extras)
            else:
                found[requirement.name] = requirement
    return found


ORT_BUILDS = {"onnxruntime", "onnxruntime-gpu"}
CPU_ORT_EXTRAS = {"onnxruntime", "dev"}  # documented (pyproject.toml): not to be combined with [gpu]


@pytest.mark.parametrize("extras", [c for n in (1, 2) for c in itertools.combinations(sorted(EXTRAS), n)
                                    if not ("gpu" in c and CPU_ORT_EXTRAS & set(c))])
def test_no_combination_installs_both_onnxruntime_builds(extras):
    """onnxruntime and onnxruntime-gpu are the same module: installed together, one overwrites the other."""
    assert not ORT_BUILDS <= set(requirements(*extras))


def test_only_the_documented_extras_bring_the_cpu_onnxruntime():
    """So that the only combinations left out above are those of [gpu] with an extra that brings the CPU build."""
    assert {extra for extra in EXTRAS if "onnxruntime" in requirements(extra)} == CPU_ORT_EXTRAS


def test_the_gpu_extra_brings_what_the_tensorrt_path_imports():
    """export-engine imports onnx, the plugins triton, vosrt verify polygraphy and onnxruntime; on a GPU
    machine ONNX Runtime is the GPU build (backend='onnxruntime' on CUDA), never the CPU one as well."""
    gpu = requirements("gpu")
    assert {"tensorrt", "onnx", "triton", "polygraphy", "onnxruntime-gpu"} <= set(gpu)
    assert "onnxruntime" not in gpu
    assert not [name for name in gpu if name.startswith("cupy")]  # nothing in vosrt imports cupy


@pytest.mark.parametrize("version, supported", [("10.8.0.43", False), ("10.9.0.34", True), ("10.16.1.11", True),
                                                ("11.4.0.106", True), ("12.0.0", False)])
def test_tensorrt_range(version, supported):
    """10.9: the ahead-of-time Python plugins; 11.x: the API vosrt calls is unchanged (checked against the
    11.1 bindings); a next major release may drop what 11 deprecates."""
    assert requirements("gpu")["tensorrt"].specifier.contains(Version(version)) == supported


def test_triton_is_the_version_the_kernels_are_compiled_with():
    specifier = requirements("kernels")["triton"].specifier
    assert not specifier.contains(Version("3.5.1")) and specifier.contains(Version("3.6.0"))


@pytest.mark.parametrize("extra, build", [("onnxruntime", "onnxruntime"), ("gpu", "onnxruntime-gpu")])
def test_onnxruntime_hands_outputs_to_torch(extra, build):
    """OrtValue.__dlpack__ (what the ONNX Runtime backend returns outputs through) starts with 1.26."""
    specifier = requirements(extra)[build].specifier
    assert not specifier.contains(Version("1.25.1")) and specifier.contains(Version("1.26.0"))
