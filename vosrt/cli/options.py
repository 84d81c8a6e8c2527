"""What several commands share: the models' settings as options, and argument parsers.

No torch import: ``vosrt --help`` builds every parser without loading a model.
"""
from __future__ import annotations

import argparse
from collections.abc import Collection
from dataclasses import fields

from vosrt.models.jointformer.topk import TOPK_BLOCKS, TOPK_RANGES
from vosrt.runtime.registry import MODELS

# The models' settings as options: (flag, field of the config types in vosrt.runtime.registry,
# argparse keywords). Defaults are the config dataclasses' own (official) ones.
_LONG_TERM_SIZES = (("max_mem_frames", "working memory frames with long-term memory"),
                    ("min_mem_frames", "working memory frames kept after a consolidation"),
                    ("num_prototypes", "long-term prototypes per consolidation"),
                    ("max_num_tokens", "long-term memory size in tokens"),
                    ("buffer_tokens", "long-term tokens freed beyond the next prototypes when full"))
INFERENCE_OPTIONS = (
    ("--mem-every", "mem_every", dict(type=int, help="memorise every N frames")),
    ("--max-mem-frames", "max_mem_frames",
     dict(type=int, help="memory size in frames, the permanent first frame included")),
    ("--top-k", "top_k", dict(type=int, help="memory tokens read per pixel (jointformer: per token)")),
    ("--max-internal-size", "max_internal_size",
     dict(type=int, help="resize so the shorter side is at most this (-1: keep size)")),
    ("--stagger-updates", "stagger_updates", dict(type=int, help="sensory updates between two memory frames")),
    ("--chunk-size", "chunk_size", dict(type=int, help="objects read from memory together (-1: all)")),
    ("--use-long-term", "use_long_term",
     dict(action="store_true", help="long-term memory (official 'generic' setting) for long videos; bounded memory")),
    *((f"--long-term-{name.replace('_', '-')}", f"long_term_{name}", dict(type=int, help=help_text))
      for name, help_text in _LONG_TERM_SIZES),
    ("--no-long-term-usage", "long_term_count_usage",
     dict(action="store_false", help="do not count the usage of long-term tokens (eviction then keeps the newest)")),
    ("--no-include-last", "include_last",
     dict(action="store_false", help="do not keep the last processed frame as a reference")),
    ("--topk-range", "topk_range", dict(choices=TOPK_RANGES, help="top-K over all reference tokens or per frame")),
    ("--topk-block", "topk_block", dict(choices=TOPK_BLOCKS, help="the joint blocks that apply the top-K filter")),
    ("--topk-clstoken", "topk_clstoken",
     dict(action="store_true", help="top-K filter on the compressed-memory token's attention too")),
)
FLAGS = {field: flag for flag, field, _ in INFERENCE_OPTIONS}


def _fields(model: str) -> set[str]:
    return {f.name for f in fields(MODELS[model].config_type)}


def add_inference_options(parser: argparse.ArgumentParser, only: Collection[str] = tuple(FLAGS)) -> None:
    """The :data:`INFERENCE_OPTIONS` of the fields ``only`` as options, each marked with the models
    that take it. An option not given is absent from the parsed arguments: the model's default applies."""
    group = parser.add_argument_group("memory options (default: the model's official setting)",
                                      argument_default=argparse.SUPPRESS)
    for flag, field, keywords in INFERENCE_OPTIONS:
        if field in only:
            models = [name for name in MODELS if field in _fields(name)]
            scope = "" if len(models) == len(MODELS) else f" [{', '.join(models)} only]"
            group.add_argument(flag, dest=field, **keywords | {"help": keywords["help"] + scope})


def inference_options(args: argparse.Namespace) -> dict:
    """The inference options given for ``args.model``; ValueError naming those it does not take."""
    given = {field: value for field, value in vars(args).items() if field in FLAGS}
    foreign = [FLAGS[field] for field in given if field not in _fields(args.model)]
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
