"""The mini zoo's backbones: a small ViT (patch 8, one CLS token), a small CNN (stride 8) and a small U-Net.

All give ``features(x, indices) -> {index: (B, prefix + h*w, D)}`` for 0-based block indices, where ``x``
is already normalised. Block ``k``'s output is taken before the final norm, as transformers'
``hidden_states[k + 1]`` and timm's ``forward_intermediates(norm=False)``, so the spec's ``layer: -2``
means the same thing for every kind. On 96-px inputs all give a 12x12 grid, on 64-px inputs 8x8.

The U-Net (the denoising objective's backbone, the diffusion analogue) runs on a stride-4 space-to-depth
view of the image, goes down to stride 16 and back up, with skip connections, to pixels. Its "layers" are
the blocks along that path that live at or next to stride 8, each read on the stride-8 grid: 0 = the
encoder's stride-8 block (the skip), 1 = the stride-16 middle block (nearest-upsampled to stride 8), 2 = the
first up-sampling block (stride 8: deep context joined with the skip; what DIFT reads from SD's U-Net),
3 = the next up-block (stride 4, average-pooled to stride 8). So ``layer: -2`` is the first up-block, as
for DIFT.

An architecture is a plain dict (``{"arch": "vit", "dim": 96, ...}``): it is what ``options`` of a ``mini``
encoder entry holds and what a checkpoint records, so the two can be compared key by key.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vislaw.zoo.settings import ARCH_DEFAULTS, PATCH, ArchitectureError, resolve_architecture  # noqa: F401


def build_backbone(arch: Mapping[str, Any]) -> Backbone:
    arch = resolve_architecture(arch)
    if arch["arch"] == "vit":
        return MiniViT(dim=arch["dim"], depth=arch["depth"], heads=arch["heads"], mlp_ratio=arch["mlp_ratio"],
                       stem=tuple(arch["stem"]), image_size=arch["image_size"])
    if arch["arch"] == "unet":
        return MiniUNet(dim=arch["dim"], deep=arch["deep"], stem=tuple(arch["stem"]))
    return MiniCNN(dim=arch["dim"], depth=arch["depth"], stem=tuple(arch["stem"]))


class Backbone(nn.Module):
    """Common surface of the two backbones."""

    dim: int
    depth: int
    num_prefix_tokens: int
    patch: int = PATCH

    def features(self, x: torch.Tensor, indices: Sequence[int]) -> dict[int, torch.Tensor]:
        raise NotImplementedError

    def forward_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Last block's tokens (prefix first), after the final norm: what training heads read."""
        raise NotImplementedError


def conv_stem(widths: Sequence[int]) -> list[nn.Module]:
    """Stride-2 3x3 convs (GroupNorm, GELU) through ``widths`` (input channels first)."""
    layers: list[nn.Module] = []
    for c_in, c_out in zip(widths[:-1], widths[1:], strict=True):
        layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), nn.GroupNorm(min(8, c_out), c_out), nn.GELU()]
    return layers


def patch_embedding(dim: int, stem: Sequence[int]) -> nn.Module:
    """Pixels -> (B, dim, S/8, S/8): a linear 8x8 patchify, or stride-2 convs then a last stride-2 conv."""
    if not stem:
        return nn.Conv2d(3, dim, kernel_size=PATCH, stride=PATCH)
    if len(stem) != int(math.log2(PATCH)) - 1:
        raise ArchitectureError(f"a conv stem needs {int(math.log2(PATCH)) - 1} widths to reach stride {PATCH}")
    return nn.Sequential(*conv_stem([3, *stem]), nn.Conv2d(stem[-1], dim, 3, stride=2, padding=1))


