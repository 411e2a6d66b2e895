"""Scene specifications of the mini-world: what is in an image and where, as plain frozen dataclasses.

A ``SceneSpec`` holds every number the renderer needs, so a scene written to JSON (``scene_to_dict``) can be
rendered again bit for bit (``scene_from_dict`` then ``render.render_scene``). Sampling functions take a
``numpy.random.Generator`` that the caller seeds from (world seed, purpose, index); nothing here touches a
global RNG.

Coordinates are continuous pixel coordinates: x right, y down, pixel (i, j) covers [i, i+1) x [j, j+1), so
the pixel containing a point (x, y) is (floor(x), floor(y)).
"""

from __future__ import annotations

import colorsys
import math
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from vislaw.data.shapes import Category, categories, get_category

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (214, 39, 40),
    "orange": (247, 137, 22),
    "yellow": (242, 216, 40),
    "green": (44, 160, 60),
    "blue": (38, 84, 214),
    "purple": (136, 64, 196),
    "pink": (247, 124, 190),
    "brown": (128, 78, 38),
}
COLOUR_NAMES: tuple[str, ...] = tuple(COLOURS)

# Half-extent of an object (pixels per canonical unit) as a fraction of the image's short side. The classes
# are separated by gaps so that "small / medium / large" can be read off the image.
SIZE_CLASSES: dict[str, tuple[float, float]] = {
    "small": (0.11, 0.135),
    "medium": (0.165, 0.19),
    "large": (0.22, 0.245),
}
SIZE_NAMES: tuple[str, ...] = tuple(SIZE_CLASSES)

TEXTURES: tuple[str, ...] = ("solid", "stripes", "dots", "checker", "shaded")
BACKGROUNDS: tuple[str, ...] = ("gradient", "stripes", "checker", "noise", "dots")
CLUTTER_KINDS: tuple[str, ...] = ("line", "ring", "box", "blob")
# Four glyphs of distinct silhouettes (ring, cross, bars, bar on a post), as many as a question has options.
# Thirty letters and digits left ~10 stage-2 questions per glyph and no zoo encoder kept them in its tokens
# (linear probe 1-7 %, chance 3 %, from the pixels 60 %): bench/MLLM_NOTES.md, session 9.
GLYPHS: tuple[str, ...] = ("O", "X", "H", "T")
MAX_ROTATION_DEG = 30.0


@dataclass(frozen=True)
class ObjectSpec:
    """One object: category, appearance and its placement (the affine map canonical -> image)."""

    category: str
    colour: str
    detail_colour: str
    size: str
    scale: float  # pixels per canonical unit (the object's half-extent)
    aspect: float  # x stretched by sqrt(aspect), y by 1/sqrt(aspect)
    rotation: float  # degrees; positive turns clockwise on screen (y points down)
    cx: float
    cy: float
    texture: str
    texture_period: float  # canonical units
    texture_angle: float  # degrees
    glyph: str | None

    def affine(self) -> np.ndarray:
        """The 2x2 linear part A of the placement: image = A @ canonical + (cx, cy)."""
        theta = math.radians(self.rotation)
        rot = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
        stretch = np.diag([self.scale * math.sqrt(self.aspect), self.scale / math.sqrt(self.aspect)])
        return rot @ stretch

    def to_image(self, points: np.ndarray) -> np.ndarray:
        """Map canonical points (N, 2) to image coordinates (N, 2)."""
        return np.asarray(points, dtype=np.float64) @ self.affine().T + np.array([self.cx, self.cy])

    def to_canonical(self, points: np.ndarray) -> np.ndarray:
        return (np.asarray(points, dtype=np.float64) - np.array([self.cx, self.cy])) @ np.linalg.inv(self.affine()).T

    @property
    def kind(self) -> Category:
        return get_category(self.category)

    def body_polygons(self) -> list[np.ndarray]:
        return [self.to_image(np.array(poly)) for poly in self.kind.body]

    def detail_polygons(self) -> list[np.ndarray]:
        return [self.to_image(np.array(poly)) for poly in self.kind.details]

    def keypoints(self) -> np.ndarray:
        """The category's named keypoints in image coordinates, shape (K, 2), in ``kind.keypoint_names`` order."""
        return self.to_image(self.kind.keypoint_array())

    def glyph_position(self) -> np.ndarray | None:
        anchor = self.kind.glyph_anchor
        return None if anchor is None else self.to_image(np.array([anchor]))[0]

    def radius(self) -> float:
        """Radius of a disc around (cx, cy) that holds the whole object."""
        return self.kind.extent * self.scale * max(math.sqrt(self.aspect), 1 / math.sqrt(self.aspect))

    def box(self) -> tuple[float, float, float, float]:
        """Amodal bounding box (x1, y1, x2, y2) of the whole object, unclipped."""
        pts = np.concatenate(self.body_polygons())
        return (float(pts[:, 0].min()), float(pts[:, 1].min()), float(pts[:, 0].max()), float(pts[:, 1].max()))


