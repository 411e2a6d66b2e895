"""Framing images into the encoder's square input, and mapping keypoints into the same frame.

METHOD's C protocol: zero-pad the image to a square (aspect kept, image centred), resize to the encoder's
input resolution, and express keypoints in that padded square scaled to a reference size (840 px), so the
feature grid and the keypoints cover the same frame. ``stretch`` resizes to a square without padding: the
paper's code did this (disagreeing with its own padded keypoint frame); offered only to replicate it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    import torch

# PIL bicubic (with its built-in antialiasing on downscaling): recorded in every cache's protocol.
RESAMPLE = "PIL.BICUBIC"


@dataclass(frozen=True)
class SquareFrame:
    """How an image of ``width`` x ``height`` pixels sits in the square frame (``mode``: pad or stretch)."""

    width: int
    height: int
    mode: str = "pad"

    @property
    def side(self) -> int:
        return max(self.width, self.height)

    @property
    def offset(self) -> tuple[int, int]:
        """(left, top) zero padding in original pixels; (0, 0) when stretching."""
        if self.mode == "stretch":
            return 0, 0
        return (self.side - self.width) // 2, (self.side - self.height) // 2

    def to_frame(self, xy: np.ndarray | Sequence[Sequence[float]], size: int) -> np.ndarray:
        """Map (N, 2) points (x, y) in original image pixels into the square frame scaled to ``size`` px."""
        points = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
        if self.mode == "stretch":
            scale = np.array([size / self.width, size / self.height])
            return points * scale
        left, top = self.offset
        return (points + np.array([left, top])) * (size / self.side)

    def from_frame(self, xy: np.ndarray | Sequence[Sequence[float]], size: int) -> np.ndarray:
        """Inverse of `to_frame`."""
        points = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
        if self.mode == "stretch":
            return points / np.array([size / self.width, size / self.height])
        left, top = self.offset
        return points * (self.side / size) - np.array([left, top])


def frame_image(image: Image.Image, size: int, mode: str = "pad") -> tuple[Image.Image, SquareFrame]:
    """RGB square image of ``size`` px plus the frame that maps keypoints into it."""
    image = image.convert("RGB")
    frame = SquareFrame(image.width, image.height, mode)
    if mode == "pad" and image.width != image.height:
        canvas = Image.new("RGB", (frame.side, frame.side), (0, 0, 0))
        canvas.paste(image, frame.offset)
        image = canvas
    elif mode not in ("pad", "stretch"):
        raise ValueError(f"frame mode must be 'pad' or 'stretch', got {mode!r}")
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BICUBIC)
    return image, frame


def to_tensor(image: Image.Image) -> torch.Tensor:
    """(3, H, W) float32 in [0, 1]."""
    import torch  # here, not at the top: framing worker processes (vislaw.loader) import this module only

    array = np.asarray(image, dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255.0)


def framed_pixels(path: str | os.PathLike[str], size: int, mode: str = "pad") -> np.ndarray:
    """One image loaded and framed: (size, size, 3) uint8 RGB."""
    with Image.open(path) as image:
        framed, _ = frame_image(image, size, mode)
    return np.asarray(framed, dtype=np.uint8)


def load_framed(paths: Sequence[str | os.PathLike[str]], size: int, mode: str = "pad") -> torch.Tensor:
    """Load, frame and stack images: (B, 3, size, size) in [0, 1]."""
    import torch

    return torch.stack([
        torch.from_numpy(framed_pixels(path, size, mode).copy()).permute(2, 0, 1).float().div_(255.0) for path in paths
    ])


def preprocessing_record(size: int, mode: str) -> dict[str, object]:
    """What `load_framed` does, for the cache protocol."""
    return {"frame": mode, "pad_value": 0 if mode == "pad" else None, "pad_anchor": "center" if mode == "pad" else None,
            "resize": RESAMPLE, "size": size, "range": "[0,1] then (x - mean) / std inside the encoder"}
