"""Rasterise a ``SceneSpec``: an RGB image and an object-id mask.

Shapes are drawn with Pillow at ``SUPERSAMPLE`` times the resolution and box-averaged down, which gives
anti-aliased edges and exact sub-pixel placement. The same scene always gives the same bytes (no RNG other
than the scene's own ``noise_seed``).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from vislaw.data.scene import COLOURS, BackgroundSpec, ClutterSpec, LightingSpec, ObjectSpec, SceneSpec

SUPERSAMPLE = 3
PIXEL_NOISE_STD = 0.012  # sensor-like noise, as a fraction of full scale
# A pixel belongs to the front-most object that covers at least this fraction of it: anti-aliased edge
# pixels count as the object's outline, so that sharp tips (a star's, a moon's horns) stay in the mask.
MASK_COVERAGE = 0.25


@dataclass(frozen=True)
class Rendered:
    image: np.ndarray  # (H, W, 3) uint8
    object_ids: np.ndarray  # (H, W) int16: index into scene.objects of the front-most object, -1 for none


def _pixel_centres(width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    return xs + 0.5, ys + 0.5


def _rgb(colour: tuple[int, int, int]) -> np.ndarray:
    return np.asarray(colour, dtype=np.float64) / 255.0


def _mix(a: np.ndarray, b: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Per-pixel blend of two RGB colours by t (H, W) -> float32 (H, W, 3)."""
    a32 = a.astype(np.float32)
    return a32 + (b - a).astype(np.float32) * t.astype(np.float32)[..., None]


@dataclass(frozen=True)
class Region:
    """A pixel rectangle [x0, x1) x [y0, y1) of the image; layers are drawn and composited only inside it."""

    x0: int
    y0: int
    x1: int
    y1: int

    @property
    def slices(self) -> tuple[slice, slice]:
        return slice(self.y0, self.y1), slice(self.x0, self.x1)

    def canvas_points(self, points: np.ndarray, s: int) -> list[float]:
        """Image points (N, 2) as the flat [x0, y0, x1, y1, ...] list Pillow draws, on an s-times canvas."""
        return ((np.asarray(points, dtype=np.float64) - (self.x0, self.y0)) * s).ravel().tolist()


def region_around(points: np.ndarray, width: int, height: int, pad: float) -> Region | None:
    """The pixels within ``pad`` of the points' box, clipped to the image; None if nothing is left."""
    x0 = max(int(math.floor(points[:, 0].min() - pad)), 0)
    y0 = max(int(math.floor(points[:, 1].min() - pad)), 0)
    x1 = min(int(math.ceil(points[:, 0].max() + pad)), width)
    y1 = min(int(math.ceil(points[:, 1].max() + pad)), height)
    return Region(x0, y0, x1, y1) if x1 > x0 and y1 > y0 else None


def background_image(spec: BackgroundSpec, xs: np.ndarray, ys: np.ndarray, noise_seed: int) -> np.ndarray:
    """The background over the pixel centres ``xs``, ``ys`` (H, W) -> float32 (H, W, 3)."""
    height, width = xs.shape
    a, b = _rgb(spec.colour_a), _rgb(spec.colour_b)
    theta = math.radians(spec.angle)
    along = xs * math.cos(theta) + ys * math.sin(theta)
    across = -xs * math.sin(theta) + ys * math.cos(theta)
    if spec.kind == "gradient":
        t = (along - along.min()) / max(float(np.ptp(along)), 1e-9)
    elif spec.kind == "stripes":
        t = 0.5 + 0.5 * np.sin(2 * math.pi * along / spec.period)
    elif spec.kind == "checker":
        t = ((np.floor(along / spec.period) + np.floor(across / spec.period)) % 2).astype(np.float64)
    elif spec.kind == "noise":
        rng = np.random.default_rng([noise_seed, 1])
        coarse = rng.uniform(0, 1, size=(6, 6)).astype(np.float32)
        t = np.asarray(Image.fromarray(coarse, mode="F").resize((width, height), Image.Resampling.BICUBIC))
        t = np.clip(t, 0, 1).astype(np.float64)
    elif spec.kind == "dots":
        u, v = along / spec.period, across / spec.period
        t = (np.hypot(u - np.round(u), v - np.round(v)) < 0.28).astype(np.float64)
    else:
        raise ValueError(f"unknown background kind {spec.kind!r}")
    return _mix(a, b, t)


