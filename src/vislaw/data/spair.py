"""Reader for SPair-71k-format correspondence data: the real dataset and the mini-world's copy alike.

Layout (as distributed by the SPair-71k authors)::

    <root>/JPEGImages/<category>/<imname>.jpg
    <root>/ImageAnnotation/<category>/<imname-stem>.json
    <root>/PairAnnotation/{trn,val,test}/<pair_id>-<src stem>-<trg stem>:<category>.json
    <root>/Layout/large/{trn,val,test}.txt          (one pair file stem per line)

A pair file holds (among others) ``pair_id``, ``src_imname``, ``trg_imname``, ``src_imsize`` / ``trg_imsize``
([width, height, channels]), ``src_bndbox`` / ``trg_bndbox`` ([x1, y1, x2, y2]), ``category``, ``src_kps`` /
``trg_kps`` (matched [[x, y], ...]), ``kps_ids``, ``mirror``, ``viewpoint_variation``, ``scale_variation``,
``truncation`` and ``occlusion``. Like the paper's C-score code, pairs of a split are all the JSON files in
``PairAnnotation/<split>/`` (the Layout lists are not needed).

Every problem raises a ``SpairError`` that names the offending file: ``SpairNotFoundError`` (also a
``FileNotFoundError``) for a missing folder or image, ``SpairFormatError`` (also a ``ValueError``) for a file
that is not valid JSON, lacks a field, or whose keypoint lists disagree in length.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

SPLITS: tuple[str, ...] = ("trn", "val", "test")
REQUIRED_PAIR_FIELDS: tuple[str, ...] = (
    "src_imname",
    "trg_imname",
    "src_imsize",
    "trg_imsize",
    "src_bndbox",
    "trg_bndbox",
    "category",
    "src_kps",
    "trg_kps",
)
DIFFICULTY_FIELDS: tuple[str, ...] = ("viewpoint_variation", "scale_variation", "truncation", "occlusion", "mirror")


class SpairError(Exception):
    """Base class of every error this reader raises."""


class SpairNotFoundError(SpairError, FileNotFoundError):
    """A folder, pair file or image is missing."""


class SpairFormatError(SpairError, ValueError):
    """A file is not valid JSON or does not hold what SPair-71k's format promises."""


@dataclass(frozen=True, eq=False)  # eq=False: numpy fields make generated equality ambiguous
class SpairPair:
    """One annotated pair. Coordinates are image pixels (x right, y down), as in the files."""

    name: str  # the pair file's stem, e.g. "000001-2008_000585-2008_002221:aeroplane"
    pair_id: int
    split: str
    category: str
    src_imname: str
    trg_imname: str
    src_image: Path
    trg_image: Path
    src_size: tuple[int, int]  # (width, height)
    trg_size: tuple[int, int]
    src_kps: np.ndarray  # (N, 2) float64, x and y
    trg_kps: np.ndarray  # (N, 2) float64, matched row by row with src_kps
    kps_ids: np.ndarray  # (N,) int64: the category's keypoint ids
    src_bbox: np.ndarray  # (4,) float64: x1, y1, x2, y2
    trg_bbox: np.ndarray
    viewpoint_variation: int
    scale_variation: int
    truncation: int
    occlusion: int
    mirror: int

    @property
    def src_key(self) -> str:
        """The image's key in feature caches: '<category>/<imname>'."""
        return f"{self.category}/{self.src_imname}"

    @property
    def trg_key(self) -> str:
        return f"{self.category}/{self.trg_imname}"


@dataclass(frozen=True)
class SpairImage:
    key: str  # '<category>/<imname>'
    category: str
    imname: str
    path: Path
    size: tuple[int, int]  # (width, height) as annotated


def check_root(root: str | os.PathLike[str]) -> Path:
    root = Path(root)
    for sub in ("JPEGImages", "PairAnnotation"):
        if not (root / sub).is_dir():
            raise SpairNotFoundError(f"not an SPair-71k folder: {root / sub} does not exist")
    return root