class Block(nn.Module):
    """Pre-norm transformer block (attention + GELU MLP)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class MiniViT(Backbone):
    """ViT with 8-px patches, a CLS token and learned position embeddings (resampled for other grids)."""

    def __init__(self, dim: int, depth: int, heads: int, mlp_ratio: float, stem: Sequence[int],
                 image_size: int) -> None:
        super().__init__()
        self.dim, self.depth, self.num_prefix_tokens = dim, depth, 1
        self.train_grid = image_size // PATCH
        self.patch_embed = patch_embedding(dim, stem)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.train_grid**2, dim))
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self._init_weights()

    def _init_weights(self) -> None:
        # timm's ViT init: truncated normal (std 0.02) for embeddings and linears, zero biases.
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.MultiheadAttention):
                nn.init.trunc_normal_(module.in_proj_weight, std=0.02)
                nn.init.zeros_(module.in_proj_bias)

    def _positions(self, grid: tuple[int, int]) -> torch.Tensor:
        if grid == (self.train_grid, self.train_grid):
            return self.pos_embed
        cls_pos, patch_pos = self.pos_embed[:, :1], self.pos_embed[:, 1:]
        side = self.train_grid
        patch_pos = patch_pos.reshape(1, side, side, self.dim).permute(0, 3, 1, 2)
        patch_pos = F.interpolate(patch_pos, size=grid, mode="bicubic", align_corners=False)
        return torch.cat([cls_pos, patch_pos.flatten(2).transpose(1, 2)], dim=1)

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        patches = self.patch_embed(x)
        grid = (patches.shape[-2], patches.shape[-1])
        tokens = patches.flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls_token.expand(len(x), -1, -1), tokens], dim=1)
        return tokens + self._positions(grid)

    def features(self, x: torch.Tensor, indices: Sequence[int]) -> dict[int, torch.Tensor]:
        wanted = set(indices)
        out: dict[int, torch.Tensor] = {}
        tokens = self._embed(x)
        for index, block in enumerate(self.blocks):
            tokens = block(tokens)
            if index in wanted:
                out[index] = tokens
            if len(out) == len(wanted):
                break  # later blocks change nothing that was asked for
        return out

    def forward_tokens(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self._embed(x)
        for block in self.blocks:
            tokens = block(tokens)
        return self.norm(tokens)


class ResBlock(nn.Module):
    """Two 3x3 convs with GroupNorm; the second dilated so that a few blocks see whole objects."""

    def __init__(self, dim: int, dilation: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(dim, dim, 3, padding=1), nn.GroupNorm(8, dim), nn.GELU(),
            nn.Conv2d(dim, dim, 3, padding=dilation, dilation=dilation), nn.GroupNorm(8, dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(x + self.body(x))


class MiniCNN(Backbone):
    """Stride-8 stem (three stride-2 convs), then ``depth`` residual blocks at stride 8 (the layers)."""

    def __init__(self, dim: int, depth: int, stem: Sequence[int]) -> None:
        super().__init__()
        self.dim, self.depth, self.num_prefix_tokens = dim, depth, 0
        if len(stem) != int(math.log2(PATCH)) - 1:
            raise ArchitectureError(f"cnn stem needs {int(math.log2(PATCH)) - 1} widths to reach stride {PATCH}")
        self.stem = nn.Sequential(*conv_stem([3, *stem, dim]))
        self.blocks = nn.ModuleList(ResBlock(dim, dilation=2 if i % 2 else 1) for i in range(depth))
        self.norm = nn.LayerNorm(dim)

    def _maps(self, x: torch.Tensor, indices: set[int]) -> dict[int, torch.Tensor]:
        out: dict[int, torch.Tensor] = {}
        feature = self.stem(x)
        for index, block in enumerate(self.blocks):
            feature = block(feature)
            if index in indices:
                out[index] = feature
            if len(out) == len(indices):
                break
        return out

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """Last block's (B, D, h, w) map: what the denoising decoder reads."""
        return self._maps(x, {self.depth - 1})[self.depth - 1]

    def features(self, x: torch.Tensor, indices: Sequence[int]) -> dict[int, torch.Tensor]:
        return {i: m.flatten(2).transpose(1, 2) for i, m in self._maps(x, set(indices)).items()}

    def forward_tokens(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.features(x, [self.depth - 1])[self.depth - 1])


