"""The versions vosrt needs of each package, read from one place: the installed package's metadata
(``pyproject.toml``'s dependencies and extras). ``vosrt doctor``, the error messages and the docs
quote these, so that they cannot disagree; ``tests/unit/test_docs.py`` holds the README to them.
No torch import.
"""
from __future__ import annotations

import functools
import importlib.metadata

from packaging.requirements import Requirement
from packaging.version import InvalidVersion, Version


@functools.cache
def _requirements() -> dict[str, tuple[Requirement, str | None]]:
    """Distribution name -> (its requirement, the extra that asks for it; None: always)."""
    found = {}
    for line in importlib.metadata.requires("vosrt") or []:
        requirement = Requirement(line)
        if requirement.name == "vosrt":
            continue  # an extra made of other extras
        extra = next((e for e in ("export", "kernels", "gpu", "bench", "eval", "dev")
                      if requirement.marker is not None and requirement.marker.evaluate({"extra": e})), None)
        found[requirement.name.lower()] = (requirement, extra)
    return found


def requirement(name: str) -> Requirement:
    """vosrt's requirement on distribution ``name`` (e.g. ``triton>=3.6``)."""
    try:
        return _requirements()[name.lower()][0]
    except KeyError:
        raise KeyError(f"vosrt's metadata names no requirement on {name}") from None


def extra_of(name: str) -> str | None:
    """The extra that installs ``name`` (``"kernels"`` for triton), or None for a base dependency."""
    return _requirements()[name.lower()][1]


def versions(name: str) -> str:
    """The version range of ``name`` as the docs write it: ``">=10.9,<12"``, lower bounds first."""
    specifiers = sorted(requirement(name).specifier, key=lambda s: (not s.operator.startswith(">"), s.version))
    return ",".join(str(s) for s in specifiers)


def pip_install(name: str) -> str:
    """The command that installs ``name`` in the version vosrt needs: ``pip install 'triton>=3.6'``."""
    return f"pip install '{name}{versions(name)}'"


def satisfied(name: str, version: str | None, lower_bounds: bool = True) -> bool:
    """Whether an installed ``version`` of ``name`` (None or ``"broken: ..."`` when missing) is in
    range (only below its upper bounds with ``lower_bounds=False``). Local labels (``+cpu``) do not count."""
    try:
        release = Version(Version(version).base_version) if version else None
    except InvalidVersion:
        return False
    return release is not None and all(s.contains(release, prereleases=True) for s in requirement(name).specifier
                                       if lower_bounds or not s.operator.startswith(">"))