def pair_files(root: str | os.PathLike[str], split: str, categories: list[str] | None = None) -> list[Path]:
    """The split's pair files, sorted by name, optionally only those of some categories (by file name)."""
    if split not in SPLITS:
        raise ValueError(f"unknown SPair split {split!r}; expected one of {SPLITS}")
    folder = check_root(root) / "PairAnnotation" / split
    if not folder.is_dir():
        raise SpairNotFoundError(f"SPair split folder {folder} does not exist")
    files = sorted(folder.glob("*.json"))
    if categories is not None:
        wanted = set(categories)
        files = [f for f in files if f.stem.rpartition(":")[2] in wanted]
    return files


def read_json(path: Path) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except FileNotFoundError as err:
        raise SpairNotFoundError(f"{path} does not exist") from err
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise SpairFormatError(f"{path} is not valid JSON: {err}") from err
    if not isinstance(data, dict):
        raise SpairFormatError(f"{path} should hold a JSON object, not {type(data).__name__}")
    return data


def _numbers(path: Path, data: dict[str, Any], field: str, what: str) -> np.ndarray:
    """``data[field]`` as finite float64s; an error naming the file and field otherwise (a JSON null would
    become NaN, and a NaN keypoint or box corrupts C without a word)."""
    try:
        values = np.asarray(data[field], dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise SpairFormatError(f"{path}: field {field!r} should be {what}, got {data[field]!r}") from err
    if not np.isfinite(values).all():
        raise SpairFormatError(f"{path}: field {field!r} holds a null or non-finite value: {data[field]!r}")
    return values


def _points(path: Path, data: dict[str, Any], field: str) -> np.ndarray:
    points = _numbers(path, data, field, "a list of [x, y] points")
    if points.size == 0:
        return points.reshape(0, 2)
    if points.ndim != 2 or points.shape[1] != 2:  # never regrouped: [x, y, v] triples are not pairs
        raise SpairFormatError(f"{path}: field {field!r} should be a list of [x, y] points, got shape "
                               f"{list(points.shape)}")
    return points


def _box(path: Path, data: dict[str, Any], field: str) -> np.ndarray:
    box = _numbers(path, data, field, "[x1, y1, x2, y2]")
    if box.shape != (4,):
        raise SpairFormatError(f"{path}: field {field!r} should be [x1, y1, x2, y2], got {data[field]!r}")
    if box[2] <= box[0] or box[3] <= box[1]:  # PCK's threshold is the box's larger side
        raise SpairFormatError(f"{path}: field {field!r} is not a box with x2 > x1 and y2 > y1: {data[field]!r}")
    return box


def _size(path: Path, data: dict[str, Any], field: str) -> tuple[int, int]:
    size = data[field]
    if (not isinstance(size, list) or len(size) < 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size[:2])):
        raise SpairFormatError(f"{path}: field {field!r} should be [width, height, channels], got {size!r}")
    return (int(size[0]), int(size[1]))


def _integer(path: Path, field: str, value: Any) -> int:
    try:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError(value)
        return int(value)
    except (TypeError, ValueError):
        raise SpairFormatError(f"{path}: field {field!r} should be an integer, got {value!r}") from None


def image_path(root: str | os.PathLike[str], category: str, imname: str) -> Path:
    return Path(root) / "JPEGImages" / category / imname


