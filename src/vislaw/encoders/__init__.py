"""Vision encoders behind one feature API, built from config entries through a registry.

    spec = spec_from_config("clip_l14", config["encoders"])
    enc = create_encoder(spec)
    enc.tokens(x, layers=(-2,))  # {-2: (B, h*w, D)}, x = framed images (B, 3, S, S) in [0, 1]

Modules: `spec` (EncoderSpec, config parsing), `registry` (register/create/list), `base` (the Encoder API),
`frame` (pad-to-square framing and keypoint mapping), one module per kind (`hf`, `timm_backbone`, `concat`,
`mini`, `diffusion`), `fastvit` (the fused forward pass `hf` runs CLIP/SigLIP/DINOv2 towers with) and
`catalog` (named specs of the paper's settings).
"""

from vislaw.lazy import lazy_getattr
from vislaw.encoders import catalog  # noqa: F401  (registers the paper's named specs)
from vislaw.encoders.registry import (
    check_spec,
    create_encoder,
    encoder_kinds,
    list_encoders,
    named_spec,
    register_encoder,
    register_spec,
)
from vislaw.encoders.spec import EncoderConfigError, EncoderSpec, spec_from_config

# Imported on first use (PEP 562): they need torch, and planning the workflow must not pay for it.
_LAZY = {"Encoder": "vislaw.encoders.base", "SquareFrame": "vislaw.encoders.frame",
         "frame_image": "vislaw.encoders.frame", "load_framed": "vislaw.encoders.frame"}

__getattr__ = lazy_getattr(__name__, _LAZY)

__all__ = [
    "Encoder",
    "check_spec",
    "EncoderConfigError",
    "EncoderSpec",
    "SquareFrame",
    "create_encoder",
    "encoder_kinds",
    "frame_image",
    "list_encoders",
    "load_framed",
    "named_spec",
    "register_encoder",
    "register_spec",
    "spec_from_config",
]
