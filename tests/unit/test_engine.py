"""TensorRT engines: profiles, manifest, compatibility check, trtexec lines and the export CLI,
for Cutie's and JointFormer's graphs.

Everything here runs without TensorRT or a GPU. The build flow (staging, manifest, timing
cache reuse) runs against a small stand-in for the ``tensorrt`` module that records the
builder calls and returns placeholder bytes; tests that need real engines are at the end
and skip without TensorRT and a GPU.
"""
from __future__ import annotations

import importlib.util
import json
import shutil
import sys
import types

import pytest
import torch

import vosrt
from fakes.tensorrt import ENVIRONMENT, FakeEngine, FakeTensorRT
from vosrt.cli import export_engine_main, main
from vosrt.export import profile, tensorrt
from vosrt.export.trtexec import trtexec_commands
from vosrt.runtime import artifacts
from vosrt.runtime.artifacts import ENGINE_FORMAT, read_manifest
from vosrt.runtime.backends.tensorrt import Engine, TensorRTBackend
from vosrt.runtime.cutie.family import STAGES as SPECS
from vosrt.runtime.jointformer.family import STAGES as JOINTFORMER_SPECS

HAVE_TENSORRT = importlib.util.find_spec("tensorrt") is not None and torch.cuda.is_available()


@pytest.fixture(scope="module")
def onnx_dir(cutie_export):
    """fp32 ONNX export of seed-1 cutie-small (top_k 30, 3 memory frames)."""
    return cutie_export("cutie-small")


# Per model: its graphs, the graph with the memory input, that input, and its max shape in a
# profile of 2 objects at 240x320 with the export's memory (3 frames x 15 x 20 tokens: Cutie's
# 3 memory frames; JointFormer's max_mem_frames 2 + the last-frame slot).
MODELS = {
    "cutie-small": (SPECS, "memory_readout", "memory_key", [1, 64, 3 * 15 * 20]),
    "jointformer": (JOINTFORMER_SPECS, "joint_propagation", "ref_keys", [11, 2, 12, 3 * 15 * 20, 64]),
}


@pytest.fixture(params=list(MODELS))
def export(request, onnx_dir, jointformer_export):
    """(model, its fp32 ONNX export): cutie-small (max_mem_frames 3) and jointformer (max_mem_frames 2)."""
    return request.param, onnx_dir if request.param == "cutie-small" else jointformer_export("fp32")


def test_profile_shapes_follow_the_manifest(onnx_dir):
    shapes = profile.EngineProfile(max_objects=3, resolution=(480, 854)).input_shapes(read_manifest(onnx_dir))
    assert set(shapes) == set(SPECS)
    for graph, spec in SPECS.items():
        assert list(shapes[graph]) == list(spec.input_names)
    assert shapes["image_encoder"]["image"] == {c: [1, 3, 480, 864] for c in ("min", "opt", "max")}
    value = shapes["memory_readout"]["memory_value"]  # [1, K, C, N], N = frames x 30 x 54
    assert value == {"min": [1, 1, 256, 1620], "opt": [1, 3, 256, 3 * 1620], "max": [1, 3, 256, 3 * 1620]}
    assert shapes["memory_readout"]["last_mask"]["max"] == [1, 3, 480, 864]
    assert shapes["mask_decoder"]["f4"]["min"] == [1, 64, 120, 216]
    assert shapes["mask_encoder"]["masks"]["min"] == [1, 1, 480, 864]


def test_jointformer_profile_counts_the_last_frame_slot(jointformer_export):
    """The reference cache of max_mem_frames 4 with include_last: 5 slots of 30 x 54 tokens at 480x854."""
    onnx = jointformer_export("fp32")
    shapes = profile.EngineProfile(3, (480, 854), max_mem_frames=4).input_shapes(read_manifest(onnx))
    assert {g: list(s) for g, s in shapes.items()} == {n: list(s.input_names) for n, s in JOINTFORMER_SPECS.items()}
    tokens = 30 * 54
    assert shapes["joint_propagation"]["ref_keys"] == {
        "min": [11, 1, 12, tokens, 64], "opt": [11, 3, 12, 5 * tokens, 64], "max": [11, 3, 12, 5 * tokens, 64]}
    assert shapes["joint_propagation"]["ref_valid"]["max"] == [3, 5 * tokens]
    assert shapes["joint_propagation"]["tokens"]["min"] == [1, tokens, 768]
    assert shapes["reference_encoder"]["masks"] == {"min": [1, 1, 480, 864], "opt": [1, 3, 480, 864],
                                                     "max": [1, 3, 480, 864]}
    assert shapes["decoder"]["f8"]["max"] == [1, 384, 60, 108] and shapes["decoder"]["f4"]["max"] == [1, 256, 120, 216]
    assert shapes["decoder"]["summary"]["opt"] == [3, 1, 768]


