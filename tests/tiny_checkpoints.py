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


# --- diffusion pipelines (diffusers), saved with save_pretrained like the hub's folders ------------------------
# Images of 32 px; the VAE halves them (two blocks) into 16x16 latents. The U-Nets have three levels, so
# their first up-block's output is 8x8 (stride 4 in pixels) and differs from the last one's; the
# transformers use patch 2 (8x8 tokens), merged 2x2 into a 4x4 grid (stride 8).
DIFFUSION_FAMILIES = ("sd", "sdxl", "sdim", "dit", "sd3")
DIFFUSION_GRID = {"sd": ("up1", 4), "sdxl": ("up1", 4), "sdim": ("up1", 4), "dit": ("last_merge2x2", 8),
                  "sd3": ("last_merge2x2", 8)}
_TEXT_WIDTH = 32
# Stable Diffusion's training schedule (its scheduler_config.json)
_SD_SCHEDULE = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "steps_offset": 1}
_TOKENS = 16


def save_clip_tokenizer(path: Path) -> None:
    """A CLIP tokenizer with a byte-level vocabulary and no merges (every character one token)."""
    import json

    from transformers import CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode  # GPT-2's byte -> character table

    chars = list(bytes_to_unicode().values())
    vocab = {token: index for index, token in enumerate([*chars, *(c + "</w>" for c in chars),
                                                         "<|startoftext|>", "<|endoftext|>"])}
    path.mkdir(parents=True, exist_ok=True)
    (path / "vocab.json").write_text(json.dumps(vocab))
    (path / "merges.txt").write_text("#version: 0.2\n")
    CLIPTokenizer(str(path / "vocab.json"), str(path / "merges.txt"), model_max_length=_TOKENS).save_pretrained(path)


def _text_config(projection: bool) -> object:
    from transformers import CLIPTextConfig

    extra = {"projection_dim": _TEXT_WIDTH} if projection else {}
    return CLIPTextConfig(vocab_size=514, hidden_size=_TEXT_WIDTH, intermediate_size=37, num_hidden_layers=2,
                          num_attention_heads=4, max_position_embeddings=_TOKENS, bos_token_id=512,
                          eos_token_id=513, pad_token_id=513, **extra)


def _vae(latent_channels: int = 4, **extra: object) -> object:
    from diffusers import AutoencoderKL

    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 2,
                         up_block_types=["UpDecoderBlock2D"] * 2, block_out_channels=[8, 16], layers_per_block=1,
                         latent_channels=latent_channels, norm_num_groups=8, sample_size=32, **extra)


def _unet(cross_attention_dim: int, **extra: object) -> object:
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(16, 32, 32),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"), norm_num_groups=8,
        cross_attention_dim=cross_attention_dim, attention_head_dim=4, **extra)


def save_diffusion_pipeline(family: str, root: Path) -> Path:
    """A tiny random-weight pipeline of ``family`` (see DIFFUSION_FAMILIES) saved under ``root/family``."""
    import diffusers
    from transformers import CLIPImageProcessor, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    torch.manual_seed(0)
    path = root / family
    tokenizer_dir = root / "clip_tokenizer"
    if not tokenizer_dir.exists():
        save_clip_tokenizer(tokenizer_dir)
    tokenizer = CLIPTokenizer.from_pretrained(tokenizer_dir)
    if family == "sd":
        pipe = diffusers.StableDiffusionPipeline(
            vae=_vae(), text_encoder=CLIPTextModel(_text_config(False)), tokenizer=tokenizer,
            unet=_unet(_TEXT_WIDTH), scheduler=diffusers.PNDMScheduler(**_SD_SCHEDULE, skip_prk_steps=True),
            safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    elif family == "sdxl":
        pipe = diffusers.StableDiffusionXLPipeline(
            vae=_vae(), text_encoder=CLIPTextModel(_text_config(False)),
            text_encoder_2=CLIPTextModelWithProjection(_text_config(True)), tokenizer=tokenizer,
            tokenizer_2=tokenizer,
            unet=_unet(2 * _TEXT_WIDTH, addition_embed_type="text_time", addition_time_embed_dim=8,
                       projection_class_embeddings_input_dim=6 * 8 + _TEXT_WIDTH),
            scheduler=diffusers.EulerDiscreteScheduler())
    elif family == "sdim":
        from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

        vision = CLIPVisionModelWithProjection(CLIPVisionConfig(**TOWER, projection_dim=_TEXT_WIDTH))
        pipe = diffusers.StableDiffusionImageVariationPipeline(
            vae=_vae(), image_encoder=vision, unet=_unet(_TEXT_WIDTH), scheduler=diffusers.PNDMScheduler(),
            safety_checker=None, feature_extractor=CLIPImageProcessor(), requires_safety_checker=False)
    elif family == "dit":
        transformer = diffusers.DiTTransformer2DModel(
            num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8, num_layers=2,
            sample_size=16, patch_size=2, num_embeds_ada_norm=10)
        pipe = diffusers.DiTPipeline(transformer=transformer, vae=_vae(), scheduler=diffusers.DDIMScheduler())
    elif family == "sd3":
        transformer = diffusers.SD3Transformer2DModel(
            sample_size=16, patch_size=2, in_channels=4, num_layers=2, attention_head_dim=8, num_attention_heads=2,
            joint_attention_dim=2 * _TEXT_WIDTH, caption_projection_dim=16, pooled_projection_dim=2 * _TEXT_WIDTH,
            out_channels=4, pos_embed_max_size=16)
        pipe = diffusers.StableDiffusion3Pipeline(
            transformer=transformer, scheduler=diffusers.FlowMatchEulerDiscreteScheduler(),
            vae=_vae(shift_factor=0.0609, scaling_factor=1.5305),
            text_encoder=CLIPTextModelWithProjection(_text_config(True)), tokenizer=tokenizer,
            text_encoder_2=CLIPTextModelWithProjection(_text_config(True)), tokenizer_2=tokenizer,
            text_encoder_3=None, tokenizer_3=None)
    else:
        raise ValueError(f"unknown diffusion family {family!r}")
    pipe.save_pretrained(path)
    return path


def diffusion_spec(family: str, path: Path, **fields: object) -> EncoderSpec:
    block, patch = DIFFUSION_GRID[family]
    return EncoderSpec(**{"kind": "diffusers", "weights": str(path), "image_size": 32, "patch": patch,
                          "layer": -1, "name": f"tiny_{family}", **HALF_STATS,
                          "options": {"timestep": 1, "prompt": "", "block": block}, **fields})
