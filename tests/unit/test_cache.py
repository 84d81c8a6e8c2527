"""``vosrt cache``: where vosrt keeps checkpoints and exports, how much space they take, clearing them."""
from __future__ import annotations

import pytest

from vosrt import cache
from vosrt.cli import main


@pytest.fixture
def filled(tmp_path, monkeypatch):
    """A cache with a 3 MiB checkpoint and two exports (2 MiB and 1 KiB over two files)."""
    root = tmp_path / "cache"
    monkeypatch.setenv("VOSRT_CACHE", str(root))
    (root / "onnx" / "cutie-small-0123-fp32").mkdir(parents=True)
    (root / "onnx" / "jointformer-4567-fp16").mkdir()
    (root / "cutie-small-mega.pth").write_bytes(b"\0" * 3 * 2**20)
    (root / "onnx" / "cutie-small-0123-fp32" / "image_encoder.onnx").write_bytes(b"\0" * 2 * 2**20)
    (root / "onnx" / "jointformer-4567-fp16" / "manifest.json").write_bytes(b"\0" * 512)
    (root / "onnx" / "jointformer-4567-fp16" / "joint.onnx").write_bytes(b"\0" * 512)
    return root


def test_cache_lists_each_item_with_its_size(filled, capsys):
    assert main(["cache"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"vosrt cache: {filled} ($VOSRT_CACHE, default ~/.cache/vosrt)"
    assert lines[1].split() == ["3.0", "MB", "checkpoint", "cutie-small-mega.pth"]
    assert lines[2].split() == ["2.0", "MB", "export", "cutie-small-0123-fp32"]
    assert lines[3].split() == ["1.0", "kB", "export", "jointformer-4567-fp16"]
    assert lines[4].split()[:4] == ["5.0", "MB", "in", "all;"]


def test_cache_clears_exports_then_everything(filled, capsys):
    assert main(["cache", "--clear", "exports"]) == 0
    assert capsys.readouterr().out == f"removed 2 item(s), 2.0 MB, from {filled}\n"
    assert [e.kind for e in cache.entries()] == ["checkpoints"]
    assert main(["cache", "--clear"]) == 0
    assert cache.entries() == []
    main(["cache"])
    assert capsys.readouterr().out.endswith("  empty\n")


def test_an_empty_or_missing_cache_is_listed_as_empty(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("VOSRT_CACHE", str(tmp_path / "never-made"))
    assert main(["cache"]) == 0 and main(["cache", "--clear"]) == 0
    out = capsys.readouterr().out
    assert "  empty" in out and "removed 0 item(s), 0 B" in out


def test_the_first_export_into_the_cache_says_where_and_how_much(filled):
    note = cache.export_note(filled / "onnx" / "cutie-small-0123-fp32")
    assert note == (f"vosrt: cached the ONNX export in {filled / 'onnx' / 'cutie-small-0123-fp32'} (2.0 MB; the cache "
                    "holds 5.0 MB: vosrt cache lists it, vosrt cache --clear empties it)")


def test_an_export_made_for_a_session_prints_the_note_once(filled, monkeypatch, capsys):
    """``backend="onnxruntime"`` without ``export_dir`` exports into the cache once and says so (the
    export itself stubbed: a manifest of 4 KiB)."""
    from vosrt import api
    from vosrt.export import onnx
    from vosrt.runtime.registry import model_spec

    def fake_export(network, model, output, **_):
        output.mkdir(parents=True)
        (output / "manifest.json").write_bytes(b"\0" * 4096)
        return output

    monkeypatch.setattr(onnx, "export_onnx", fake_export)
    monkeypatch.setattr(api, "build_network", lambda *args: None)
    # whether a cached export fits its checkpoint is tested with real exports (tests/bad_inputs.py, 27.4)
    monkeypatch.setattr(api, "_cached_export_fits", lambda export_dir, checkpoint: (export_dir / "manifest.json").is_file())
    spec = model_spec("cutie-small")
    weights = filled / "cutie-small-mega.pth"
    first = api._cached_export(spec, weights, spec.config_type(), fp16=False)
    err = capsys.readouterr().err
    assert err == f"{cache.export_note(first)}\n" and "(4.0 kB; the cache holds 5.0 MB" in err
    assert api._cached_export(spec, weights, spec.config_type(), fp16=False) == first
    assert capsys.readouterr().err == ""
