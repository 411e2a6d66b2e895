"""What each mini encoder learns: one training objective per analogue of the paper's encoder families.

- ``contrastive`` (CLIP): the image's CLS token against a tiny caption transformer, symmetric InfoNCE with
  a learned temperature, on the world's image-caption pairs.
- ``selfsup`` (DINO and its dense successors): two augmented views of one image (crop, stretch, rotation,
  colour jitter with RGB shuffling). A patch-level term makes each patch of view 1 predict where in view 2
  the same image point landed (a soft-target cross-entropy over view 2's patches); an image-level InfoNCE
  term ties the two views' CLS tokens together across the batch. No labels or captions.
- ``denoise`` (diffusion U-Nets): noise at a random level plus masked patches, and a light decoder
  reconstructs the clean image from the stride-8 features (MSE in normalised pixel units).
- ``supervised``: presence of each attribute (category, colour, size, texture, glyph) of the caption
  JSON's objects, multi-label binary cross-entropy from the CLS token (mean token for a CNN).
- ``random``: nothing to learn; the seeded initialisation is the encoder.

Every objective owns its heads (an `nn.Module`) and computes ``loss(batch_index, generator)``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vislaw.zoo.arch import Backbone, MiniCNN
from vislaw.zoo.data import (
    Augment,
    CaptionSet,
    cell_centres,
    jitter_colours,
    map_between_views,
    random_affines,
    to_unit,
    warp,
)
from vislaw.zoo.text import CaptionEncoder, build_vocabulary, encode_captions

OBJECTIVES = ("contrastive", "selfsup", "denoise", "supervised", "random")
MEAN = (0.5, 0.5, 0.5)  # every mini encoder normalises [0, 1] pixels to [-1, 1]
STD = (0.5, 0.5, 0.5)


def normalise(x: torch.Tensor) -> torch.Tensor:
    return (x - 0.5) / 0.5


def split_tokens(backbone: Backbone, tokens: torch.Tensor, pool: str = "cls") -> tuple[torch.Tensor, torch.Tensor]:
    """(B, prefix + N, D) -> (image vector (B, D), patch tokens (B, N, D)).

    ``pool``: ``cls`` (the CLS token; CNNs have none and use the mean) or ``mean`` (mean patch token).
    """
    patches = tokens[:, backbone.num_prefix_tokens :]
    pooled = tokens[:, 0] if backbone.num_prefix_tokens and pool == "cls" else patches.mean(dim=1)
    return pooled, patches


def info_nce(a: torch.Tensor, b: torch.Tensor, temperature: torch.Tensor | float) -> torch.Tensor:
    """Symmetric InfoNCE between rows of ``a`` and ``b`` (matching rows are the positives)."""
    logits = F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T / temperature
    target = torch.arange(len(a))
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


def resize_images(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 (N, 3, S, S) -> float [0, 1] at ``size`` (antialiased, as PIL's bicubic downscaling)."""
    unit = to_unit(images)
    if unit.shape[-1] == size:
        return unit
    return F.interpolate(unit, size=(size, size), mode="bicubic", antialias=True, align_corners=False).clamp_(0, 1)


