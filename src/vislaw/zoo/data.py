"""Training data of the mini zoo: the world's caption-train images in memory, their captions and attribute
labels, and seeded batched augmentations whose geometry is known (for the patch-level self-supervised term).

All randomness comes from a `torch.Generator` passed in, so a training run is a function of its seed.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from vislaw.data.scene import COLOURS, GLYPHS, SIZE_CLASSES, TEXTURES
from vislaw.data.shapes import categories


@dataclass(frozen=True)
class CaptionSet:
    """The stage-1 training pairs: images (N, 3, S, S) uint8, captions, attribute presence (N, A) float.

    ``objects``: (N, M, 7) float, one row per object (M = most objects in an image): centre ``cx / S``,
    ``cy / S`` in [0, 1], then the indices of category, colour, size class and texture (in
    `attribute_vocabulary`'s order within each field) and its glyph (1 + index in ``GLYPHS``, 0 without one);
    padding rows hold -1 everywhere.
    """

    images: torch.Tensor
    captions: list[str]
    attributes: torch.Tensor
    attribute_names: list[str]
    objects: torch.Tensor | None = None


def attribute_vocabulary() -> list[str]:
    """Names of the supervised objective's labels: ``category=star``, ``colour=red``, ... (fixed order)."""
    names = [f"category={c.name}" for c in categories()]
    names += [f"colour={c}" for c in COLOURS]
    names += [f"size={s}" for s in SIZE_CLASSES]
    names += [f"texture={t}" for t in TEXTURES]
    return [*names, "glyph=yes"]


def load_caption_set(world_dir: str | os.PathLike[str], limit: int | None = None) -> CaptionSet:
    """``captions/train.json`` of a world folder, with images decoded once (the set fits in memory)."""
    root = Path(world_dir)
    entries = json.loads((root / "captions" / "train.json").read_text(encoding="utf-8"))
    if limit is not None:
        entries = entries[:limit]
    if not entries:
        raise ValueError(f"{root / 'captions' / 'train.json'}: no training pairs")
    names = attribute_vocabulary()
    column = {name: i for i, name in enumerate(names)}
    fields = ("category", "colour", "size", "texture")
    within = {field: {n.split("=", 1)[1]: i for i, n in enumerate(x for x in names if x.startswith(field + "="))}
              for field in fields}
    images, labels = [], np.zeros((len(entries), len(names)), dtype=np.float32)
    objects = np.full((len(entries), max(len(e["objects"]) for e in entries) or 1, 7), -1.0, dtype=np.float32)
    for row, entry in enumerate(entries):
        with Image.open(root / entry["image"]) as image:
            images.append(np.asarray(image.convert("RGB"), dtype=np.uint8))
            side = float(image.size[0])
        for k, obj in enumerate(entry["objects"]):
            for field in fields:
                labels[row, column[f"{field}={obj[field]}"]] = 1.0
            glyph = 0.0
            if obj.get("glyph"):
                if obj["glyph"] not in GLYPHS:
                    raise ValueError(f"{root / 'captions' / 'train.json'}: image {entry['image']}: glyph "
                                     f"{obj['glyph']!r} is not one of the world's glyphs {GLYPHS}")
                glyph = 1.0 + GLYPHS.index(obj["glyph"])
                labels[row, column["glyph=yes"]] = 1.0
            objects[row, k] = [obj["cx"] / side, obj["cy"] / side, *(within[f][obj[f]] for f in fields), glyph]
    stacked = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
    return CaptionSet(stacked, [e["caption"] for e in entries], torch.from_numpy(labels), names,
                      torch.from_numpy(objects))


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 3, S, S) -> float in [0, 1]."""
    return images.float().div_(255.0)


@dataclass(frozen=True)
class Augment:
    """Ranges of the geometric and photometric augmentations (self-supervised views)."""

    scale: tuple[float, float] = (0.55, 1.0)  # crop side as a fraction of the image side
    aspect: tuple[float, float] = (0.8, 1.25)  # stretch, like instances' aspect spread
    rotation_deg: float = 30.0  # the world rotates objects by at most this
    flip: bool = False  # off: the world's keypoints are not mirror-symmetric (the house's window side)
    brightness: float = 0.3
    contrast: float = 0.3
    saturation: float = 0.5
    # Probability of permuting RGB. DINOv2 jitters colours but never permutes them; with 0.8 here the
    # encoder was colour-blind (linear colour probe 38 %, MLLM colour at chance) for no gain in C
    # (13.9 vs 14.8 without; bench/MLLM_NOTES.md), so the default keeps colours.
    channel_shuffle: float = 0.0
    grayscale: float = 0.2


def _uniform(n: int, low: float, high: float, gen: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=gen)


def random_affines(n: int, aug: Augment, gen: torch.Generator) -> torch.Tensor:
    """(n, 2, 3) maps from view coordinates to image coordinates, both in [-1, 1] (``affine_grid``'s)."""
    side = _uniform(n, *aug.scale, gen)
    log_aspect = _uniform(n, math.log(aug.aspect[0]), math.log(aug.aspect[1]), gen)
    sx, sy = side * torch.exp(log_aspect / 2), side * torch.exp(-log_aspect / 2)
    angle = _uniform(n, -aug.rotation_deg, aug.rotation_deg, gen) * (math.pi / 180.0)
    cos, sin = torch.cos(angle), torch.sin(angle)
    # Centre drawn so that the (unrotated) crop stays mostly inside the image.
    tx = _uniform(n, -1.0, 1.0, gen) * (1.0 - sx).clamp_min(0.0)
    ty = _uniform(n, -1.0, 1.0, gen) * (1.0 - sy).clamp_min(0.0)
    flip = torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0) if aug.flip else torch.ones(n)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1], theta[:, 0, 2] = cos * sx * flip, -sin * sy, tx
    theta[:, 1, 0], theta[:, 1, 1], theta[:, 1, 2] = sin * sx * flip, cos * sy, ty
    return theta