def test_max_streams_sizes_the_stream_axes(onnx_dir, jointformer_export):
    """--max-streams 4: up to 4 frames (B) and 4 x max_objects object rows (BK) per call; one of each at the min."""
    cutie = profile.EngineProfile(2, (240, 320), max_streams=4).input_shapes(read_manifest(onnx_dir))
    assert cutie["image_encoder"]["image"] == {"min": [1, 3, 240, 320], "opt": [4, 3, 240, 320],
                                               "max": [4, 3, 240, 320]}
    assert cutie["memory_readout"]["memory_value"]["max"] == [4, 2, 256, 3 * 15 * 20]
    assert cutie["mask_decoder"]["sensory"]["min"] == [1, 1, 256, 15, 20]
    jointformer = profile.EngineProfile(2, (240, 320), max_streams=4).input_shapes(
        read_manifest(jointformer_export("fp32")))
    assert jointformer["joint_propagation"]["ref_keys"]["max"] == [11, 8, 12, 3 * 15 * 20, 64]
    assert jointformer["joint_propagation"]["tokens"]["max"] == [8, 15 * 20, 768]
    assert jointformer["query_encoder"]["image"]["max"] == [4, 3, 240, 320]
    assert jointformer["decoder"]["f16"]["max"] == [8, 15 * 20, 768] and jointformer["decoder"]["f8"]["max"][0] == 4
    options = profile.BuildOptions(profile.EngineProfile(2, (240, 320), max_streams=4))
    line = trtexec_commands(onnx_dir, read_manifest(onnx_dir), options)[1 + list(SPECS).index("image_encoder")]
    assert "--minShapes=image:1x3x240x320" in line and "--maxShapes=image:4x3x240x320" in line