class Objective(nn.Module):
    """Heads + loss of one objective over a backbone; ``self.images`` are the [0, 1] training images."""

    def __init__(self, backbone: Backbone, data: CaptionSet, settings: Mapping[str, Any]) -> None:
        super().__init__()
        self.backbone = backbone
        self.settings = dict(settings)
        self.images = resize_images(data.images, int(settings["image_size"]))

    def loss(self, index: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        raise NotImplementedError


class Contrastive(Objective):
    def __init__(self, backbone: Backbone, data: CaptionSet, settings: Mapping[str, Any]) -> None:
        super().__init__(backbone, data, settings)
        max_len = int(settings["max_words"])
        self.vocabulary = build_vocabulary(data.captions)
        self.register_buffer("caption_ids", encode_captions(data.captions, self.vocabulary, max_len), persistent=False)
        out_dim = int(settings["embed_dim"])
        self.text = CaptionEncoder(len(self.vocabulary), max_len, dim=int(settings["text_dim"]), out_dim=out_dim)
        self.image_proj = nn.Linear(backbone.dim, out_dim)
        self.log_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))  # CLIP's initial temperature

    def loss(self, index: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        tokens = self.backbone.forward_tokens(normalise(self.images[index]))
        pooled, _ = split_tokens(self.backbone, tokens, str(self.settings["pool"]))
        text = self.text(self.caption_ids[index])
        scale = self.log_scale.clamp(max=math.log(100.0)).exp()
        return info_nce(self.image_proj(pooled), text, 1.0 / scale)


class SelfSupervised(Objective):
    def __init__(self, backbone: Backbone, data: CaptionSet, settings: Mapping[str, Any]) -> None:
        super().__init__(backbone, data, settings)
        self.augment = Augment()
        self.view_size = int(settings["view_size"])
        dim, out = backbone.dim, int(settings["embed_dim"])
        self.patch_head = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, out))
        self.image_head = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, out))

    def _view(self, images: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        theta = random_affines(len(images), self.augment, gen)
        return jitter_colours(warp(images, theta, self.view_size), self.augment, gen), theta

    def loss(self, index: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        images = self.images[index]
        view1, theta1 = self._view(images, gen)
        view2, theta2 = self._view(images, gen)
        pooled1, patches1 = split_tokens(self.backbone, self.backbone.forward_tokens(normalise(view1)))
        pooled2, patches2 = split_tokens(self.backbone, self.backbone.forward_tokens(normalise(view2)))
        grid = self.view_size // self.backbone.patch
        temperature = float(self.settings["temperature"])
        dense = 0.5 * (
            self._dense(self.patch_head(patches1), self.patch_head(patches2), theta1, theta2, grid, temperature)
            + self._dense(self.patch_head(patches2), self.patch_head(patches1), theta2, theta1, grid, temperature)
        )
        image = info_nce(self.image_head(pooled1), self.image_head(pooled2), temperature)
        weight = float(self.settings["image_weight"])
        return (1 - weight) * dense + weight * image

    @staticmethod
    def _dense(q: torch.Tensor, k: torch.Tensor, theta_q: torch.Tensor, theta_k: torch.Tensor, grid: int,
               temperature: float) -> torch.Tensor:
        """Each query patch's distribution over key patches vs where its image point actually landed."""
        centres = cell_centres(grid)  # (N, 2)
        landed = map_between_views(centres, theta_q, theta_k)  # (B, N, 2) in view-k coordinates
        inside = (landed.abs() < 1.0).all(dim=-1)  # (B, N): the point is visible in view k
        cell = 2.0 / grid
        distance2 = ((landed[:, :, None, :] - centres[None, None, :, :]) ** 2).sum(-1) / cell**2  # (B, N, N)
        target = torch.softmax(-distance2 / (2 * 0.5**2), dim=-1)  # Gaussian, sigma = half a cell
        logits = torch.einsum("bnd,bmd->bnm", F.normalize(q, dim=-1), F.normalize(k, dim=-1)) / temperature
        per_query = -(target * F.log_softmax(logits, dim=-1)).sum(-1)
        return (per_query * inside).sum() / inside.sum().clamp_min(1)


class Denoise(Objective):
    def __init__(self, backbone: Backbone, data: CaptionSet, settings: Mapping[str, Any]) -> None:
        super().__init__(backbone, data, settings)
        dim = backbone.dim
        # Three 2x up-samplings undo the backbone's stride 8.
        widths = [dim, dim // 2, dim // 4, dim // 4]
        layers: list[nn.Module] = []
        for c_in, c_out in zip(widths[:-1], widths[1:], strict=True):
            layers += [nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1), nn.GELU()]
        self.decoder = nn.Sequential(*layers, nn.Conv2d(widths[-1], 3, 3, padding=1))

    def loss(self, index: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        images = self.images[index]
        if self.settings["colour_jitter"]:
            images = jitter_colours(images, Augment(), gen)
        clean = normalise(images)
        n, _, size, _ = clean.shape
        low, high = self.settings["noise"]
        sigma = (low + (high - low) * torch.rand(n, generator=gen)).view(n, 1, 1, 1)
        noisy = clean + sigma * torch.randn(clean.shape, generator=gen)
        grid = size // self.backbone.patch
        hidden = torch.rand(n, 1, grid, grid, generator=gen) < float(self.settings["mask_ratio"])
        hidden = hidden.repeat_interleave(self.backbone.patch, 2).repeat_interleave(self.backbone.patch, 3)
        noisy = torch.where(hidden, torch.randn(clean.shape, generator=gen), noisy)
        reconstruction = self.decoder(self._feature_map(noisy))
        if self.settings["target"] == "luma":
            # Shape, not colour: the decoder must restore luminance only (its three outputs are averaged).
            return F.mse_loss(reconstruction.mean(1), clean.mean(1))
        return F.mse_loss(reconstruction, clean)

    def _feature_map(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(self.backbone, MiniCNN):
            return self.backbone.feature_map(x)
        _, patches = split_tokens(self.backbone, self.backbone.forward_tokens(x))
        side = int(math.isqrt(patches.shape[1]))
        return patches.transpose(1, 2).reshape(len(x), -1, side, side)


class Supervised(Objective):
    def __init__(self, backbone: Backbone, data: CaptionSet, settings: Mapping[str, Any]) -> None:
        super().__init__(backbone, data, settings)
        self.register_buffer("labels", data.attributes, persistent=False)
        self.head = nn.Linear(backbone.dim, data.attributes.shape[1])

    def loss(self, index: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        tokens = self.backbone.forward_tokens(normalise(self.images[index]))
        pooled, _ = split_tokens(self.backbone, tokens, str(self.settings["pool"]))
        return F.binary_cross_entropy_with_logits(self.head(pooled), self.labels[index])


OBJECTIVE_CLASSES: dict[str, type[Objective]] = {
    "contrastive": Contrastive,
    "selfsup": SelfSupervised,
    "denoise": Denoise,
    "supervised": Supervised,
}
