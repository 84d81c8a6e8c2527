"""``compile=True`` (torch.compile of each stage) and AOTInductor packages (``backend="aoti"``) on
tiny networks: compilation counts over a clip, the compile bound, the inductor cache folder, and
the checks that refuse a package directory. Full-size parity: tests/parity/test_compiled.py."""
from __future__ import annotations

import json
import os
from dataclasses import replace

import numpy as np
import pytest
import torch

import vosrt
from vosrt.models.cutie.config import VARIANTS
from vosrt.models.cutie.model import Cutie
from vosrt.runtime import artifacts
from vosrt.runtime.backends.compiled import CompiledTorchBackend, dense, use_vosrt_inductor_cache
from vosrt.runtime.backends.torch import TorchBackend
from vosrt.runtime.registry import model_spec

SIZE = (64, 96)  # 4 x 6 = 24 tokens a frame
OPTIONS = dict(mem_every=2, max_mem_frames=3, top_k=8)


def tiny_cutie() -> Cutie:
    """cutie-small with one object-transformer block (the stages' graphs, smaller)."""
    torch.manual_seed(0)
    return Cutie(replace(VARIANTS["small"], num_blocks=1)).eval()


def sessions(network, **backend_options):
    spec = model_spec("cutie-small")
    config = spec.config_type.from_options("cutie-small", OPTIONS)
    compiled = CompiledTorchBackend(spec.family, network, config.export_settings(), "cpu", **backend_options)
    eager = TorchBackend(spec.family, network, config.export_settings(), "cpu")
    return spec.family.new_session(compiled, config), spec.family.new_session(eager, config)


def box_mask(label: int, top: int, left: int) -> np.ndarray:
    mask = np.zeros(SIZE, np.int64)
    mask[top:top + 16, left:left + 20] = label
    return mask


# ~30 s with a warm inductor cache, minutes cold on 2 cores: run with VOSRT_FULL_COMPILES=1.
@pytest.mark.skipif(os.environ.get("VOSRT_FULL_COMPILES") != "1", reason="long compile; set VOSRT_FULL_COMPILES=1")
def test_a_clip_with_objects_joining_and_leaving_stops_compiling_once_the_memory_has_filled(tmp_path, monkeypatch):
    monkeypatch.setenv("VOSRT_CACHE", str(tmp_path))
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    compiled, eager = sessions(tiny_cutie())
    rng = np.random.default_rng(0)
    joins = {0: (box_mask(1, 2, 2) + box_mask(2, 28, 40), [1, 2]), 5: (box_mask(3, 20, 10), [3]),
             25: (box_mask(4, 5, 40), [4])}
    counts = []
    for i in range(40):
        if i == 20:
            compiled.remove_objects([1])
            eager.remove_objects([1])
        image = rng.integers(0, 256, (*SIZE, 3), dtype=np.uint8)
        mask, objects = joins.get(i, (None, None))
        got = compiled.step(image, mask, objects=objects, end=i == 39)
        want = eager.step(image, mask, objects=objects, end=i == 39)
        assert np.abs(got - want).max() < 1e-4, f"frame {i}"
        counts.append(compiled.backend.total_compilations)
    print("compilations after each frame:", counts, dict(compiled.backend.compilations))
    # frame 10: objects 1-2 and object 3 (joined on frame 5) have each filled their memory once
    assert counts[-1] == counts[10], f"compiled again after the memory filled: {counts}"
    assert compiled.backend.cache_dir == str(tmp_path / "inductor")
    assert any((tmp_path / "inductor").iterdir())


def test_compilations_past_the_bound_warn(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    spec = model_spec("cutie-small")
    config = spec.config_type.from_options("cutie-small", OPTIONS)
    backend = CompiledTorchBackend(spec.family, tiny_cutie(), config.export_settings(), "cpu", max_compilations=0)
    f8, f4 = torch.rand(1, 128, 6, 8), torch.rand(1, 64, 12, 16)
    with pytest.warns(RuntimeWarning, match="compiled 1 times, more than max_compilations=0"):
        backend.run("mask_decoder", f8=f8, f4=f4, readout=torch.rand(1, 2, 256, 3, 4), sensory=torch.rand(1, 2, 256, 3, 4))
    assert backend.compilations == {"mask_decoder": 1}
    assert backend.compile_seconds["mask_decoder"] > 0


def test_inductor_cache_goes_under_the_vosrt_cache_unless_set(tmp_path, monkeypatch):
    monkeypatch.setenv("VOSRT_CACHE", str(tmp_path))
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    assert use_vosrt_inductor_cache() == str(tmp_path / "inductor")
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "/elsewhere")
    assert use_vosrt_inductor_cache() == "/elsewhere"


def test_dense_copies_views_of_a_filling_memory_and_rows_with_an_offset():
    buffer = torch.rand(1, 4, 10)
    assert dense(buffer) is buffer
    for view in (buffer[..., :6], torch.rand(3, 4)[1:], torch.rand(4, 10)[None, :, :6]):
        copy = dense(view)
        assert copy.storage_offset() == 0 and copy.stride() == torch.empty(copy.shape).stride()
        assert torch.equal(copy, view)


@pytest.mark.parametrize("options, message", [
    (dict(backend="onnxruntime", compile=True), "compile=True compiles the torch backend"),
    (dict(compile=True, cuda_graph=True), "needs an NVIDIA GPU"),
    (dict(backend="aoti", cuda_graph=True, device="cuda"), "cuda_graph=True applies to backend='torch' or 'tensorrt'"),
    (dict(backend="aoti"), "backend='aoti' needs export_dir"),
])
def test_compile_and_aoti_options_are_refused_where_they_do_not_apply(options, message):
    with pytest.raises(ValueError, match=message):
        vosrt.load("cutie-small", **options)


