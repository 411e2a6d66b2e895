"""The mini zoo: small encoders trained on the mini-world, one per analogue of the paper's families.

    record = train_encoder("selfsup", "results/default/data", "results/default/zoo/selfsup", {"steps": 300})
    spec = EncoderSpec(kind="mini", weights="results/default/zoo/selfsup", image_size=96, patch=8,
                       mean=(0.5,) * 3, std=(0.5,) * 3, options={"arch": "vit"})
    create_encoder(spec).tokens(x)  # {-2: (B, 144, 96)}

Modules: `arch` (MiniViT, MiniCNN), `data` (caption set, seeded augmentations), `text` (caption encoder),
`objectives` (contrastive, selfsup, denoise, supervised, random), `train` (training, checkpoint folder)
and `settings` (architectures and training defaults, without torch).
"""

from vislaw.lazy import lazy_getattr
from vislaw.zoo.settings import (
    ARCH_DEFAULTS,
    MEAN,
    OBJECTIVES,
    PATCH,
    STD,
    ArchitectureError,
    resolve_architecture,
    training_config,
)

# Imported on first use (PEP 562): they need torch, and planning the workflow must not pay for it.
_LAZY = {"build_backbone": "vislaw.zoo.arch", "load_backbone": "vislaw.zoo.train",
         "read_checkpoint_record": "vislaw.zoo.train", "train_encoder": "vislaw.zoo.train"}

__getattr__ = lazy_getattr(__name__, _LAZY)

__all__ = [
    "ARCH_DEFAULTS",
    "ArchitectureError",
    "MEAN",
    "OBJECTIVES",
    "PATCH",
    "STD",
    "build_backbone",
    "load_backbone",
    "read_checkpoint_record",
    "resolve_architecture",
    "train_encoder",
    "training_config",
]
