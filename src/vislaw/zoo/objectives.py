"""What each mini encoder learns: one training objective per analogue of the paper's encoder families.

- ``contrastive`` (CLIP): the image's CLS token against a tiny caption transformer, symmetric InfoNCE with
  a learned temperature, on the world's image-caption pairs.
- ``selfsup`` (DINO and its dense successors): two augmented views of one image (crop, stretch, rotation,
  colour jitter; RGB shuffling with probability ``channel_shuffle``, 0 by default). A patch-level term makes
  each patch of view 1 predict where in view 2 the same image point landed (a soft-target cross-entropy over
  view 2's patches); an image-level InfoNCE term ties the two views' CLS tokens together across the batch.
  No labels or captions.
- ``denoise`` (diffusion U-Nets, DIFT): noise at a random level plus masked blocks; by default a small
  U-Net (`vislaw.zoo.arch.MiniUNet`) maps the noisy image back to pixels, predicting the added noise or the
  clean image (MSE in normalised pixel units), and its features are its first up-block's (stride 8). On a
  ViT or CNN a light decoder reconstructs from the stride-8 features instead.
- ``supervised``: dense labels: each object of the caption JSON is read at points around its centre
  (``cx``, ``cy``) on the patch-feature map, and per-object heads predict its category, colour, size class,
  texture, whether it carries a glyph and which (an OCR-aware encoder's analogue).
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

from vislaw.data.scene import GLYPHS
from vislaw.zoo.arch import Backbone, MiniCNN, MiniUNet
from vislaw.zoo.settings import MEAN, OBJECTIVES, STD  # noqa: F401  (re-exported)
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
        self.augment = Augment(channel_shuffle=float(settings["channel_shuffle"]))
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
    """Denoising. On the U-Net (the default, DIFT's setting) the U-Net itself maps the noisy image back to
    pixels; on a ViT or CNN a light decoder reconstructs from the stride-8 features.

    ``predict``: ``clean`` (the clean image, x0) or ``noise`` (what was added, ``noisy - clean``: sigma *
    epsilon, and in masked blocks the noise minus the clean content). ``noise``: the
    range of noise levels sigma (uniform per image, on [-1, 1] pixels). ``mask_ratio``: the fraction of
    ``mask_patch``-px square blocks replaced by pure noise (the denoiser must fill them from context: with
    blocks about half an object wide, only knowing the shapes does that).
    """

    def __init__(self, backbone: Backbone, data: CaptionSet, settings: Mapping[str, Any]) -> None:
        super().__init__(backbone, data, settings)
        dim = backbone.dim
        if isinstance(backbone, MiniUNet):
            self.decoder = None
        else:
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
        block = int(self.settings["mask_patch"])
        grid = -(-size // block)
        hidden = torch.rand(n, 1, grid, grid, generator=gen) < float(self.settings["mask_ratio"])
        hidden = hidden.repeat_interleave(block, 2).repeat_interleave(block, 3)[..., :size, :size]
        noisy = torch.where(hidden, torch.randn(clean.shape, generator=gen), noisy)
        if self.decoder is None:
            output = self.backbone.reconstruct(noisy)
        else:
            output = self.decoder(dense_map(self.backbone, noisy))
        target = clean if self.settings["predict"] == "clean" else noisy - clean  # the residual in masked blocks
        if self.settings["target"] == "luma":
            # Shape, not colour: only luminance is restored (the three outputs are averaged).
            return F.mse_loss(output.mean(1), target.mean(1))
        return F.mse_loss(output, target)


# Half-extent of each size class as a fraction of the image side (mid-range of vislaw.data.scene's classes).
SIZE_HALF_EXTENT = (0.12, 0.18, 0.23)


class Supervised(Objective):
    """Dense attribute supervision: per-object heads read the feature map at points on each object.

    Each object of an image is read at ``points`` points: its centre moved by a random offset of up to
    ``jitter`` times its size class's half-extent (bilinear sampling of the last block's stride-8 map);
    linear heads predict its category, colour, size class and texture (cross-entropy), glyph presence
    (binary cross-entropy) and, on objects that carry one, which glyph (cross-entropy), and, with
    ``offset_weight`` > 0, the offset itself in half-extents (where on the object the point lies:
    part-awareness, which raised C from ~8 to ~10.6), and, with ``position_weight`` > 0, the point's place
    in the image (a detector's box-centre target: the CNN's object tokens otherwise keep little of where the
    object is, linear probe 36 % on four places against 44-67 % for the contrastive and self-supervised ones;
    bench/MLLM_NOTES.md, session 12).
    """

    def __init__(self, backbone: Backbone, data: CaptionSet, settings: Mapping[str, Any]) -> None:
        super().__init__(backbone, data, settings)
        if data.objects is None:
            raise ValueError("the supervised objective needs the caption set's per-object annotations")
        self.register_buffer("objects", data.objects, persistent=False)
        counts = [sum(n.startswith(f + "=") for n in data.attribute_names)
                  for f in ("category", "colour", "size", "texture")]
        self.heads = nn.ModuleList(nn.Linear(backbone.dim, c) for c in counts)
        self.glyph_head = nn.Linear(backbone.dim, 1)
        self.glyph_identity_head = nn.Linear(backbone.dim, len(GLYPHS))
        self.offset_head = nn.Linear(backbone.dim, 2)
        # built only when used, so that settings without it keep their checkpoints and draws
        self.position_head = nn.Linear(backbone.dim, 2) if float(settings["position_weight"]) > 0 else None

    def no_weight_decay(self) -> set[str]:
        """The position head's weights stay undecayed, as the default's table was measured (bench/MLLM_NOTES.md,
        session 21: decaying them moved supervised_96's colour answers from 40 to 30 % on the same seed)."""
        return {"position_head.weight"} if self.position_head is not None else set()

    def loss(self, index: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        fmap = dense_map(self.backbone, normalise(self.images[index]))  # (B, D, h, w)
        objects = self.objects[index]  # (B, M, 7)
        valid = objects[..., 2] >= 0
        half = torch.tensor(SIZE_HALF_EXTENT)[objects[..., 4].clamp_min(0).long()]  # (B, M)
        draws = int(self.settings["points"])
        offsets = (torch.rand(*objects.shape[:2], draws, 2, generator=gen) * 2 - 1) * float(self.settings["jitter"])
        points = objects[..., None, :2] + offsets * half[..., None, None]  # (B, M, P, 2) in [0, 1]
        sampled = F.grid_sample(fmap, points.reshape(len(fmap), -1, 1, 2) * 2 - 1, mode="bilinear",
                                padding_mode="border", align_corners=False)  # (B, D, M*P, 1)
        feats = sampled[..., 0].transpose(1, 2).reshape(*objects.shape[:2], draws, -1)[valid]  # (V, P, D)
        labels = objects[valid]  # (V, 7)
        total = feats.new_zeros(())
        for k, head in enumerate(self.heads):
            logits = head(feats)
            total = total + F.cross_entropy(logits.flatten(0, 1), labels[:, 2 + k].long().repeat_interleave(draws))
        glyph = self.glyph_head(feats)[..., 0]
        present = (labels[:, None, 6] > 0).float()
        total = total + F.binary_cross_entropy_with_logits(glyph, present.expand_as(glyph))
        # Which glyph, read at the same points (the glyph covers most of its object). On the four bold glyphs
        # it puts them in the tokens with enough steps (linear probe 44-49 % at 150, 95-97 % at 600; chance
        # 25 %): bench/MLLM_NOTES.md, session 9.
        carrying = labels[:, 6] > 0
        if carrying.any():
            identity = self.glyph_identity_head(feats[carrying])  # (G, P, glyphs)
            target = (labels[carrying, 6] - 1).long().repeat_interleave(draws)
            total = total + F.cross_entropy(identity.flatten(0, 1), target)
        weight = float(self.settings["offset_weight"])
        if weight > 0:
            total = total + weight * F.mse_loss(self.offset_head(feats), offsets[valid])
        if self.position_head is not None:  # image coordinates in [-1, 1], as grid_sample reads them
            position = F.mse_loss(self.position_head(feats), points[valid] * 2 - 1)
            total = total + float(self.settings["position_weight"]) * position
        return total


def dense_map(backbone: Backbone, x: torch.Tensor) -> torch.Tensor:
    """The last block's patch tokens as a (B, D, h, w) map (after the final norm for a ViT)."""
    if isinstance(backbone, MiniCNN):
        return backbone.feature_map(x)
    if isinstance(backbone, MiniUNet):
        return backbone.feature_map(x)
    _, patches = split_tokens(backbone, backbone.forward_tokens(x))
    side = int(math.isqrt(patches.shape[1]))
    return patches.transpose(1, 2).reshape(len(x), -1, side, side)


OBJECTIVE_CLASSES: dict[str, type[Objective]] = {
    "contrastive": Contrastive,
    "selfsup": SelfSupervised,
    "denoise": Denoise,
    "supervised": Supervised,
}