def _texture(obj: ObjectSpec, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Pattern in [0, 1] defined in the object's canonical frame, so it moves and turns with the object."""
    uv = obj.to_canonical(np.stack([xs.ravel(), ys.ravel()], axis=1))
    u, v = uv[:, 0].reshape(xs.shape), uv[:, 1].reshape(xs.shape)
    theta = math.radians(obj.texture_angle)
    along = (u * math.cos(theta) + v * math.sin(theta)) / obj.texture_period
    across = (-u * math.sin(theta) + v * math.cos(theta)) / obj.texture_period
    if obj.texture == "solid":
        return np.zeros_like(u)
    if obj.texture == "stripes":
        return np.floor(along) % 2
    if obj.texture == "dots":
        return (np.hypot(along - np.round(along), across - np.round(across)) < 0.3).astype(np.float64)
    if obj.texture == "checker":
        return (np.floor(along) + np.floor(across)) % 2
    if obj.texture == "shaded":
        return np.clip(np.hypot(u + 0.3, v + 0.3) / 1.6, 0, 1)
    raise ValueError(f"unknown texture {obj.texture!r}")


def _shade_of(base: np.ndarray) -> np.ndarray:
    # Dark colours get lighter patterns, light ones darker, so that a texture is visible on any colour.
    luminance = float(base @ np.array([0.299, 0.587, 0.114]))
    return base + (1 - base) * 0.55 if luminance < 0.4 else base * 0.6


@functools.cache  # the bundled font at a given size: immutable, and loading it is the slow part of a glyph
def _font(size_px: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size_px)


def glyph_size_px(obj: ObjectSpec) -> int:
    # 0.95 of the half-extent: 15-22 px on a 96 px image, 10-15 px on the 64 px encoder's input
    return max(6, round(0.95 * obj.scale))


# Classes painted into the object's 4-channel canvas. Every supersampled pixel holds exactly one class, so
# after box-averaging channel 0 is the object's coverage and channels 1-3 the (disjoint) fractions of
# outline, detail and glyph; the textured fill covers what is left. One canvas per object instead of four.
# The canvas is a "CMYK" image used as plain 4 channels: Pillow's reduce would premultiply an RGBA alpha.
_FILL_INK = (255, 0, 0, 0)
_OUTLINE_INK = (255, 255, 0, 0)
_DETAIL_INK = (255, 0, 255, 0)
_GLYPH_INK = (255, 0, 0, 255)


def _object_layers(obj: ObjectSpec, region: Region) -> np.ndarray:
    """Coverage fractions (h, w, 4) over the region: total, outline, detail, glyph."""
    s = SUPERSAMPLE
    canvas = Image.new("CMYK", ((region.x1 - region.x0) * s, (region.y1 - region.y0) * s), (0, 0, 0, 0))
    draw = ImageDraw.Draw(canvas)
    body = obj.body_polygons()
    for poly in body:
        draw.polygon(region.canvas_points(poly, s), fill=_FILL_INK)
    for poly in obj.detail_polygons():
        draw.polygon(region.canvas_points(poly, s), fill=_DETAIL_INK)
    for poly in body:
        draw.polygon(region.canvas_points(poly, s), outline=_OUTLINE_INK, width=s)
    if obj.glyph is not None:
        x, y = region.canvas_points(obj.glyph_position()[None, :], s)
        size = glyph_size_px(obj) * s
        # bold strokes (1/12 of the font): the default font's 1-2 px strokes blur away at the encoders' stride
        draw.text((x, y), obj.glyph, fill=_GLYPH_INK, font=_font(size), anchor="mm", stroke_width=max(1, size // 12),
                  stroke_fill=_GLYPH_INK)
    return np.asarray(canvas.reduce(s), dtype=np.float32) / np.float32(255.0)


def apply_lighting(image: np.ndarray, spec: LightingSpec, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    height, width = xs.shape
    theta = math.radians(spec.gradient_angle)
    along = ((xs - width / 2) * math.cos(theta) + (ys - height / 2) * math.sin(theta)) / max(width, height)
    gain = (spec.gain * (1 + spec.gradient_amplitude * along)).astype(np.float32)
    return image * gain[..., None] * np.asarray(spec.tint, dtype=np.float32)[None, None, :]


def _luminance(rgb: np.ndarray) -> float:
    return float(rgb @ np.array([0.299, 0.587, 0.114]))


def _draw_object(
    image: np.ndarray, ids: np.ndarray, index: int, obj: ObjectSpec, xs: np.ndarray, ys: np.ndarray
) -> None:
    height, width = ids.shape
    region = region_around(np.concatenate(obj.body_polygons()), width, height, pad=2.0)
    if region is None:  # entirely outside the frame
        return
    layers = _object_layers(obj, region)
    total, outline, detail, glyph = (layers[..., c, None] for c in range(4))
    base = _rgb(COLOURS[obj.colour])
    fill = _mix(base, _shade_of(base), 0.8 * _texture(obj, xs[region.slices], ys[region.slices]))
    ink = np.ones(3) if _luminance(base) < 0.55 else np.zeros(3)
    crop = image[region.slices]
    crop *= 1 - total
    crop += fill * np.clip(total - outline - detail - glyph, 0, 1)
    crop += _rgb(COLOURS[obj.detail_colour]).astype(np.float32) * detail
    crop += (base * 0.45).astype(np.float32) * outline
    crop += ink.astype(np.float32) * glyph
    ids[region.slices][layers[..., 0] >= MASK_COVERAGE] = index


def _draw_clutter(image: np.ndarray, clutter: tuple[ClutterSpec, ...]) -> None:
    """Paint all clutter at once. The 4-channel canvas (RGB + coverage, "CMYK" so that Pillow does not
    premultiply) starts at zero, so box-averaging yields premultiplied colour and coverage."""
    height, width = image.shape[:2]
    s = SUPERSAMPLE
    region = Region(0, 0, width, height)
    canvas = Image.new("CMYK", (width * s, height * s), (0, 0, 0, 0))
    draw = ImageDraw.Draw(canvas)
    for item in clutter:
        x1, y1, x2, y2 = region.canvas_points(np.array([[item.x1, item.y1], [item.x2, item.y2]]), s)
        box = [min(x1, x2), min(y1, y2), max(x1, x2) + s, max(y1, y2) + s]
        ink = (*item.colour, 255)
        if item.kind == "line":
            draw.line([(x1, y1), (x2, y2)], fill=ink, width=item.width * s)
        elif item.kind == "ring":
            draw.ellipse(box, outline=ink, width=item.width * s)
        elif item.kind == "box":
            draw.rectangle(box, outline=ink, width=item.width * s)
        elif item.kind == "blob":
            draw.ellipse(box, fill=ink)
        else:
            raise ValueError(f"unknown clutter kind {item.kind!r}")
    layer = np.asarray(canvas.reduce(s), dtype=np.float32) / np.float32(255.0)
    image *= 1 - layer[..., 3:]
    image += layer[..., :3]


def render_scene(scene: SceneSpec) -> Rendered:
    w, h = scene.width, scene.height
    xs, ys = _pixel_centres(w, h)
    image = background_image(scene.background, xs, ys, scene.noise_seed)
    if scene.clutter:
        _draw_clutter(image, scene.clutter)
    ids = np.full((h, w), -1, dtype=np.int16)
    for index, obj in enumerate(scene.objects):
        _draw_object(image, ids, index, obj, xs, ys)
    image = apply_lighting(image, scene.lighting, xs, ys)
    # Uniform noise of the same standard deviation: Gaussian sampling would double the rendering time.
    noise = np.random.default_rng([scene.noise_seed, 2]).random(size=image.shape, dtype=np.float32) - 0.5
    image += noise * np.float32(PIXEL_NOISE_STD * math.sqrt(12))
    return Rendered(image=np.clip(np.rint(image * 255), 0, 255).astype(np.uint8), object_ids=ids)
