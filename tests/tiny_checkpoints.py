"""Tiny random-weight checkpoints saved like real ones, so tests load them through the real loading path.

Each tower: hidden 32, 3 blocks (so layer -2 differs from both the first and the last), patch 8, image 32
(a 4x4 grid). Specs carry the statistics the real checkpoints use.
"""

from __future__ import annotations

from pathlib import Path

import torch

from vislaw.encoders import EncoderSpec

TOWER = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 3, "num_attention_heads": 2,
         "patch_size": 8, "image_size": 32}
TIMM_VIT = {"img_size": 32, "patch_size": 8, "depth": 3, "embed_dim": 32, "num_heads": 2}
CLIP_STATS = {"mean": (0.48145466, 0.4578275, 0.40821073), "std": (0.26862954, 0.26130258, 0.27577711)}
HALF_STATS = {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}
IMAGENET_STATS = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}
# family -> (transformers config class, model class, prefix tokens, statistics)
HF_FAMILIES = {
    "clip": ("CLIPVisionConfig", "CLIPVisionModel", 1, CLIP_STATS),
    "siglip": ("SiglipVisionConfig", "SiglipVisionModel", 0, HALF_STATS),
    "dinov2": ("Dinov2Config", "Dinov2Model", 1, IMAGENET_STATS),
}


def save_hf_tower(family: str, root: Path) -> Path:
    import transformers

    config_cls, model_cls, _, _ = HF_FAMILIES[family]
    torch.manual_seed(0)
    model = getattr(transformers, model_cls)(getattr(transformers, config_cls)(**TOWER))
    path = root / family
    model.save_pretrained(path)
    return path


def save_timm_vit(root: Path) -> Path:
    import timm

    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, **TIMM_VIT)
    path = root / "vit_tiny.pth"
    torch.save(model.state_dict(), path)
    return path


def hf_spec(family: str, path: Path, **fields: object) -> EncoderSpec:
    return EncoderSpec(**{"kind": "hf", "weights": str(path), "image_size": 32, "patch": 8,
                          "name": f"tiny_{family}", **HF_FAMILIES[family][3], **fields})


def timm_spec(path: Path | None, **fields: object) -> EncoderSpec:
    return EncoderSpec(**{"kind": "timm", "weights": None if path is None else str(path), "image_size": 32,
                          "patch": 8, "name": "tiny_timm_vit", **HALF_STATS,
                          "options": {"model": "vit_tiny_patch16_224", "model_kwargs": TIMM_VIT}, **fields})


def build_all(root: Path) -> dict[str, Path]:
    paths = {family: save_hf_tower(family, root) for family in HF_FAMILIES}
    paths["timm"] = save_timm_vit(root)
    return paths