@pytest.mark.parametrize("make, message", [
    (lambda: profile.EngineProfile(max_objects=0), "--max-objects must be >= 1"),
    (lambda: profile.EngineProfile(max_streams=0), "--max-streams must be >= 1"),
    (lambda: profile.EngineProfile(resolution=(8, 100)), "--resolution must be HxW"),
    (lambda: profile.BuildOptions(dla_core=-1), "--dla-core must be >= 0"),
    (lambda: profile.BuildOptions(workspace_mib=0), "--workspace must be >= 1"),
])
def test_build_options_are_validated(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_workspace_is_smaller_on_jetson_and_dla(monkeypatch):
    monkeypatch.setattr(profile, "is_jetson", lambda: False)
    assert profile.BuildOptions().workspace == profile.WORKSPACE_MIB
    assert profile.BuildOptions(dla_core=0).workspace == profile.SMALL_WORKSPACE_MIB
    assert profile.BuildOptions(workspace_mib=512, dla_core=0).workspace == 512
    monkeypatch.setattr(profile, "is_jetson", lambda: True)
    assert profile.BuildOptions().workspace == profile.SMALL_WORKSPACE_MIB


def test_trtexec_commands_match_the_build(onnx_dir):
    manifest = read_manifest(onnx_dir)
    options = profile.BuildOptions(profile.EngineProfile(2, (240, 320)), workspace_mib=2048)
    mkdir, *lines = trtexec_commands(onnx_dir, manifest, options)
    assert mkdir == f"mkdir -p {onnx_dir / 'tensorrt'}"
    assert len(lines) == len(SPECS)
    image_line = lines[list(SPECS).index("image_encoder")]
    assert f"--onnx={onnx_dir / 'image_encoder.onnx'}" in image_line
    assert f"--saveEngine={onnx_dir / 'tensorrt' / 'image_encoder.engine'}" in image_line
    assert "--minShapes=image:1x3x240x320" in image_line and "--stronglyTyped --noTF32" in image_line
    assert "--memPoolSize=workspace:2048M" in image_line and "--timingCacheFile=" in image_line
    decoder_line = lines[list(SPECS).index("mask_decoder")]
    assert "--maxShapes=f8:1x128x30x40,f4:1x64x60x80,readout:1x2x256x15x20,sensory:1x2x256x15x20" in decoder_line
    dla = trtexec_commands(onnx_dir, manifest, profile.BuildOptions(dla_core=1))[1]
    assert "--useDLACore=1 --allowGPUFallback --fp16" in dla and "--stronglyTyped" not in dla
    assert "--noTF32" not in trtexec_commands(onnx_dir, manifest, profile.BuildOptions(tf32=True))[1]


@pytest.mark.parametrize("field, value, message", [
    ("tensorrt_version", "10.3.0", r"TensorRT 10.9.0.34 \(here: 10.3.0\)"),
    ("gpu_name", "Orin", r"GPU NVIDIA H100 80GB HBM3 \(here: Orin\)"),
    ("compute_capability", "8.7", r"compute capability 9.0 \(here: 8.7\)"),
])
def test_engines_from_another_environment_are_refused(tmp_path, field, value, message):
    manifest = {"environment": ENVIRONMENT, "onnx_directory": ".."}
    artifacts.check_compatible(manifest, artifacts.TensorRTEnvironment(**ENVIRONMENT), tmp_path)  # same: fine
    here = artifacts.TensorRTEnvironment(**{**ENVIRONMENT, field: value})
    with pytest.raises(RuntimeError, match=message) as err:
        artifacts.check_compatible(manifest, here, tmp_path / "tensorrt")
    assert f"rebuild them here with export-engine --from-onnx {tmp_path / 'tensorrt' / '..'}" in str(err.value)


@pytest.fixture
def fake_gpu(monkeypatch):
    """``install(fake)``: ``fake`` as the tensorrt module, and torch reporting an H100."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: ENVIRONMENT["gpu_name"])
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    monkeypatch.setattr(profile, "is_jetson", lambda: False)

    def install(fake: FakeTensorRT) -> FakeTensorRT:
        monkeypatch.setitem(sys.modules, "tensorrt", fake)
        return fake

    return install


def test_build_writes_engines_manifest_and_reuses_the_timing_cache(export, tmp_path, fake_gpu, capsys):
    model, onnx = export
    specs, memory_graph, memory_input, memory_max = MODELS[model]
    trt = fake_gpu(FakeTensorRT())
    options = profile.BuildOptions(profile.EngineProfile(2, (240, 320)))
    lines = []
    out = tensorrt.build_engines(onnx, tmp_path / "engines", options=options, progress=lines.append)
    extra = ["initial_summary.npy"] if model == "jointformer" else []  # the engine directory runs on its own
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [f"{g}.engine" for g in specs] + ["manifest.json", "timing.cache", *extra])
    last = list(specs)[-1]
    assert (out / f"{last}.engine").read_bytes() == f"engine of {last}.onnx".encode()
    assert lines[0] == f"building {list(specs)[0]} engine (fp32, GPU)" and len(lines) == len(specs)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["format"] == ENGINE_FORMAT and manifest["model"] == model
    assert manifest["environment"] == ENVIRONMENT
    assert manifest["profile"] == {"max_objects": 2, "resolution": [240, 320],
                                   "max_mem_frames": read_manifest(onnx)["max_mem_frames"], "max_streams": 1}
    assert manifest["input_shapes"][memory_graph][memory_input]["max"] == memory_max
    assert manifest["strongly_typed"] and manifest["dla_core"] is None
    assert manifest["settings"] == read_manifest(onnx)["settings"] and manifest["settings"]["top_k"] == 30
    assert (out / manifest["onnx_directory"]).resolve() == onnx.resolve()
    assert read_manifest(out, ENGINE_FORMAT) == manifest
    assert main(["inspect", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "built with TensorRT 10.9.0.34 for NVIDIA H100 80GB HBM3 (compute capability 9.0)" in printed
    assert ("settings top_k 30  topk_range all_frames" in printed) == (model == "jointformer")
    assert ("create_network", 1 << 1) in trt.calls  # STRONGLY_TYPED
    assert trt.calls.count(("clear_flag", "tf32")) == len(specs) and not manifest["tf32"]  # fp32 is fp32
    assert ("set_memory_pool_limit", "workspace", profile.WORKSPACE_MIB << 20) in trt.calls
    # Each graph's build starts from the cache the previous one left; a rebuild starts from the saved file.
    caches = [c[1] for c in trt.calls if c[0] == "create_timing_cache"]
    assert caches == [b"+" * i for i in range(len(specs))]
    assert (out / "timing.cache").read_bytes() == b"+" * len(specs)
    trt.calls.clear()
    tensorrt.build_engines(onnx, out, options=options, progress=lambda _: None)
    assert [c[1] for c in trt.calls if c[0] == "create_timing_cache"][0] == b"+" * len(specs)


@pytest.mark.parametrize("model, memory_graph, valid_input, valid_max", [
    ("cutie-small", "memory_readout", "memory_valid", [1, 5 * 15 * 20]),
    ("jointformer", "joint_propagation", "ref_valid", [2, 6 * 15 * 20]),  # 5 frames + the last-frame slot
])
def test_export_engine_from_onnx_builds_with_the_cli_profile(model, memory_graph, valid_input, valid_max, onnx_dir,
                                                             jointformer_export, tmp_path, fake_gpu, capsys):
    fake_gpu(FakeTensorRT())
    onnx = onnx_dir if model == "cutie-small" else jointformer_export("fp32")
    out = tmp_path / "engines"
    assert export_engine_main(["--from-onnx", str(onnx), "--output", str(out), "--max-objects", "2",
                               "--resolution", "240x320", "--max-mem-frames", "5", "--workspace", "512"]) == 0
    printed = capsys.readouterr().out
    assert f"building {memory_graph} engine (fp32, GPU)" in printed
    assert f"wrote TensorRT engines and manifest.json to {out}" in printed
    manifest = read_manifest(out, ENGINE_FORMAT)
    assert manifest["profile"] == {"max_objects": 2, "resolution": [240, 320], "max_mem_frames": 5, "max_streams": 1}
    assert manifest["input_shapes"][memory_graph][valid_input]["max"] == valid_max
    assert manifest["max_mem_frames"] == 5 and manifest["workspace_mib"] == 512


def test_tf32_is_off_unless_asked(onnx_dir, tmp_path, fake_gpu):
    """TensorRT's TF32 flag is on by default: the builder clears it for every engine, fp32 or the
    fp32 islands of fp16 ones, unless --tf32 (this stand-in records the builder calls; never run on a GPU)."""
    for argv, cleared in (([], True), (["--tf32"], False)):
        trt = fake_gpu(FakeTensorRT())
        out = tmp_path / f"engines{len(argv)}"
        assert export_engine_main(["--from-onnx", str(onnx_dir), "--output", str(out), "--max-objects", "2",
                                   "--resolution", "240x320", *argv]) == 0
        assert (("clear_flag", "tf32") in trt.calls) == cleared
        assert read_manifest(out, ENGINE_FORMAT)["tf32"] == (not cleared)


def test_failed_build_leaves_the_previous_engines(export, tmp_path, fake_gpu):
    model, onnx = export
    memory_graph = MODELS[model][1]
    fake_gpu(FakeTensorRT())
    out = tensorrt.build_engines(onnx, tmp_path / "engines", progress=lambda _: None)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    fake_gpu(FakeTensorRT(fail_on=memory_graph))
    with pytest.raises(RuntimeError, match=f"failed to build an engine from .*{memory_graph}.onnx"):
        tensorrt.build_engines(onnx, out, progress=lambda _: None)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["engines"]  # no staging directory left


def test_dla_needs_an_fp16_export(onnx_dir, tmp_path, fake_gpu):
    fake_gpu(FakeTensorRT())
    with pytest.raises(ValueError, match="DLA runs fp16 only"):
        tensorrt.build_engines(onnx_dir, tmp_path / "e", options=profile.BuildOptions(dla_core=0))


def _as_fp16_export(onnx_dir, tmp_path, monkeypatch):
    """A copy of an export whose manifest says fp16 (what DLA builds ask for; the stand-in builder
    parses nothing). The export check, which refuses such a manifest over fp32 graphs (the case
    table's 27.4 cases), is turned off for it."""
    monkeypatch.setattr(tensorrt, "check_graphs", lambda directory, manifest: None)
    copy = shutil.copytree(onnx_dir, tmp_path / "fp16-export")
    manifest = json.loads((copy / "manifest.json").read_text())
    (copy / "manifest.json").write_text(json.dumps({**manifest, "precision": "fp16"}))
    return copy


def test_dla_builds_have_static_profiles(onnx_dir, tmp_path, fake_gpu, monkeypatch):
    """DLA takes no dynamic dimensions: with --dla-core every input's profile is min = opt = max, the
    dynamic build's max (max_objects objects, full memory), in the builder, the manifest and trtexec."""
    export = _as_fp16_export(onnx_dir, tmp_path, monkeypatch)
    trt = fake_gpu(FakeTensorRT())
    trt.Builder.num_DLA_cores = 2
    options = profile.BuildOptions(profile.EngineProfile(2, (240, 320)), dla_core=1)
    out = tensorrt.build_engines(export, tmp_path / "dla", options=options, progress=lambda _: None)
    corners = [call[2:] for call in trt.calls if call[0] == "set_shape"]
    assert len(corners) == sum(len(spec.inputs) for spec in SPECS.values())
    assert all(low == opt == high for low, opt, high in corners)
    dynamic = profile.EngineProfile(2, (240, 320)).input_shapes(read_manifest(export))
    recorded = read_manifest(out, ENGINE_FORMAT)["input_shapes"]
    assert recorded["memory_readout"]["memory_value"] == dict.fromkeys(("min", "opt", "max"),
                                                                       dynamic["memory_readout"]["memory_value"]["max"])
    assert ("set_flag", "gpu_fallback") in trt.calls and ("set_flag", "fp16") in trt.calls  # TensorRT 10 DLA
    readout = next(line for line in trtexec_commands(export, read_manifest(export), options) if "memory_readout" in line)
    shapes = {corner: readout.split(f"--{corner}Shapes=")[1].split()[0] for corner in ("min", "opt", "max")}
    assert shapes["min"] == shapes["opt"] == shapes["max"] and "memory_value:1x2x256x900" in shapes["min"]


def test_dla_engines_take_exactly_their_memory_size(onnx_dir, tmp_path, fake_gpu, monkeypatch):
    trt = fake_gpu(FakeTensorRT())
    trt.Builder.num_DLA_cores = 1
    out = tensorrt.build_engines(_as_fp16_export(onnx_dir, tmp_path, monkeypatch), tmp_path / "dla",
                                 options=profile.BuildOptions(dla_core=0), progress=lambda _: None)
    with pytest.raises(ValueError, match=r"built with --dla-core for exactly max_mem_frames=3 .*pass max_mem_frames=3"):
        vosrt.load("cutie-small", backend="tensorrt", device="cuda", export_dir=out, fp16=True, top_k=30,
                   max_mem_frames=2)


def test_custom_op_plugins_are_registered_when_the_manifest_lists_them(monkeypatch):
    from vosrt.kernels import trt_plugin

    registered = []
    monkeypatch.setattr(trt_plugin, "register", lambda: registered.append(True))
    artifacts.register_custom_ops({"custom_ops": []})
    assert registered == []
    artifacts.register_custom_ops({"custom_ops": ["vosrt::TopKReadout"]})
    assert registered == [True]


def test_tensorrt_backend_refuses_engines_built_elsewhere(export, tmp_path, fake_gpu):
    model, onnx = export
    fake_gpu(FakeTensorRT())
    out = tensorrt.build_engines(onnx, tmp_path / "engines", progress=lambda _: None)
    jetson = artifacts.TensorRTEnvironment("10.3.0", "Orin", "8.7")
    with pytest.raises(RuntimeError, match="built for TensorRT 10.9.0.34 .*rebuild them here"):
        TensorRTBackend(out, "cuda", environment=jetson)


def test_engine_call_reuses_its_output_buffers(monkeypatch):
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device: types.SimpleNamespace(cuda_stream=0))
    engine = FakeEngine()
    run = Engine(FakeTensorRT(), engine, "decoder", torch.device("cpu"))
    y = run({"x": torch.zeros(2, 4)})["y"]
    again = run({"x": torch.ones(2, 4)})["y"]
    (context,) = engine.contexts
    assert again is y and context.addresses["y"] == y.data_ptr()
    with pytest.raises(ValueError, match=r"input x has shape \[4, 4\], outside the engine's profile \[1, 4\]..\[3, 4\]"):
        run({"x": torch.zeros(4, 4)})
    assert context.runs == 2


def test_static_engines_say_what_they_take(monkeypatch):
    """DLA builds have min = opt = max profiles: any other shape is refused with what to do."""
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device: types.SimpleNamespace(cuda_stream=0))
    run = Engine(FakeTensorRT(), FakeEngine(static=True), "mask_decoder", torch.device("cpu"))
    assert run({"x": torch.zeros(3, 4)})["y"].shape == (3, 4)
    with pytest.raises(ValueError, match=r"shape \[2, 4\], but the engine was built for exactly \[3, 4\] .*"
                                         r"exactly --max-objects objects"):
        run({"x": torch.zeros(2, 4)})


