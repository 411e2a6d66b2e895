"""Named specs of the paper's 15 settings (settings.csv), like timm's pretrained cfgs.

A config entry starts from one (``spec: clip_vit_l14_336.openai``) and overrides fields. Means and stds are
the ones the checkpoints were trained with; ``patch`` is the stride of the feature grid at the used layer
(for the diffusion settings: input resolution / grid side, from the paper's token counts).
"""

from __future__ import annotations

import dataclasses

from vislaw.encoders.registry import register_spec
from vislaw.encoders.spec import EncoderSpec

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HALF = (0.5, 0.5, 0.5)  # SigLIP, and [0, 1] -> [-1, 1] for diffusion VAEs


def _hf(weights: str, size: int, patch: int, mean: tuple[float, ...], std: tuple[float, ...]) -> EncoderSpec:
    return EncoderSpec(kind="hf", weights=weights, image_size=size, patch=patch, mean=mean, std=std)


def _diffusion(weights: str, size: int, patch: int, block: str) -> EncoderSpec:
    return EncoderSpec(kind="diffusers", weights=weights, image_size=size, patch=patch, mean=HALF, std=HALF,
                       layer=-1, options={"timestep": 1, "prompt": "", "block": block})


CLIP_224 = register_spec("clip_vit_l14.openai", _hf("openai/clip-vit-large-patch14", 224, 14, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD))
CLIP_336 = register_spec("clip_vit_l14_336.openai", _hf("openai/clip-vit-large-patch14-336", 336, 14, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD))
register_spec("clip_vit_l14.laion2b", _hf("laion/CLIP-ViT-L-14-laion2B-s32B-b82K", 224, 14, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD))
DINOV2 = register_spec("dinov2_vit_l14.lvd142m", _hf("facebook/dinov2-large", 224, 14, IMAGENET_MEAN, IMAGENET_STD))
register_spec("siglip_vit_b16_224.webli", _hf("google/siglip-base-patch16-224", 224, 16, HALF, HALF))
register_spec("siglip_vit_l16_256.webli", _hf("google/siglip-large-patch16-256", 256, 16, HALF, HALF))
register_spec("siglip2_vit_l16_256.webli", _hf("google/siglip2-large-patch16-256", 256, 16, HALF, HALF))
register_spec("sd15_unet.runway", _diffusion("runwayml/stable-diffusion-v1-5", 768, 32, "up1"))
register_spec("sd21_unet.stability", _diffusion("stabilityai/stable-diffusion-2-1", 768, 32, "up1"))
register_spec("sdim_unet.lambdalabs", _diffusion("lambdalabs/sd-image-variations-diffusers", 768, 32, "up1"))
register_spec("sdxl_unet.stability", _diffusion("stabilityai/stable-diffusion-xl-base-1.0", 512, 16, "up1"))
register_spec("dit_xl2_512.facebook", _diffusion("facebook/DiT-XL-2-512", 512, 32, "last_merge2x2"))
register_spec("sd3_medium_mmdit.stability", _diffusion("stabilityai/stable-diffusion-3-medium-diffusers", 512, 32, "last_merge2x2"))
register_spec("clip_l14_dinov2_l14.224", EncoderSpec(
    kind="concat", image_size=224, parts=(dataclasses.replace(CLIP_224, name="clip"), dataclasses.replace(DINOV2, name="dinov2"))))
register_spec("clip_l14_dinov2_l14.336", EncoderSpec(
    kind="concat", image_size=336,
    parts=(dataclasses.replace(CLIP_336, name="clip"), dataclasses.replace(DINOV2, image_size=336, name="dinov2"))))
