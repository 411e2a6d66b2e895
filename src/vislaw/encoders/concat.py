"""Kind ``concat``: two or more encoders joined as METHOD.md says.

Each part sees the concat's framed image (resized to the part's own resolution where that differs: not the
part's own framing of the original image; recorded by `part_input_record`) and gives its own spec layer's
patch tokens; a part whose grid differs from the shared grid is resampled onto it (recorded by
`resampling_record`); each part is L2-normalised per token, the parts are concatenated along channels, and
the result is L2-normalised again.

options:
    grid: [rows, cols] shared grid (default: the first part's).
    resample: torch interpolate mode for parts off that grid (default ``bilinear``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vislaw.encoders.base import Encoder, unit_range
from vislaw.encoders.registry import create_encoder, register_encoder
from vislaw.encoders.spec import EncoderConfigError, EncoderSpec

RESAMPLE_MODES = ("bilinear", "bicubic", "nearest", "area")
# How `ConcatEncoder.tokens` resizes its framed image for a part at another resolution.
PART_INPUT_RESIZE = "bicubic, antialiased, clamped to [0, 1]"


class ConcatEncoder(Encoder):
    def __init__(self, spec: EncoderSpec, parts: list[Encoder]) -> None:
        super().__init__(spec)
        self.parts = nn.ModuleList(parts)
        self.resample = str(spec.options.get("resample", "bilinear"))
        if self.resample not in RESAMPLE_MODES:
            raise EncoderConfigError(f"{spec.key('options')}: resample must be one of {RESAMPLE_MODES}")
        self.num_layers = 1  # the concat has one "layer": its spec layer, each part using its own

    def tokens(self, x: torch.Tensor, layers: tuple[int, ...] | None = None) -> dict[int, torch.Tensor]:
        if layers is not None and tuple(layers) != (self.spec.layer,):
            raise EncoderConfigError(
                f"{self.spec.key('layer')}: a concat gives only its own layer; set each part's layer instead"
            )
        size = self.spec.image_size
        x = unit_range(x)  # parts are resized in float
        if x.ndim != 4 or tuple(x.shape[-2:]) != (size, size):
            raise ValueError(f"{self.spec.key('image_size')}: expected input (B, 3, {size}, {size}), got {tuple(x.shape)}")
        rows, cols = self.grid
        joined = []
        for part in self.parts:
            part_size = part.spec.image_size
            part_x = x if part_size == size else F.interpolate(
                x, size=(part_size, part_size), mode="bicubic", antialias=True, align_corners=False
            ).clamp_(0.0, 1.0)
            tokens = part.tokens(part_x)[part.spec.layer]
            if part.grid != (rows, cols):
                b, _, d = tokens.shape
                grid = tokens.transpose(1, 2).reshape(b, d, *part.grid)
                grid = F.interpolate(grid, size=(rows, cols), mode=self.resample,
                                     **({} if self.resample in ("nearest", "area") else {"align_corners": False}))
                tokens = grid.flatten(2).transpose(1, 2)
            joined.append(F.normalize(tokens.float(), dim=-1))
        return {self.spec.layer: F.normalize(torch.cat(joined, dim=-1), dim=-1)}


def resampling_record(spec: EncoderSpec) -> list[dict[str, object]]:
    """Which parts (by position: config keys are not part of a protocol) are resampled onto the shared grid."""
    target = list(spec.grid)
    mode = str(spec.options.get("resample", "bilinear"))
    return [
        {"part": i, "from": list(part.grid), "to": target, "mode": mode}
        for i, part in enumerate(spec.parts)
        if list(part.grid) != target
    ]


def part_input_record(spec: EncoderSpec) -> list[dict[str, object]]:
    """Which parts (by position) see the concat's framed image resized to their own resolution."""
    return [
        {"part": i, "input": "concat's framed image", "from": spec.image_size, "to": part.image_size,
         "resize": PART_INPUT_RESIZE}
        for i, part in enumerate(spec.parts)
        if part.image_size != spec.image_size
    ]


@register_encoder("concat")
def build_concat(spec: EncoderSpec) -> ConcatEncoder:
    if len(spec.parts) < 2:
        raise EncoderConfigError(f"{spec.key('parts')}: a concat needs at least two parts")
    if not spec.drop_prefix or not all(part.drop_prefix for part in spec.parts):
        raise EncoderConfigError(f"{spec.key('drop_prefix')}: a concat joins patch grids; prefix tokens must be dropped")
    return ConcatEncoder(spec, [create_encoder(part) for part in spec.parts])