# -- AOTInductor package directories: refused before anything is loaded -------------------------

@pytest.fixture
def package_dir(tmp_path):
    """A directory shaped as export-engine --format aoti writes it for cutie-small on this CPU, with
    placeholder package files (the checks run before a package is loaded)."""
    spec = model_spec("cutie-small")
    config = spec.config_type()
    directory = tmp_path / "cutie-small-aoti"
    directory.mkdir()
    packages = {}
    for name in spec.family.stages:
        (directory / f"{name}.pt2").write_bytes(name.encode() * 100)
        packages[name] = artifacts.describe_file(directory / f"{name}.pt2", compile_seconds=1.0)
    artifacts.write_manifest(directory, {
        "format": artifacts.AOTI_FORMAT, "model": "cutie-small", "vosrt_version": artifacts.vosrt_version(),
        "torch_version": torch.__version__, "device": "cpu", "device_name": "any", "precision": "fp32",
        "resolution": [480, 864], "settings": config.export_settings(), "max_mem_frames": config.max_mem_frames,
        "architecture": spec.family.architecture(Cutie(VARIANTS["small"])), "checkpoint": None,
        "packages": packages, "custom_ops": [], "constants": {}})
    return directory


def edit_manifest(directory, rewrite: bool = True, **fields):
    """Change ``fields`` of the manifest; ``rewrite``: as vosrt writes it (a consistent digest), else by hand."""
    manifest = json.loads((directory / artifacts.MANIFEST).read_text()) | fields
    if rewrite:
        artifacts.write_manifest(directory, manifest)
    else:
        (directory / artifacts.MANIFEST).write_text(json.dumps(manifest))


@pytest.mark.parametrize("damage, message", [
    (lambda d: edit_manifest(d, device="cuda"), "built with device 'cuda', here it is 'cpu'"),
    (lambda d: edit_manifest(d, vosrt_version="0.0.1"), "built with vosrt version '0.0.1'"),
    (lambda d: edit_manifest(d, torch_version="2.0.0"), "built with torch version '2.0.0'"),
    (lambda d: edit_manifest(d, rewrite=False, resolution=[240, 320]), "was edited after the export"),
    (lambda d: (d / "mask_decoder.pt2").write_bytes((d / "mask_decoder.pt2").read_bytes()[:50]), "sha256 mismatch"),
    (lambda d: (d / "memory_readout.pt2").unlink(), "which is not in"),
])
def test_damaged_or_foreign_packages_are_refused_in_one_line(package_dir, damage, message):
    damage(package_dir)
    with pytest.raises(ValueError, match=message) as caught:
        vosrt.load("cutie-small", backend="aoti", export_dir=package_dir)
    assert "\n" not in str(caught.value)


def test_packages_of_another_model_are_refused(package_dir):
    with pytest.raises(ValueError, match="holds cutie-small, not cutie-base"):
        vosrt.load("cutie-base", export_dir=package_dir)  # the directory picks backend='aoti'


def test_an_export_directory_picks_the_aoti_backend(package_dir):
    from vosrt.api import backend_for

    assert backend_for(package_dir) == "aoti"


# -- a real package, on a tiny network ----------------------------------------------------------

FRESH_PROCESS = """
import sys, numpy as np, vosrt
from test_compiled import OPTIONS, clip
session = vosrt.load("cutie-small", export_dir=sys.argv[1], **OPTIONS)
np.savez(sys.argv[2], *[session.step(image, mask, objects=objects) for image, mask, objects in clip()])
"""


def clip(frames: int = 6, size=(64, 96)):
    """Random frames; objects 1 and 2 from frame 0, object 3 joining on frame 3."""
    rng = np.random.default_rng(0)
    first = np.zeros(size, np.int64)
    first[2:18, 2:22], first[40:56, 60:80] = 1, 2
    later = np.zeros(size, np.int64)
    later[20:36, 30:50] = 3
    masks = {0: (first, [1, 2]), 3: (later, [3])}
    return [(rng.integers(0, 256, (*size, 3), dtype=np.uint8), *masks.get(i, (None, None))) for i in range(frames)]


@pytest.mark.slow
def test_a_package_runs_in_a_fresh_process_as_eager_torch_does(tmp_path, monkeypatch):
    import subprocess
    import sys
    from pathlib import Path

    from vosrt.export.aoti import export_aoti

    monkeypatch.setenv("VOSRT_CACHE", str(tmp_path))
    spec = model_spec("cutie-small")
    config = spec.config_type.from_options("cutie-small", OPTIONS)
    network = tiny_cutie()
    export_aoti(network, "cutie-small", tmp_path / "packages", config=config, resolution=(64, 96))
    tests = Path(__file__).parent
    subprocess.run([sys.executable, "-c", FRESH_PROCESS, str(tmp_path / "packages"), str(tmp_path / "probs.npz")],
                   check=True, cwd=tests, env={**os.environ, "PYTHONPATH": f"{tests}:{tests.parent}"})
    eager = spec.family.new_session(TorchBackend(spec.family, network, config.export_settings(), "cpu"), config)
    got = np.load(tmp_path / "probs.npz")
    for i, (image, mask, objects) in enumerate(clip()):
        assert np.abs(got[f"arr_{i}"] - eager.step(image, mask, objects=objects)).max() < 1e-4, f"frame {i}"

    package = tmp_path / "packages" / "mask_decoder.pt2"
    package.write_bytes(package.read_bytes()[:1000])
    with pytest.raises(ValueError, match="torch cannot load .*export again") as caught:
        vosrt.load("cutie-small", export_dir=tmp_path / "packages", check_files=False, **OPTIONS)
    assert "\n" not in str(caught.value)
