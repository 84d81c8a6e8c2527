"""What several commands share: the models' settings as options, and argument parsers.

No torch import: ``vosrt --help`` builds every parser without loading a model.
"""
from __future__ import annotations

import argparse
from collections.abc import Collection
from dataclasses import fields

from vosrt.runtime.registry import MODELS


def _fields(model: str) -> set[str]:
    return {f.name for f in fields(MODELS[model].config_type)}


def _options() -> dict[str, tuple[str, dict]]:
    """{field: (flag, argparse keywords)} of every registered model's settings, from their fields'
    metadata (:func:`vosrt.runtime.config.option`). Defaults are the dataclasses' own (official) ones."""
    found: dict[str, tuple[str, dict]] = {}
    for spec in MODELS.values():
        for f in fields(spec.config_type):
            if f.name in found or "help" not in f.metadata:
                continue
            flag = f.metadata["flag"] or f"--{'no-' if f.default is True else ''}{f.name.replace('_', '-')}"
            if f.type in ("bool", bool):
                keywords = dict(action="store_false" if f.default else "store_true")
            else:
                keywords = dict(type=int) if f.type in ("int", int) else dict(choices=f.metadata["choices"])
            found[f.name] = flag, keywords | {"help": f.metadata["help"]}
    return found


def option_fields() -> set[str]:
    """The settings fields that are command-line options."""
    return set(_options())


def option_flags() -> dict[str, str]:
    """{field: its command-line flag} of every settings field that is an option."""
    return {field: flag for field, (flag, _) in _options().items()}


def add_inference_options(parser: argparse.ArgumentParser, only: Collection[str] | None = None) -> None:
    """The settings fields ``only`` (default: all) as options, each marked with the models that
    take it. An option not given is absent from the parsed arguments: the model's default applies."""
    group = parser.add_argument_group("memory options (default: the model's official setting)",
                                      argument_default=argparse.SUPPRESS)
    for field, (flag, keywords) in _options().items():
        if only is None or field in only:
            models = [name for name in MODELS if field in _fields(name)]
            scope = "" if len(models) == len(MODELS) else f" [{', '.join(models)} only]"
            group.add_argument(flag, dest=field, **keywords | {"help": keywords["help"] + scope})


def inference_options(args: argparse.Namespace) -> dict:
    """The inference options given for ``args.model``; ValueError naming those it does not take."""
    flags = option_flags()
    given = {field: value for field, value in vars(args).items() if field in flags}
    foreign = [flags[field] for field in given if field not in _fields(args.model)]
    if foreign:
        raise ValueError(f"{', '.join(foreign)}: not an option of {args.model}")
    return given


def parse_resolution(text: str) -> tuple[int, int]:
    """``"480x854"`` -> (480, 854) (height x width)."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"resolution {text!r}: expected HEIGHTxWIDTH, e.g. 480x854") from None
    return h, w


def parse_counts(text: str) -> list[int]:
    """``"1,3"`` -> [1, 3]; ``"1..4"`` -> [1, 2, 3, 4]; both can be mixed: ``"1..3,8"``."""
    values: list[int] = []
    try:
        for part in text.split(","):
            low, _, high = part.partition("..")
            values += range(int(low), int(high or low) + 1)
    except ValueError:
        raise ValueError(f"{text!r}: expected numbers such as 1,3 or a range such as 1..5") from None
    if not values:
        raise ValueError(f"{text!r}: no numbers")
    return sorted(set(values))


def argument(parse):
    """An argparse ``type`` whose ValueError message is shown as it is."""
    def convert(text: str):
        try:
            return parse(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None
    return convert