@dataclass(frozen=True)
class BackgroundSpec:
    kind: str
    colour_a: tuple[int, int, int]
    colour_b: tuple[int, int, int]
    period: float  # pixels
    angle: float  # degrees


@dataclass(frozen=True)
class ClutterSpec:
    """A small background mark (not an object: low saturation, never captioned)."""

    kind: str
    x1: float
    y1: float
    x2: float
    y2: float
    colour: tuple[int, int, int]
    width: int


@dataclass(frozen=True)
class LightingSpec:
    gain: float
    gradient_angle: float  # degrees
    gradient_amplitude: float  # brightness change across the image, as a fraction
    tint: tuple[float, float, float]


@dataclass(frozen=True)
class SceneSpec:
    """Everything needed to render one image; objects are listed back to front."""

    width: int
    height: int
    background: BackgroundSpec
    clutter: tuple[ClutterSpec, ...]
    lighting: LightingSpec
    objects: tuple[ObjectSpec, ...]
    noise_seed: int


def scene_to_dict(scene: SceneSpec) -> dict[str, Any]:
    return asdict(scene)


def scene_from_dict(data: dict[str, Any]) -> SceneSpec:
    """Inverse of ``scene_to_dict`` (after a JSON round trip: lists back to tuples)."""
    bg = data["background"]
    return SceneSpec(
        width=int(data["width"]),
        height=int(data["height"]),
        background=replace(BackgroundSpec(**bg), colour_a=tuple(bg["colour_a"]), colour_b=tuple(bg["colour_b"])),
        clutter=tuple(replace(ClutterSpec(**c), colour=tuple(c["colour"])) for c in data["clutter"]),
        lighting=replace(LightingSpec(**data["lighting"]), tint=tuple(data["lighting"]["tint"])),
        objects=tuple(ObjectSpec(**o) for o in data["objects"]),
        noise_seed=int(data["noise_seed"]),
    )


# ---------------------------------------------------------------------------------------------- geometry


def points_in_polygon(points: np.ndarray, polygon: np.ndarray) -> np.ndarray:
    """Even-odd rule: which of the points (N, 2) lie inside the polygon (M, 2)."""
    x, y = points[:, 0:1], points[:, 1:2]
    x1, y1 = polygon[:, 0], polygon[:, 1]
    x2, y2 = np.roll(x1, -1), np.roll(y1, -1)
    crosses = (y1 > y) != (y2 > y)
    with np.errstate(divide="ignore", invalid="ignore"):
        x_cross = x1 + (y - y1) * (x2 - x1) / (y2 - y1)
    return (crosses & (x < x_cross)).sum(axis=1) % 2 == 1


def distance_to_polygon_edges(points: np.ndarray, polygon: np.ndarray) -> np.ndarray:
    """Distance of each point (N, 2) to the nearest edge of the polygon (M, 2)."""
    a = polygon[None, :, :]
    b = np.roll(polygon, -1, axis=0)[None, :, :]
    p = points[:, None, :]
    ab = b - a
    t = np.clip(((p - a) * ab).sum(-1) / np.maximum((ab * ab).sum(-1), 1e-12), 0.0, 1.0)
    nearest = a + t[..., None] * ab
    return np.sqrt(((p - nearest) ** 2).sum(-1)).min(axis=1)


