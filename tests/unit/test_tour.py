"""The README's tour on a machine without a GPU or TensorRT: each command works or answers with
one line that says why and what to do."""
from __future__ import annotations

from helpers import SYNTHETIC
from vosrt.cli import export_engine_main, main


def test_segment_with_a_missing_export_dir_says_it_is_missing(tmp_path, capsys):
    """The tour's TensorRT line on a machine where export-engine made no engines."""
    missing = tmp_path / "cutie-small-fp16" / "tensorrt"
    assert main(["segment", "cutie-small", "--export-dir", str(missing), "--input", str(SYNTHETIC / "images"),
                 "--masks", str(SYNTHETIC / "masks" / "00000.png"), "--overlay", str(tmp_path / "clip.mp4")]) == 2
    err = capsys.readouterr().err
    assert err == (f"vosrt segment: error: export directory {missing} does not exist: export-engine makes it "
                   "(TensorRT engines only on a machine with TensorRT and an NVIDIA GPU; see vosrt doctor)\n")
    assert not (tmp_path / "clip.mp4").exists()


def test_export_engine_without_tensorrt_keeps_the_graphs_and_exits_0(monkeypatch, tmp_path, capsys):
    """The graphs are what a workstation without TensorRT is for: a note and the next steps, status 0."""
    from vosrt.cli import export
    from vosrt.export import tensorrt

    graphs = tmp_path / "cutie-small-fp16"
    graphs.mkdir()

    def no_tensorrt(onnx_dir, output=None, **_):
        raise tensorrt.BuildEnvironmentMissing(f"building TensorRT engines needs an NVIDIA GPU, which this machine "
                                               f"lacks. ... or\n  trtexec --onnx={onnx_dir}/image_encoder.onnx")

    monkeypatch.setattr(export, "_export_graphs", lambda args: graphs)
    monkeypatch.setattr(tensorrt, "build_engines", no_tensorrt)
    assert export_engine_main(["cutie-small", "--fp16", "--output", str(graphs)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("note: no engines built: building TensorRT engines needs an NVIDIA GPU")
    assert f"trtexec --onnx={graphs}/image_encoder.onnx" in out
    assert f"export-engine --from-onnx {graphs}" in out  # the next steps


def test_an_opencv_that_cannot_load_is_one_line_with_the_fix(monkeypatch, tmp_path, capsys):
    """opencv-python (one cv2 for vosrt and vos-benchmark) needs libGL, which minimal Linux images lack."""
    import sys

    monkeypatch.setitem(sys.modules, "cv2", None)  # import cv2 raises ImportError, as without libGL
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"\0")
    assert main(["segment", "cutie-small", "--input", str(video), "--masks", str(SYNTHETIC / "masks" / "00000.png"),
                 "--overlay", str(tmp_path / "out.mp4")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vosrt segment: error: OpenCV (cv2) does not load: ") and err.count("\n") == 1
    assert "apt-get install libgl1 libglib2.0-0" in err