def read_pair(path: str | os.PathLike[str], root: str | os.PathLike[str], split: str) -> SpairPair:
    """Parse and check one pair file (images are not checked here; see ``load_pairs``)."""
    path = Path(path)
    data = read_json(path)
    missing = [f for f in REQUIRED_PAIR_FIELDS if f not in data]
    if missing:
        raise SpairFormatError(f"{path}: missing field(s) {missing}")
    category = str(data["category"])
    name_category = path.stem.rpartition(":")[2]
    if ":" in path.stem and name_category != category:
        raise SpairFormatError(f"{path}: category {category!r} differs from the file name's {name_category!r}")
    src_kps, trg_kps = _points(path, data, "src_kps"), _points(path, data, "trg_kps")
    if len(src_kps) != len(trg_kps):
        raise SpairFormatError(
            f"{path}: keypoint count mismatch, {len(src_kps)} source vs {len(trg_kps)} target keypoints"
        )
    if len(src_kps) == 0:
        raise SpairFormatError(f"{path}: the pair has no keypoints")
    raw_ids = data.get("kps_ids", list(range(len(src_kps))))
    if not isinstance(raw_ids, list):
        raise SpairFormatError(f"{path}: field 'kps_ids' should be a list of integers, got {raw_ids!r}")
    kps_ids = np.asarray([_integer(path, "kps_ids", k) for k in raw_ids], dtype=np.int64)
    if len(kps_ids) != len(src_kps):
        raise SpairFormatError(f"{path}: {len(kps_ids)} kps_ids for {len(src_kps)} keypoints")
    # SPair's file names start with the pair id ("000123-2008_000.....json"), which a file without the field uses
    pair_id = _integer(path, "pair_id" if "pair_id" in data else "pair_id (from the file name)",
                       data.get("pair_id", path.stem.split("-")[0]))
    return SpairPair(
        name=path.stem,
        pair_id=pair_id,
        split=split,
        category=category,
        src_imname=str(data["src_imname"]),
        trg_imname=str(data["trg_imname"]),
        src_image=image_path(root, category, str(data["src_imname"])),
        trg_image=image_path(root, category, str(data["trg_imname"])),
        src_size=_size(path, data, "src_imsize"),
        trg_size=_size(path, data, "trg_imsize"),
        src_kps=src_kps,
        trg_kps=trg_kps,
        kps_ids=kps_ids,
        src_bbox=_box(path, data, "src_bndbox"),
        trg_bbox=_box(path, data, "trg_bndbox"),
        **{field: _integer(path, field, data.get(field, 0)) for field in DIFFICULTY_FIELDS},
    )


def load_pairs(
    root: str | os.PathLike[str],
    split: str,
    categories: list[str] | None = None,
    *,
    check_images: bool = True,
) -> list[SpairPair]:
    """All pairs of a split (sorted by file name), optionally of some categories only.

    With ``check_images`` every referenced image must exist and have the size its annotation gives (keypoints
    are mapped into the framed image through that size: a resized copy would misplace every one); the error
    names the pair file and the image. Only the images' headers are read.
    """
    from PIL import Image, UnidentifiedImageError

    pairs = [read_pair(path, root, split) for path in pair_files(root, split, categories)]
    if check_images:
        seen: set[Path] = set()
        for pair in pairs:
            pair_file = Path(root) / "PairAnnotation" / split / f"{pair.name}.json"
            for image, size, field in ((pair.src_image, pair.src_size, "src_imsize"),
                                       (pair.trg_image, pair.trg_size, "trg_imsize")):
                if image in seen:
                    continue
                if not image.is_file():
                    raise SpairNotFoundError(f"{pair_file}: image {image} does not exist")
                try:
                    with Image.open(image) as opened:
                        actual = opened.size
                except (OSError, UnidentifiedImageError) as err:
                    raise SpairFormatError(f"{pair_file}: image {image} is not a readable image: {err}") from None
                if actual != size:
                    raise SpairFormatError(f"{pair_file}: {field} says {size[0]}x{size[1]} (width x height) but "
                                           f"{image} is {actual[0]}x{actual[1]}")
                seen.add(image)
    return pairs


def split_images(root: str | os.PathLike[str], split: str, categories: list[str] | None = None) -> list[SpairImage]:
    """The unique images used by a split's pairs, sorted by key (what feature extraction must cover)."""
    images: dict[str, SpairImage] = {}
    for pair in load_pairs(root, split, categories):
        for imname, path, size in (
            (pair.src_imname, pair.src_image, pair.src_size),
            (pair.trg_imname, pair.trg_image, pair.trg_size),
        ):
            key = f"{pair.category}/{imname}"
            images.setdefault(key, SpairImage(key=key, category=pair.category, imname=imname, path=path, size=size))
    return [images[key] for key in sorted(images)]


def load_image_annotation(root: str | os.PathLike[str], category: str, imname: str) -> dict[str, Any]:
    """The raw ImageAnnotation JSON of one image (the mini-world adds its rendering parameters there)."""
    return read_json(Path(root) / "ImageAnnotation" / category / f"{Path(imname).stem}.json")


def layout_names(root: str | os.PathLike[str], split: str, layout: str = "large") -> list[str]:
    """Pair file stems listed in ``Layout/<layout>/<split>.txt``."""
    path = Path(root) / "Layout" / layout / f"{split}.txt"
    if not path.is_file():
        raise SpairNotFoundError(f"SPair layout file {path} does not exist")
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