def covered_by(points: np.ndarray, obj: ObjectSpec, margin: float) -> np.ndarray:
    """Which points lie inside the object's silhouette or within ``margin`` pixels of its outline."""
    hit = np.zeros(len(points), dtype=bool)
    for poly in obj.body_polygons():
        hit |= points_in_polygon(points, poly) | (distance_to_polygon_edges(points, poly) < margin)
    return hit


# Keypoints closer than this to an occluder's outline, or to the image border, count as hidden: the
# anti-aliased outline of the occluder can reach about one pixel.
OCCLUSION_MARGIN_PX = 1.5
BORDER_MARGIN_PX = 0.5


def keypoint_visibility(scene: SceneSpec, index: int) -> np.ndarray:
    """Boolean (K,): which keypoints of object ``index`` are inside the image and not hidden by objects in front."""
    obj = scene.objects[index]
    kps = obj.keypoints()
    visible = (
        (kps[:, 0] >= BORDER_MARGIN_PX)
        & (kps[:, 0] <= scene.width - BORDER_MARGIN_PX)
        & (kps[:, 1] >= BORDER_MARGIN_PX)
        & (kps[:, 1] <= scene.height - BORDER_MARGIN_PX)
    )
    for front in scene.objects[index + 1 :]:
        visible &= ~covered_by(kps, front, OCCLUSION_MARGIN_PX)
    return visible


def is_truncated(scene: SceneSpec, index: int) -> bool:
    x1, y1, x2, y2 = scene.objects[index].box()
    return x1 < 0 or y1 < 0 or x2 > scene.width or y2 > scene.height


def is_occluded(scene: SceneSpec, index: int) -> bool:
    """Whether an object in front overlaps object ``index`` (vertex tests both ways, a close approximation)."""
    obj = scene.objects[index]
    own = np.concatenate(obj.body_polygons())
    for front in scene.objects[index + 1 :]:
        theirs = np.concatenate(front.body_polygons())
        if covered_by(theirs, obj, 0.0).any() or covered_by(own, front, 0.0).any():
            return True
    return False


def clipped_box(scene: SceneSpec, index: int) -> tuple[float, float, float, float]:
    """The object's amodal box clipped to the image, rounded outwards to 0.01 px (so it holds every keypoint)."""
    x1, y1, x2, y2 = scene.objects[index].box()
    return (
        math.floor(max(x1, 0.0) * 100) / 100,
        math.floor(max(y1, 0.0) * 100) / 100,
        math.ceil(min(x2, float(scene.width)) * 100) / 100,
        math.ceil(min(y2, float(scene.height)) * 100) / 100,
    )


# ---------------------------------------------------------------------------------------------- sampling


def pick(rng: np.random.Generator, options, p: list[float] | None = None):
    """One element of a sequence (``rng.choice`` converts the sequence to an array first: slow here)."""
    if p is None:
        return options[int(rng.integers(len(options)))]
    return options[int(np.searchsorted(np.cumsum(p), rng.uniform() * sum(p), side="right"))]


def _muted_colour(rng: np.random.Generator, value: float) -> tuple[int, int, int]:
    # Backgrounds and clutter stay unsaturated so that an object's colour name is never ambiguous.
    r, g, b = colorsys.hsv_to_rgb(rng.uniform(0, 1), rng.uniform(0.03, 0.28), value)
    return (round(r * 255), round(g * 255), round(b * 255))


def sample_background(rng: np.random.Generator, width: int, height: int) -> BackgroundSpec:
    value_a = rng.uniform(0.3, 0.9)
    value_b = float(np.clip(value_a + pick(rng, (-1, 1)) * rng.uniform(0.12, 0.3), 0.1, 0.97))
    return BackgroundSpec(
        kind=pick(rng, BACKGROUNDS),
        colour_a=_muted_colour(rng, value_a),
        colour_b=_muted_colour(rng, value_b),
        period=float(rng.uniform(0.06, 0.2) * min(width, height)),
        angle=float(rng.uniform(0, 180)),
    )


