"""Kind ``mini``: the small encoders the workflow trains on the mini-world (rule ``pretrain_encoder``).

Hook only: the mini zoo (its architectures, training and checkpoint format) is a separate piece of work.
Replace this placeholder builder (kinds register once) with the real one,
taking ``spec.weights`` = the trained checkpoint and ``spec.options`` = its architecture, and returning an
`Encoder` subclass with ``num_layers`` and ``_tokens`` like `vislaw.encoders.timm_backbone.TimmEncoder`.
"""

from __future__ import annotations

from vislaw.encoders.base import Encoder
from vislaw.encoders.registry import register_encoder
from vislaw.encoders.spec import EncoderConfigError, EncoderSpec


@register_encoder("mini")
def build_mini(spec: EncoderSpec) -> Encoder:
    raise EncoderConfigError(f"{spec.key('kind')}: kind 'mini' (the trained mini zoo) is not implemented yet")
