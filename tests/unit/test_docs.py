"""The README and docs/cli.md quote the code's lists and the package's versions, not copies of them."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from vosrt import requirements
from vosrt.cli import build_parser, doctor, segment
from vosrt.io import IMAGE_SUFFIXES, OverlayVideoWriter

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
CLI_DOC = (ROOT / "docs" / "cli.md").read_text()
# `name>=1.2,<3` in backticks: a requirement as the docs write it
REQUIREMENT = re.compile(r"`([A-Za-z][A-Za-z0-9_.-]*)((?:[<>=!~]=?[0-9][0-9A-Za-z.*]*,?)+)`")


def quoted_requirements(text: str) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for name, versions in REQUIREMENT.findall(text):
        found.setdefault(name.lower(), set()).add(versions)
    return found


@pytest.mark.parametrize("name", ["triton", "tensorrt", "onnxruntime", "onnx", "polygraphy", "matplotlib",
                                  "vos-benchmark"])
def test_the_readme_quotes_the_versions_of_the_package_metadata(name):
    assert quoted_requirements(README).get(name) == {requirements.versions(name)}


@pytest.mark.parametrize("page", ["README.md", "docs/cli.md", "docs/export.md", "docs/jetson.md", "docs/kernels.md"])
def test_no_page_quotes_another_version_of_a_requirement(page):
    for name, quoted in quoted_requirements((ROOT / page).read_text()).items():
        quoted = {q for q in quoted if not q.startswith("==")}  # a pin is another fact (the README's CI torch)
        if not quoted:
            continue
        try:
            expected = requirements.versions(name)
        except KeyError:
            continue  # not a requirement of vosrt (e.g. onnxruntime-gpu, which replaces onnxruntime by hand)
        assert quoted == {expected}, f"{page} quotes {name}{quoted}, the package needs {name}{expected}"


def test_the_doctor_quotes_the_same_versions():
    facts = doctor.Facts(python="3.11", platform="Linux", jetson=False)
    needs = " ".join(needs for _, _, needs in doctor.abilities(facts))
    for name in ("triton", "tensorrt", "onnxruntime"):
        assert f"{name}{requirements.versions(name)}" in needs


def _help(command: str) -> str:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    return " ".join(sub.choices[command].format_help().split())


def test_the_image_types_of_docs_and_help_are_the_codes():
    listed = re.search(r"an image folder \(([a-z, ]+), in name order", CLI_DOC).group(1)
    assert listed.split(", ") == sorted(s.lstrip(".") for s in IMAGE_SUFFIXES)
    assert f"image folder ({segment.image_types()}, in name order)" in _help("segment")


def test_the_overlay_types_of_docs_and_help_are_the_codes():
    listed = re.search(r"blended in their palette colour \(([.a-z0-9, ]+ or \.[a-z0-9]+)\)", " ".join(CLI_DOC.split()))
    assert listed.group(1) == segment.overlay_types()
    assert segment.overlay_types() == ", ".join(list(OverlayVideoWriter.CODECS)[:-1]) + " or " + \
        list(OverlayVideoWriter.CODECS)[-1]
    assert f"video file ({segment.overlay_types()})" in _help("segment")


def test_every_command_is_documented():
    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    listed = re.search(r"`vosrt` \(([^)]*)\)", " ".join(CLI_DOC.split())).group(1)
    assert re.findall(r"`([a-z-]+)`", listed) == list(commands)


def test_the_readme_test_command_is_the_quick_tier_and_ci_runs_it_first():
    command = re.search(r"## Test\n\n```bash\n(.*)\n```", README).group(1)
    assert command == 'python -m pytest -q -m "not slow"'
    ci = [line.split("  #")[0].strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()
          if "pytest" in line and not line.lstrip().startswith("#")]
    assert ci == ['python -m pytest -q -rs -m "not slow"', "python -m pytest -q -rs -m slow"]


def test_every_option_with_a_default_names_it_in_its_help():
    """docs/cli.md: options with a default name it in --help."""
    import argparse

    from vosrt.cli import export_engine_parser

    parser = build_parser()
    parsers = dict(next(a for a in parser._actions if a.dest == "command").choices)
    parsers["export-engine"] = export_engine_parser()
    silent = [(name, action.option_strings) for name, sub in parsers.items() for action in sub._actions
              if action.default not in (None, False, True, argparse.SUPPRESS) and action.dest != "help"
              and "default" not in (action.help or "")]
    assert silent == []
