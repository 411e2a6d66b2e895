"""The ``diffusers`` kind's options, checked without torch or diffusers (so that a dry run catches them).

`vislaw.encoders.diffusion` documents what each option means; this module only knows their names and types.
Whether a block fits the model (``up3`` on a U-Net with two up-blocks, ``up1`` on a transformer) needs the
model and is checked when the encoder is built.
"""

from __future__ import annotations

import re

from vislaw.encoders.spec import EncoderConfigError, EncoderSpec

OPTIONS = ("block", "timestep", "prompt", "ensemble", "seed", "skip")
UP_BLOCK = re.compile(r"^up([1-9][0-9]*)$")
TRANSFORMER_BLOCKS = ("last", "last_merge2x2")


def int_option(spec: EncoderSpec, name: str, default: int, low: int) -> int:
    value = spec.options.get(name, default)
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise EncoderConfigError(f"{spec.key('options')}: {name} must be an integer >= {low}, got {value!r}")
    return value


def check_diffusers_options(spec: EncoderSpec) -> None:
    """Raise `EncoderConfigError` naming ``encoders.<name>.options`` for an option that cannot be right."""
    key = spec.key("options")
    unknown = sorted(set(spec.options) - set(OPTIONS))
    if unknown:
        raise EncoderConfigError(f"{key}: unknown option {unknown[0]!r} (allowed: {', '.join(OPTIONS)})")
    block = spec.options.get("block")
    if block is None:
        raise EncoderConfigError(f"{key}: kind 'diffusers' needs options.block (e.g. up1, last_merge2x2)")
    if not isinstance(block, str) or not (UP_BLOCK.match(block) or block in TRANSFORMER_BLOCKS):
        raise EncoderConfigError(f"{key}: block must be upK (K >= 1) or one of {TRANSFORMER_BLOCKS}, got {block!r}")
    int_option(spec, "timestep", 1, low=0)
    int_option(spec, "ensemble", 1, low=1)
    int_option(spec, "seed", 0, low=0)
    if not isinstance(spec.options.get("prompt", ""), str):
        raise EncoderConfigError(f"{key}: prompt must be a string, got {spec.options['prompt']!r}")
    skip = spec.options.get("skip", [])
    if not isinstance(skip, (list, tuple)) or not all(isinstance(name, str) for name in skip):
        raise EncoderConfigError(f"{key}: skip must be a list of component names, got {skip!r}")