def sample_clutter(rng: np.random.Generator, width: int, height: int, max_items: int) -> tuple[ClutterSpec, ...]:
    items = []
    for _ in range(int(rng.integers(0, max_items + 1))):
        x, y = rng.uniform(0, width), rng.uniform(0, height)
        extent = rng.uniform(0.03, 0.1) * min(width, height)
        angle = rng.uniform(0, 2 * math.pi)
        items.append(
            ClutterSpec(
                kind=pick(rng, CLUTTER_KINDS),
                x1=float(x),
                y1=float(y),
                x2=float(x + extent * math.cos(angle)),
                y2=float(y + extent * math.sin(angle)),
                colour=_muted_colour(rng, rng.uniform(0.15, 0.95)),
                width=int(rng.integers(1, 3)),
            )
        )
    return tuple(items)


def sample_lighting(rng: np.random.Generator) -> LightingSpec:
    return LightingSpec(
        gain=float(rng.uniform(0.8, 1.15)),
        gradient_angle=float(rng.uniform(0, 360)),
        gradient_amplitude=float(rng.uniform(0.0, 0.3)),
        tint=tuple(float(t) for t in rng.uniform(0.93, 1.07, size=3)),
    )


def sample_object(
    rng: np.random.Generator,
    category: str,
    size: str,
    short_side: int,
    *,
    glyph_probability: float,
    force_glyph: bool = False,
    scale_range: tuple[float, float] | None = None,
) -> ObjectSpec:
    """An object at the origin (cx = cy = 0); the caller places it. Glyphs only on medium/large objects."""
    colour = pick(rng, COLOUR_NAMES)
    detail = pick(rng, [c for c in COLOUR_NAMES if c != colour])
    lo, hi = scale_range if scale_range is not None else SIZE_CLASSES[size]
    can_hold_glyph = get_category(category).glyph_anchor is not None and size != "small"
    wants_glyph = force_glyph or rng.uniform() < glyph_probability
    return ObjectSpec(
        category=category,
        colour=colour,
        detail_colour=detail,
        size=size,
        scale=float(rng.uniform(lo, hi) * short_side),
        aspect=float(math.exp(rng.uniform(math.log(0.78), math.log(1.28)))),
        rotation=float(rng.uniform(-MAX_ROTATION_DEG, MAX_ROTATION_DEG)),
        cx=0.0,
        cy=0.0,
        texture=pick(rng, TEXTURES),
        texture_period=float(rng.uniform(0.25, 0.5)),
        texture_angle=float(rng.uniform(0, 180)),
        glyph=pick(rng, GLYPHS) if can_hold_glyph and wants_glyph else None,
    )


def glyph_categories() -> tuple[str, ...]:
    return tuple(c.name for c in categories() if c.glyph_anchor is not None)


def sample_caption_scene(
    rng: np.random.Generator,
    size: int,
    *,
    n_objects: int | None = None,
    glyph_target: bool = False,
    glyph_probability: float = 0.6,
) -> SceneSpec:
    """A square scene of 1-4 objects that overlap little (so counts, sizes and relations are readable).

    ``glyph_target`` forces the first object to carry a glyph (the glyph-reading benchmark needs one).
    """
    names = [c.name for c in categories()]
    while True:  # rejection sampling: rare failures to place every object restart the scene
        n = pick(rng, (1, 2, 3, 4), p=[0.3, 0.3, 0.25, 0.15]) if n_objects is None else n_objects
        placed: list[ObjectSpec] = []
        for i in range(n):
            force = glyph_target and i == 0
            category = pick(rng, glyph_categories() if force else names)
            sizes = SIZE_NAMES if n <= 2 else SIZE_NAMES[:2]  # four large objects do not fit
            size_name = pick(rng, sizes[1:] if force else sizes)
            obj = sample_object(rng, category, size_name, size, glyph_probability=glyph_probability, force_glyph=force)
            spot = _free_spot(rng, obj, placed, size, size)
            if spot is None:
                break
            placed.append(replace(obj, cx=spot[0], cy=spot[1]))
        if len(placed) == n:
            break
    return SceneSpec(
        width=size,
        height=size,
        background=sample_background(rng, size, size),
        clutter=sample_clutter(rng, size, size, max_items=6),
        lighting=sample_lighting(rng),
        objects=tuple(placed),
        noise_seed=int(rng.integers(0, 2**31)),
    )