def _conv(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    """3x3 conv, GroupNorm, GELU."""
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1), nn.GroupNorm(min(8, c_out), c_out),
                         nn.GELU())


class MiniUNet(Backbone):
    """Denoising U-Net on a stride-4 "latent": down to stride 16, back up with skips, out to pixels.

    As Stable Diffusion runs its U-Net on a VAE latent (stride 8), this one runs on a space-to-depth
    (pixel-unshuffle 4) view of the image, which keeps full-resolution convolutions out of the one-core
    budget. Down: a conv to ``stem[0]`` at stride 4, a stride-2 conv to ``dim`` (stride 8, + a residual block)
    and to ``deep`` (stride 16, + a dilated residual block). Up: each block nearest-upsamples, concatenates
    the skip of its stride and applies a conv (the stride-8 one also a residual block); `reconstruct` ends
    in a conv to 48 channels and a pixel shuffle back to RGB. Layers: see the module docstring.
    """

    LAYERS = ("down8", "mid16", "up8", "up4")
    LATENT = 4  # space-to-depth factor of the input

    def __init__(self, dim: int, deep: int, stem: Sequence[int]) -> None:
        super().__init__()
        if len(stem) != 1:
            raise ArchitectureError("unet stem is one width: the stride-4 level's")
        (s4,) = stem
        self.dim, self.depth, self.num_prefix_tokens = dim, len(self.LAYERS), 0
        pixels = 3 * self.LATENT**2
        self.inc = nn.Sequential(nn.PixelUnshuffle(self.LATENT), _conv(pixels, s4))
        self.down8 = nn.Sequential(_conv(s4, dim, 2), ResBlock(dim, dilation=1))
        self.mid16 = nn.Sequential(_conv(dim, deep, 2), ResBlock(deep, dilation=2))
        self.up8 = nn.Sequential(_conv(deep + dim, dim), ResBlock(dim, dilation=1))
        self.up4 = _conv(dim + s4, s4)
        self.out = nn.Sequential(nn.Conv2d(s4, pixels, 3, padding=1), nn.PixelShuffle(self.LATENT))

    @staticmethod
    def _join(x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return torch.cat([F.interpolate(x, size=skip.shape[-2:], mode="nearest"), skip], dim=1)

    def _run(self, x: torch.Tensor, until: int) -> dict[str, torch.Tensor]:
        """Maps up to layer ``until`` along the path, and the stride-4 skip ``s4``."""
        maps = {"s4": self.inc(x)}
        maps["down8"] = self.down8(maps["s4"])
        if until >= 1:
            maps["mid16"] = self.mid16(maps["down8"])
        if until >= 2:
            maps["up8"] = self.up8(self._join(maps["mid16"], maps["down8"]))
        if until >= 3:
            maps["up4"] = self.up4(self._join(maps["up8"], maps["s4"]))
        return maps

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """The denoiser's output (B, 3, H, W) for (noisy) normalised pixels ``x``."""
        return self.out(self._run(x, len(self.LAYERS))["up4"])

    def _on_grid(self, maps: dict[str, torch.Tensor], index: int) -> torch.Tensor:
        feature, grid = maps[self.LAYERS[index]], maps["down8"].shape[-2:]
        if feature.shape[-2] < grid[0]:  # stride 16 -> 8
            return F.interpolate(feature, size=grid, mode="nearest")
        if feature.shape[-2] > grid[0]:  # stride 4 -> 8
            return F.adaptive_avg_pool2d(feature, grid)
        return feature

    def feature_map(self, x: torch.Tensor, index: int = 2) -> torch.Tensor:
        """Layer ``index``'s (B, C, h, w) map on the stride-8 grid; default the first up-block."""
        return self._on_grid(self._run(x, index), index)

    def features(self, x: torch.Tensor, indices: Sequence[int]) -> dict[int, torch.Tensor]:
        if not indices:
            return {}
        maps = self._run(x, max(indices))
        return {i: self._on_grid(maps, i).flatten(2).transpose(1, 2) for i in set(indices)}

    def forward_tokens(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x, [2])[2]