def test_jointformer_engines_must_fit_the_session(jointformer_export, tmp_path, fake_gpu):
    """vosrt.load checks the engines' top-K options, memory size and precision before loading them."""
    fake_gpu(FakeTensorRT())
    out = tensorrt.build_engines(jointformer_export("fp32"), tmp_path / "engines", progress=lambda _: None)
    for options, message in ((dict(topk_block="half"), "exported with topk_block='all_blocks'"),
                             (dict(max_mem_frames=3), "hold at most max_mem_frames=2"),
                             (dict(fp16=True), "holds fp32 graphs")):
        with pytest.raises(ValueError, match=message):
            vosrt.load("jointformer", backend="tensorrt", device="cuda", export_dir=out, **options)


def test_engines_missing_or_incomplete_are_reported(export, tmp_path, fake_gpu):
    model, onnx = export
    last = list(MODELS[model][0])[-1]
    with pytest.raises(ValueError, match="is not a TensorRT engine directory: it has no manifest.json"):
        read_manifest(artifacts.engine_directory(onnx), ENGINE_FORMAT)
    fake_gpu(FakeTensorRT())
    out = tensorrt.build_engines(onnx, tmp_path / "engines", progress=lambda _: None)
    (out / f"{last}.engine").unlink()
    with pytest.raises(ValueError, match=f"lists {last}.engine, which is not in"):
        read_manifest(out, ENGINE_FORMAT)


