"""The mini zoo: small encoders trained on the mini-world, one per analogue of the paper's families.

    record = train_encoder("selfsup", "results/default/data", "results/default/zoo/selfsup", {"steps": 300})
    spec = EncoderSpec(kind="mini", weights="results/default/zoo/selfsup", image_size=96, patch=8,
                       mean=(0.5,) * 3, std=(0.5,) * 3, options={"arch": "vit"})
    create_encoder(spec).tokens(x)  # {-2: (B, 144, 96)}

Modules: `arch` (MiniViT, MiniCNN), `data` (caption set, seeded augmentations), `text` (caption encoder),
`objectives` (contrastive, selfsup, denoise, supervised, random) and `train` (training, checkpoint folder).
"""

from vislaw.zoo.arch import ARCH_DEFAULTS, PATCH, ArchitectureError, build_backbone, resolve_architecture
from vislaw.zoo.objectives import MEAN, OBJECTIVES, STD
from vislaw.zoo.train import load_backbone, read_checkpoint_record, train_encoder, training_config

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