def _free_spot(
    rng: np.random.Generator, obj: ObjectSpec, placed: list[ObjectSpec], width: int, height: int
) -> tuple[float, float] | None:
    """A centre keeping the object inside the image and apart from the placed ones (first of 64 tries)."""
    r = obj.radius()
    if 2 * r >= min(width, height):
        return None
    xs, ys = rng.uniform(r, width - r, size=64), rng.uniform(r, height - r, size=64)
    ok = np.ones(64, dtype=bool)
    for other in placed:
        ok &= np.hypot(xs - other.cx, ys - other.cy) >= 0.92 * (r + other.radius())
    hits = np.flatnonzero(ok)
    return (float(xs[hits[0]]), float(ys[hits[0]])) if len(hits) else None


def spair_image_shape(rng: np.random.Generator, long_side: int) -> tuple[int, int]:
    """(width, height): like SPair's photos, images come in landscape, portrait and square shapes."""
    short = int(round(long_side * 0.75))
    return [(long_side, long_side), (long_side, short), (short, long_side)][int(rng.integers(0, 3))]


def sample_correspondence_scene(
    rng: np.random.Generator, long_side: int, category: str, *, min_visible: int
) -> tuple[SceneSpec, int]:
    """A scene with one large instance of ``category`` (returned with its index) plus 0-3 distractors.

    Views vary in scale, aspect, rotation, position (sometimes cut by the border), background, clutter,
    lighting, and distractors that may overlap the instance in front of it (partial occlusion).
    """
    others = [c.name for c in categories() if c.name != category]
    while True:
        width, height = spair_image_shape(rng, long_side)
        short = min(width, height)
        main = sample_object(rng, category, "large", short, glyph_probability=0.25, scale_range=(0.24, 0.4))
        r = main.radius()
        if rng.uniform() < 0.8:  # fully in view (as far as the object's size allows)
            mx, my = min(r, width / 2), min(r, height / 2)
            cx, cy = rng.uniform(mx, width - mx), rng.uniform(my, height - my)
        else:  # near the border: likely truncated
            cx, cy = rng.uniform(0.12, 0.88) * width, rng.uniform(0.12, 0.88) * height
        main = replace(main, cx=float(cx), cy=float(cy))
        back: list[ObjectSpec] = []
        front: list[ObjectSpec] = []
        for k in range(pick(rng, (0, 1, 2, 3), p=[0.15, 0.35, 0.3, 0.2])):
            other = sample_object(rng, pick(rng, others), pick(rng, SIZE_NAMES[:2]), short, glyph_probability=0.2)
            if k == 0 and rng.uniform() < 0.45:  # overlap the instance's edge, in front of it
                angle = rng.uniform(0, 2 * math.pi)
                dist = r * rng.uniform(0.75, 1.15)
                other = replace(other, cx=float(cx + dist * math.cos(angle)), cy=float(cy + dist * math.sin(angle)))
                front.append(other)
                continue
            other = replace(other, cx=float(rng.uniform(0, width)), cy=float(rng.uniform(0, height)))
            (front if rng.uniform() < 0.5 else back).append(other)
        scene = SceneSpec(
            width=width,
            height=height,
            background=sample_background(rng, width, height),
            clutter=sample_clutter(rng, width, height, max_items=8),
            lighting=sample_lighting(rng),
            objects=(*back, main, *front),
            noise_seed=int(rng.integers(0, 2**31)),
        )
        index = len(back)
        if int(keypoint_visibility(scene, index).sum()) >= min_visible:
            return scene, index
