"""Kind ``diffusers``: DIFT-style features of diffusion models (optional extra ``diffusers``).

Planned (METHOD.md): VAE-encode the framed image, add noise at t=1, run the denoiser once with the empty
prompt, take the first up-sampling block's output (U-Nets) or the last block with 2x2 patch merging
(DiT, SD3). Not implemented yet; the builder fails with a clear message either way.

options: timestep (1), prompt (""), block ("up_ft_index" for U-Nets / "last" for DiTs), ensemble (1).
"""

from __future__ import annotations

import importlib.util

from vislaw.encoders.base import Encoder
from vislaw.encoders.registry import register_encoder
from vislaw.encoders.spec import EncoderConfigError, EncoderSpec


@register_encoder("diffusers")
def build_diffusers(spec: EncoderSpec) -> Encoder:
    if importlib.util.find_spec("diffusers") is None:
        raise EncoderConfigError(
            f"{spec.key('kind')}: kind 'diffusers' needs the optional package diffusers (pip install diffusers)"
        )
    raise EncoderConfigError(f"{spec.key('kind')}: kind 'diffusers' (DIFT features) is not implemented yet")
