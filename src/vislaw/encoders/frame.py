"""Framing images into the encoder's square input, and mapping keypoints into the same frame.

METHOD's C protocol: zero-pad the image to a square (aspect kept, image centred), resize to the encoder's
input resolution, and express keypoints in that padded square scaled to a reference size (840 px), so the
feature grid and the keypoints cover the same frame. ``stretch`` resizes to a square without padding: the
paper's code did this (disagreeing with its own padded keypoint frame); offered only to replicate it. ``crop``
keeps the centred square of the short side, then resizes: the region CLIP's image processor (resize the short
side, crop the centre) and so LLaVA's stage 1 give the encoder, for caption sets only (it cuts keypoints off).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    import torch

# PIL bicubic (with its built-in antialiasing on downscaling): recorded in every cache's protocol.
RESAMPLE = "PIL.BICUBIC"
# The framings below; `vislaw.encoders.spec.FRAME_MODES` names the same (spec stays free of numpy and PIL, which
# the workflow's parse would otherwise import; tests/test_encoders.py checks they agree).
FRAME_MODES = ("pad", "stretch", "crop")


@dataclass(frozen=True)
class SquareFrame:
    """How an image of ``width`` x ``height`` pixels sits in the square frame (``mode``: pad, stretch or crop)."""

    width: int
    height: int
    mode: str = "pad"

    @property
    def side(self) -> int:
        return min(self.width, self.height) if self.mode == "crop" else max(self.width, self.height)

    @property
    def offset(self) -> tuple[int, int]:
        """(left, top) zero padding in original pixels; (0, 0) when stretching; negative: the crop's corner."""
        if self.mode == "stretch":
            return 0, 0
        if self.mode == "crop":
            return -((self.width - self.side) // 2), -((self.height - self.side) // 2)
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
    if mode not in FRAME_MODES:
        raise ValueError(f"frame mode must be one of {FRAME_MODES}, got {mode!r}")
    if mode == "pad" and image.width != image.height:
        canvas = Image.new("RGB", (frame.side, frame.side), (0, 0, 0))
        canvas.paste(image, frame.offset)
        image = canvas
    elif mode == "crop" and image.width != image.height:
        left, top = (-v for v in frame.offset)
        image = image.crop((left, top, left + frame.side, top + frame.side))
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BICUBIC)
    return image, frame


def frame_tensors(images: Sequence[torch.Tensor], size: int, mode: str = "pad") -> torch.Tensor:
    """`frame_image` on decoded images, with torch ops on their device: (B, 3, size, size) uint8.

    ``images``: (3, h, w) uint8 RGB tensors on one device (a GPU decoder's output, say). The result is
    PIL's to within one level on a few pixels in ten thousand (tests/test_jpeg.py): PIL resizes in two
    separable passes and stores the intermediate as rounded uint8; the same two passes are made here with
    torch's antialiased bicubic (PIL's a = -0.5 kernel), rounding in between, in the order PIL takes for
    that shape (`pil_pass_order`). Images of one shape are framed together, so a batch of SPair images
    costs a few kernels per distinct shape.
    """
    import torch

    if mode not in FRAME_MODES:
        raise ValueError(f"frame mode must be one of {FRAME_MODES}, got {mode!r}")
    if not images:
        raise ValueError("no images to frame")
    device = images[0].device
    out = torch.empty((len(images), 3, size, size), dtype=torch.uint8, device=device)
    by_shape: dict[tuple[int, int], list[int]] = {}
    for i, image in enumerate(images):
        if image.dtype != torch.uint8 or image.dim() != 3 or image.shape[0] != 3:
            raise ValueError(f"image {i}: expected a (3, h, w) uint8 tensor, got {tuple(image.shape)} {image.dtype}")
        by_shape.setdefault((int(image.shape[1]), int(image.shape[2])), []).append(i)
    for (height, width), rows in by_shape.items():
        group = torch.stack([images[i] for i in rows])
        frame = SquareFrame(width, height, mode)
        if mode == "pad" and width != height:
            canvas = torch.zeros((len(rows), 3, frame.side, frame.side), dtype=torch.uint8, device=device)
            left, top = frame.offset
            canvas[:, :, top : top + height, left : left + width] = group
            group = canvas
        elif mode == "crop" and width != height:
            left, top = (-v for v in frame.offset)
            group = group[:, :, top : top + frame.side, left : left + frame.side]
        out[rows] = _pil_like_resize(group, size, size)
    return out


def _pil_like_resize(group: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(b, 3, h, w) uint8 -> (b, 3, height, width) uint8 in PIL's two rounded bicubic passes."""
    import torch

    h, w = int(group.shape[2]), int(group.shape[3])
    if (h, w) == (height, width):
        return group
    x = group.float()
    for axis in pil_pass_order(w, h, width, height):
        if axis == "horizontal" and w != width:
            x = _bicubic(x, x.shape[2], width)
        elif axis == "vertical" and h != height:
            x = _bicubic(x, height, x.shape[3])
    return x.to(torch.uint8)


def _bicubic(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    import torch.nn.functional as F

    x = F.interpolate(x, size=(int(height), int(width)), mode="bicubic", antialias=True, align_corners=False)
    return x.round_().clamp_(0, 255)


@lru_cache(maxsize=4096)
def pil_pass_order(width: int, height: int, out_width: int, out_height: int) -> tuple[str, str]:
    """The order of PIL's two resize passes for this shape, found by asking PIL once per shape.

    Pillow's C code has run the horizontal pass first, but the installed Pillow (13) runs the vertical one
    first for some shapes (a width that grows while the height shrinks, and others), and the order decides
    the rounding of the uint8 intermediate (a quarter of the pixels move by a level or more). So a small
    random image of the same shapes is resized by PIL and by both orders here, and the closer order wins.
    """
    import torch

    rng = np.random.default_rng(0)
    probe = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    expected = np.asarray(Image.fromarray(probe).resize((out_width, out_height), Image.Resampling.BICUBIC))
    x = torch.from_numpy(probe.copy()).permute(2, 0, 1)[None].float()
    horizontal_first = _bicubic(_bicubic(x, height, out_width), out_height, out_width)
    vertical_first = _bicubic(_bicubic(x, out_height, width), out_height, out_width)

    def mismatches(y: torch.Tensor) -> int:
        return int((y[0].permute(1, 2, 0).numpy().astype(np.uint8) != expected).sum())

    if mismatches(vertical_first) < mismatches(horizontal_first):
        return ("vertical", "horizontal")
    return ("horizontal", "vertical")


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
    padded = mode == "pad"
    record = {"frame": mode, "pad_value": 0 if padded else None, "pad_anchor": "center" if padded else None,
              "resize": RESAMPLE, "size": size, "range": "[0,1] then (x - mean) / std inside the encoder"}
    if mode == "crop":  # only then: the other frames' protocols (and hashes) stay as they were
        record["crop"] = "the short side's centred square, then resized"
    return record
