"""The mini-world's object categories: canonical geometry and named semantic keypoints.

Every category is drawn in a canonical frame (x right, y down, extent about [-1, 1]) and placed in an image by
an affine map (scale, aspect, rotation, translation; see ``scene.ObjectSpec``). Keypoints are named points of
the canonical shape (vertices, tips, centres), so mapping them through the same affine map gives their exact
image coordinates. Shapes are chosen so that no rotation the generator uses (at most 30 degrees) makes two
keypoints of a category swap places: each keypoint stays semantically identifiable, as in SPair-71k.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

Polygon = tuple[tuple[float, float], ...]


@dataclass(frozen=True)
class Category:
    """One object category: its parts (canonical polygons) and its keypoints.

    ``body`` polygons carry the object's colour and texture, ``details`` (a door, an eye) its second colour;
    the silhouette is the union of the body polygons (details lie inside them). ``glyph_anchor`` is where a
    letter or digit is written, or None for shapes too thin to hold one.
    """

    name: str
    body: tuple[Polygon, ...]
    details: tuple[Polygon, ...]
    keypoints: tuple[tuple[str, tuple[float, float]], ...]
    glyph_anchor: tuple[float, float] | None

    @property
    def keypoint_names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.keypoints)

    @functools.cached_property
    def extent(self) -> float:
        """Largest distance of the silhouette from the canonical origin (placement needs it often)."""
        return max(math.hypot(x, y) for poly in self.body for x, y in poly)

    def keypoint_array(self) -> np.ndarray:
        """Canonical keypoints, shape (K, 2)."""
        return np.array([xy for _, xy in self.keypoints], dtype=np.float64)


def _circle(cx: float, cy: float, r: float, n: int = 24) -> Polygon:
    return tuple((cx + r * math.cos(2 * math.pi * i / n), cy + r * math.sin(2 * math.pi * i / n)) for i in range(n))


def _ellipse(cx: float, cy: float, rx: float, ry: float, n: int = 32) -> Polygon:
    return tuple((cx + rx * math.cos(2 * math.pi * i / n), cy + ry * math.sin(2 * math.pi * i / n)) for i in range(n))


def _rect(x1: float, y1: float, x2: float, y2: float) -> Polygon:
    return ((x1, y1), (x2, y1), (x2, y2), (x1, y2))


def _triangle() -> Category:
    apex, right, left = (0.0, -1.0), (0.95, 0.85), (-0.95, 0.85)
    return Category(
        name="triangle",
        body=((apex, right, left),),
        details=(),
        keypoints=(
            ("apex", apex),
            ("left_corner", left),
            ("right_corner", right),
            ("base_middle", (0.0, 0.85)),
            ("left_edge_middle", (-0.475, -0.075)),
            ("right_edge_middle", (0.475, -0.075)),
            ("centre", (0.0, 0.233)),
        ),
        glyph_anchor=(0.0, 0.35),
    )


def _house() -> Category:
    # The window sits on the right so that the house is not mirror symmetric.
    apex, r_eave, r_floor, l_floor, l_eave = (0.0, -1.0), (0.85, -0.2), (0.85, 0.95), (-0.85, 0.95), (-0.85, -0.2)
    return Category(
        name="house",
        body=((apex, r_eave, r_floor, l_floor, l_eave),),
        details=(_rect(-0.62, 0.35, -0.22, 0.95), _rect(0.3, 0.2, 0.65, 0.55)),
        keypoints=(
            ("roof_apex", apex),
            ("left_eave", l_eave),
            ("right_eave", r_eave),
            ("left_floor_corner", l_floor),
            ("right_floor_corner", r_floor),
            ("door_top_middle", (-0.42, 0.35)),
            ("window_centre", (0.475, 0.375)),
        ),
        glyph_anchor=(0.0, -0.3),
    )


def _star() -> Category:
    names = ("top_tip", "upper_right_tip", "lower_right_tip", "lower_left_tip", "upper_left_tip")
    tips, outline = [], []
    for i in range(5):
        outer = math.radians(-90 + 72 * i)
        inner = math.radians(-90 + 72 * i + 36)
        tips.append((math.cos(outer), math.sin(outer) + 0.1))
        outline += [tips[-1], (0.45 * math.cos(inner), 0.45 * math.sin(inner) + 0.1)]
    return Category(
        name="star",
        body=(tuple(outline),),
        details=(),
        keypoints=(*zip(names, tips), ("centre", (0.0, 0.1))),
        glyph_anchor=(0.0, 0.12),
    )


def _arrow() -> Category:
    tail_top, joint_top, barb_top, tip = (-1.0, -0.28), (0.15, -0.28), (0.15, -0.78), (1.0, 0.0)
    barb_bottom, joint_bottom, tail_bottom = (0.15, 0.78), (0.15, 0.28), (-1.0, 0.28)
    return Category(
        name="arrow",
        body=((tail_top, joint_top, barb_top, tip, barb_bottom, joint_bottom, tail_bottom, (-0.8, 0.0)),),
        details=(),
        keypoints=(
            ("tip", tip),
            ("upper_barb", barb_top),
            ("lower_barb", barb_bottom),
            ("tail_top", tail_top),
            ("tail_bottom", tail_bottom),
            ("tail_notch", (-0.8, 0.0)),
            ("shaft_middle", (-0.35, 0.0)),
        ),
        glyph_anchor=None,
    )


def _cross() -> Category:
    # A Latin cross: the long lower arm tells top from bottom.
    w, bar_top, bar_bottom, arm = 0.22, -0.6, -0.16, 0.72
    outline = (
        (-w, -1.0), (w, -1.0), (w, bar_top), (arm, bar_top), (arm, bar_bottom), (w, bar_bottom),
        (w, 1.0), (-w, 1.0), (-w, bar_bottom), (-arm, bar_bottom), (-arm, bar_top), (-w, bar_top),
    )  # fmt: skip
    mid = (bar_top + bar_bottom) / 2
    return Category(
        name="cross",
        body=(outline,),
        details=(),
        keypoints=(
            ("top_end", (0.0, -1.0)),
            ("bottom_end", (0.0, 1.0)),
            ("left_end", (-arm, mid)),
            ("right_end", (arm, mid)),
            ("crossing", (0.0, mid)),
        ),
        glyph_anchor=None,
    )


def _heart_point(t: float) -> tuple[float, float]:
    # The classic heart curve, rescaled to about [-0.95, 0.95] x [-1, 1].
    x = 16 * math.sin(t) ** 3
    y = -(13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t))
    return (0.95 * x / 16, (y - 2.54) / 14.46)


def _samples(start: float, stop: float, n: int, keep: tuple[float, ...]) -> list[float]:
    """n evenly spaced parameters from start to stop, plus the ``keep`` ones (so keypoints are vertices)."""
    values = set(np.linspace(start, stop, n).tolist()) | set(keep)
    return sorted(values, reverse=stop < start)


def _heart() -> Category:
    lobe_t = 0.908  # the parameter of the lobes' highest points
    ts = _samples(-math.pi, math.pi, 49, (-lobe_t, lobe_t, 0.0, -math.pi / 2, math.pi / 2))[:-1]  # t=pi once
    return Category(
        name="heart",
        body=(tuple(_heart_point(t) for t in ts),),
        details=(),
        keypoints=(
            ("notch", _heart_point(0.0)),
            ("bottom_tip", _heart_point(math.pi)),
            ("left_lobe_top", _heart_point(-lobe_t)),
            ("right_lobe_top", _heart_point(lobe_t)),
            ("left_side", _heart_point(-math.pi / 2)),
            ("right_side", _heart_point(math.pi / 2)),
            ("centre", (0.0, -0.05)),
        ),
        glyph_anchor=(0.0, -0.1),
    )


def _moon() -> Category:
    # Outer circle r=1 at the origin minus a circle r=0.85 at (0.5, 0): a crescent opening to the right.
    inner_cx, inner_r = 0.5, 0.85
    horn_x = (1 - inner_r**2 + inner_cx**2) / (2 * inner_cx)
    horn_y = math.sqrt(1 - horn_x**2)
    outer_a = math.atan2(horn_y, horn_x)
    inner_a = math.atan2(horn_y, horn_x - inner_cx)
    n = 20
    # From the upper horn round the back; the keypoint angles are vertices of the outline.
    back_angles = (-0.75 * math.pi, -math.pi, -1.25 * math.pi)
    outer = [(math.cos(a), math.sin(a)) for a in _samples(-outer_a, -(2 * math.pi - outer_a), n, back_angles)]
    inner = [
        (inner_cx + inner_r * math.cos(a), inner_r * math.sin(a))
        for a in np.linspace(inner_a, 2 * math.pi - inner_a, n)  # from the lower horn back to the upper one
    ]
    diag = math.sqrt(0.5)
    return Category(
        name="moon",
        body=(tuple(outer + inner[1:-1]),),
        details=(),
        keypoints=(
            ("upper_horn", (horn_x, -horn_y)),
            ("lower_horn", (horn_x, horn_y)),
            ("back", (-1.0, 0.0)),
            ("upper_back", (-diag, -diag)),
            ("lower_back", (-diag, diag)),
            ("inner_edge_middle", (inner_cx - inner_r, 0.0)),
            ("body_middle", ((inner_cx - inner_r - 1.0) / 2, 0.0)),
        ),
        glyph_anchor=None,
    )


def _fish() -> Category:
    body = _ellipse(-0.15, 0.0, 0.7, 0.42)
    tail = ((0.45, 0.0), (1.0, -0.55), (0.9, 0.0), (1.0, 0.55))
    fin = ((-0.4, -0.36), (0.0, -0.78), (0.15, -0.32))
    return Category(
        name="fish",
        body=(body, tail, fin),
        details=(_circle(-0.55, -0.1, 0.09, 12),),
        keypoints=(
            ("nose", (-0.85, 0.0)),
            ("eye", (-0.55, -0.1)),
            ("fin_tip", (0.0, -0.78)),
            ("tail_top_tip", (1.0, -0.55)),
            ("tail_bottom_tip", (1.0, 0.55)),
            ("tail_root", (0.5, 0.0)),
            ("belly", (-0.15, 0.42)),
        ),
        glyph_anchor=(-0.1, 0.05),
    )


@functools.cache  # immutable result; built once because scenes ask for their category per object
def categories() -> tuple[Category, ...]:
    """All categories, in a fixed order (the order ids and RNG keys use)."""
    return (_triangle(), _house(), _star(), _arrow(), _cross(), _heart(), _moon(), _fish())


def category_by_name() -> dict[str, Category]:
    return {cat.name: cat for cat in categories()}


def get_category(name: str) -> Category:
    for cat in categories():
        if cat.name == name:
            return cat
    raise KeyError(f"unknown mini-world category {name!r}; known: {[c.name for c in categories()]}")