def warp(images: torch.Tensor, theta: torch.Tensor, size: int) -> torch.Tensor:
    """Sample ``size`` x ``size`` views of [0, 1] images through ``theta``; outside the image is black
    (as the C protocol's zero padding)."""
    grid = F.affine_grid(theta, [len(images), 3, size, size], align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def jitter_colours(images: torch.Tensor, aug: Augment, gen: torch.Generator) -> torch.Tensor:
    """Per-image brightness, contrast, saturation, channel permutation and greyscale, clamped to [0, 1]."""
    n = len(images)
    out = images * _uniform(n, 1 - aug.brightness, 1 + aug.brightness, gen).view(n, 1, 1, 1)
    mean = out.mean(dim=(1, 2, 3), keepdim=True)
    out = (out - mean) * _uniform(n, 1 - aug.contrast, 1 + aug.contrast, gen).view(n, 1, 1, 1) + mean
    grey = out.mean(dim=1, keepdim=True)
    out = (out - grey) * _uniform(n, 1 - aug.saturation, 1 + aug.saturation, gen).view(n, 1, 1, 1) + grey
    perms = torch.stack([torch.randperm(3, generator=gen) for _ in range(n)])
    shuffle = torch.rand(n, generator=gen) < aug.channel_shuffle
    perms[~shuffle] = torch.arange(3)
    out = torch.gather(out, 1, perms.view(n, 3, 1, 1).expand_as(out))
    to_grey = (torch.rand(n, generator=gen) < aug.grayscale).view(n, 1, 1, 1)
    out = torch.where(to_grey, out.mean(dim=1, keepdim=True).expand_as(out), out)
    return out.clamp_(0.0, 1.0)


def cell_centres(grid: int) -> torch.Tensor:
    """(grid*grid, 2) centres of a square grid's cells in [-1, 1] coordinates (x, y), row-major."""
    coords = (torch.arange(grid, dtype=torch.float32) + 0.5) / grid * 2 - 1
    ys, xs = torch.meshgrid(coords, coords, indexing="ij")
    return torch.stack([xs.flatten(), ys.flatten()], dim=-1)


def map_between_views(points: torch.Tensor, theta_from: torch.Tensor, theta_to: torch.Tensor) -> torch.Tensor:
    """Points (P, 2) of view "from" -> (B, P, 2) positions in view "to" (both [-1, 1] coordinates)."""
    homogeneous = torch.cat([points, torch.ones(len(points), 1)], dim=-1)  # (P, 3)
    in_image = torch.einsum("bij,pj->bpi", theta_from, homogeneous)  # (B, P, 2)
    linear, shift = theta_to[:, :, :2], theta_to[:, :, 2]
    return torch.einsum("bij,bpj->bpi", torch.linalg.inv(linear), in_image - shift[:, None, :])