@pytest.mark.skipif(HAVE_TENSORRT, reason="TensorRT and a GPU are here: the engines would be built")
def test_export_engine_from_onnx_without_tensorrt(export, capsys):
    model, onnx = export
    assert export_engine_main(["--from-onnx", str(onnx), "--max-objects", "2", "--resolution", "240x320"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("export-engine: error: building TensorRT engines needs ")
    assert f"export-engine --from-onnx {onnx}" in err and err.count("trtexec --onnx=") == len(MODELS[model][0])
    assert "--maxShapes=image:1x3x240x320" in err and "Traceback" not in err
    assert not (onnx / "tensorrt").exists()


@pytest.mark.parametrize("argv, message", [
    (["--from-onnx", "{onnx}", "--format", "onnx"], "--format onnx has nothing to do"),
    (["--from-onnx", "{onnx}", "--fp16"], "--fp16 apply to the ONNX export"),
    (["--from-onnx", "{onnx}", "--max-objects", "0"], "--max-objects must be >= 1"),
    (["--from-onnx", "{onnx}", "--dla-core", "-1"], "--dla-core must be >= 0"),
    (["cutie-base", "--from-onnx", "{onnx}"], "holds cutie-small, not cutie-base"),
    (["--from-onnx", "{missing}"], "is not an ONNX export"),
    ([], "name the model to export"),
])
def test_export_engine_argument_errors(onnx_dir, tmp_path, capsys, argv, message):
    argv = [a.format(onnx=onnx_dir, missing=tmp_path) for a in argv]
    assert export_engine_main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_export_engine_prints_trtexec_commands(export, capsys):
    model, onnx = export
    assert export_engine_main(["--from-onnx", str(onnx), "--trtexec", "--dla-core", "0"]) == 0
    mkdir, *lines = capsys.readouterr().out.splitlines()
    assert mkdir == f"mkdir -p {onnx / 'tensorrt'}" and len(lines) == len(MODELS[model][0])
    assert all(line.startswith("trtexec --onnx=") and "--useDLACore=0" in line for line in lines)
    assert not (onnx / "tensorrt").exists()


def test_from_onnx_keeps_the_exports_memory_size(onnx_dir, capsys):
    """Without --max-mem-frames the engines hold the export's max_mem_frames (3 here), not the default 5."""
    assert export_engine_main(["--from-onnx", str(onnx_dir), "--trtexec"]) == 0
    readout = next(line for line in capsys.readouterr().out.splitlines() if "memory_readout.onnx" in line)
    assert "--maxShapes=" in readout and "memory_value:1x4x256x4860" in readout  # 4 objects, 3 x 30 x 54 tokens


def test_jointformer_trtexec_lines_carry_the_cache_shapes(jointformer_export, capsys):
    onnx = jointformer_export("fp32")
    assert export_engine_main(["--from-onnx", str(onnx), "--trtexec", "--max-objects", "2",
                               "--resolution", "240x320", "--max-mem-frames", "2"]) == 0
    joint = next(line for line in capsys.readouterr().out.splitlines() if "joint_propagation.onnx" in line)
    assert "--maxShapes=tokens:2x300x768,ref_keys:11x2x12x900x64,ref_values:11x2x12x900x64,ref_valid:2x900" in joint
    assert "--minShapes=tokens:1x300x768,ref_keys:11x1x12x300x64" in joint and "--stronglyTyped" in joint


def test_no_trtexec_commands_for_custom_op_exports(onnx_dir):
    manifest = {**read_manifest(onnx_dir), "custom_ops": ["vosrt::TopKReadout"]}
    with pytest.raises(ValueError, match="plugin registers from Python: build its engines with export-engine"):
        trtexec_commands(onnx_dir, manifest, profile.BuildOptions())


def test_export_engine_rejects_a_malformed_resolution(capsys):
    with pytest.raises(SystemExit) as exit_:
        export_engine_main(["cutie-small", "--resolution", "480"])
    assert exit_.value.code == 2 and "expected HEIGHTxWIDTH" in capsys.readouterr().err


@pytest.mark.parametrize("options, message", [
    (dict(cuda_graph=True), "cuda_graph=True needs an NVIDIA GPU"),
    (dict(fp16=True), "fp16=True with backend='torch' needs an NVIDIA GPU"),
    (dict(amp=True), "amp=True needs an NVIDIA GPU"),
    (dict(backend="tensorrt"), "backend='tensorrt' needs an NVIDIA GPU"),
])
def test_gpu_options_need_cuda(options, message):
    with pytest.raises(ValueError, match=message):
        vosrt.load("cutie-small", weights="unused.pth", device="cpu", **options)


def test_gpu_options_that_do_not_combine():
    with pytest.raises(ValueError, match="official eager AMP of backend='torch'"):
        vosrt.load("cutie-small", backend="onnxruntime", device="cuda", amp=True)
    with pytest.raises(ValueError, match="for fp16 with CUDA graphs use fp16=True"):
        vosrt.load("cutie-small", device="cuda", amp=True, cuda_graph=True)
    with pytest.raises(ValueError, match="cuda_graph=True applies to backend='torch' or 'tensorrt'"):
        vosrt.load("cutie-small", backend="onnxruntime", device="cuda", cuda_graph=True)


@pytest.mark.parametrize("flags, message", [
    (["--backend", "tensorrt"], "backend='tensorrt' needs an NVIDIA GPU"),
    (["--fp16", "--cuda-graph"], "fp16=True with backend='torch' needs an NVIDIA GPU"),
    (["--amp"], "amp=True needs an NVIDIA GPU"),
])
def test_segment_gpu_flags_on_cpu_are_one_line_errors(tmp_path, capsys, flags, message):
    from helpers import DAVIS

    argv = ["segment", "cutie-small", "--input", str(DAVIS / "images" / "bike"), "--masks",
            str(DAVIS / "masks" / "bike"), "--output", str(tmp_path / "out"), "--weights", "unused.pth", *flags]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()
