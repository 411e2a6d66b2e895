"""The mini-world generator: everything the method needs, procedurally generated, seeded and deterministic.

``make_world(outdir, params)`` writes (formats in ``src/vislaw/data/README.md``):
image-caption pairs (stage-1 training set and the held-out A-score probe), correspondence pairs in
SPair-71k's layout (``spair/``), one multiple-choice benchmark per skill (training conversations and a test
split), a text corpus for the tiny language model, a grid of annotated pairs to look at, and a manifest with
the parameters, counts and a content fingerprint.

Every random draw comes from ``np.random.default_rng([seed, PURPOSE, index...])``: an item depends on its own
index, not on the items before it. So most sets of a smaller world are prefixes of a bigger one's at the same
image size; not all: the stage-2 questions' images are drawn among the caption images (their number matters),
and the shuffled instruction order and the pairs' numbering depend on the totals.
The output folder is built next to its final place and renamed at the end, so a killed job leaves nothing.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from vislaw.data import spair
from vislaw.data.datasets import CORPUS_FILE, write_corpus
from vislaw.data.render import render_scene
from vislaw.data.scene import (
    SceneSpec,
    clipped_box,
    is_occluded,
    is_truncated,
    keypoint_visibility,
    sample_caption_scene,
    sample_correspondence_scene,
    scene_to_dict,
)
from vislaw.data.shapes import categories
from vislaw.data.text import SKILLS, SPATIAL_QUESTIONS, Question, caption, expected_answer, make_question, mc_prompt
from vislaw.io import atomic_dir
from vislaw.provenance import code_hash

# RNG stream ids: one per purpose, so that changing one part's size never shifts another part's draws.
CAPTION_TRAIN, CAPTION_PROBE, QA_TRAIN, QA_TEST, SPAIR_IMAGE, SPAIR_PAIRS, CORPUS = range(1, 8)
MIN_COMMON_KEYPOINTS = 3
MAX_TRIES = 1000  # rejection sampling bound: a scene that supports the question is normally found in a few
JPEG_QUALITY = 92
ANSWER_FORMAT = "option"  # the mini-world's MLLMs answer with the option's text (vislaw.data.text)
MANIFEST = "manifest.json"
GRID = "pairs_grid.png"


def _default_images_per_category() -> dict[str, int]:
    return {"trn": 20, "val": 6, "test": 12}


def _default_pairs() -> dict[str, int]:
    return {"trn": 600, "val": 120, "test": 360}


@dataclass(frozen=True)
class WorldParams:
    """Sizes of the mini-world. Defaults: the default pipeline; ``smoke_params()``: the test preset."""

    seed: int = 0
    image_size: int = 96  # caption/QA images are square; SPair-format images have this long side
    n_caption_train: int = 2000  # stage-1 image-caption pairs (their images also serve the QA training split)
    n_caption_probe: int = 100  # held-out pairs for the A score (the paper uses N = 100)
    n_images_per_category: Mapping[str, int] = field(default_factory=_default_images_per_category)
    n_pairs: Mapping[str, int] = field(default_factory=_default_pairs)  # per split, spread over categories
    n_qa_train_per_skill: int = 300
    # Stage-2 turns asked about one image in one conversation (of different skills, in random order), as
    # LLaVA-665k merges an image's questions into one conversation: the image's tokens are in the sequence
    # once for all its turns. 1: a conversation per question (the default: at this LM's size 3 turns per
    # image saved no stage-2 time at equal steps and lost accuracy at equal epochs; bench/MLLM_NOTES.md).
    qa_turns_per_image: int = 1
    n_qa_test_per_skill: int = 100
    # The spatial skill's question (text.SPATIAL_QUESTIONS): "location" (where one object is in the image) or
    # "relation" (where it is relative to another; beyond the default LM, bench/MLLM_NOTES.md).
    spatial_question: str = "location"
    n_corpus_sentences: int = 3000  # extra captions of unrendered scenes, on top of the training text

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> WorldParams:
        """Build from a config mapping; unknown keys raise (a typo must not silently fall back to a default)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown world parameter(s) {unknown}; known: {sorted(known)}")
        params = cls(**{k: (dict(v) if isinstance(v, Mapping) else v) for k, v in values.items()})
        params.check()
        return params

    def check(self) -> None:
        for name in ("n_images_per_category", "n_pairs"):
            splits = sorted(getattr(self, name))
            if splits != sorted(spair.SPLITS):
                raise ValueError(f"world parameter {name} needs exactly the splits {spair.SPLITS}, got {splits}")
        if not 32 <= self.image_size <= 512:
            raise ValueError(f"image_size {self.image_size} outside [32, 512]")
        if not 1 <= self.qa_turns_per_image <= len(SKILLS):
            raise ValueError(f"qa_turns_per_image {self.qa_turns_per_image} outside [1, {len(SKILLS)}] (one turn "
                             f"per skill at most)")
        if self.spatial_question not in SPATIAL_QUESTIONS:
            raise ValueError(f"spatial_question {self.spatial_question!r} unknown; known: {SPATIAL_QUESTIONS}")
        if min(self.n_caption_train, self.n_caption_probe, self.n_qa_test_per_skill) < 1:
            raise ValueError("every world size must be at least 1")
        for split in spair.SPLITS:
            if self.n_images_per_category[split] < 2:
                raise ValueError(f"n_images_per_category[{split!r}] must be >= 2 to form pairs")

    def to_dict(self) -> dict[str, Any]:
        return {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in asdict(self).items()}


def smoke_params(seed: int = 0) -> WorldParams:
    """A world small enough for tests and the smoke preset (a couple of seconds)."""
    return WorldParams(
        seed=seed,
        image_size=64,
        n_caption_train=64,
        n_caption_probe=16,
        n_images_per_category={"trn": 5, "val": 3, "test": 4},
        n_pairs={"trn": 48, "val": 16, "test": 32},
        n_qa_train_per_skill=12,
        n_qa_test_per_skill=6,
        n_corpus_sentences=100,
    )


def _rng(params: WorldParams, *key: int) -> np.random.Generator:
    return np.random.default_rng([params.seed, *key])


def _save_jpeg(image: np.ndarray, path: Path) -> None:
    # 4:4:4 chroma keeps the small glyphs and thin outlines legible; Pillow's encoder is deterministic.
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path, format="JPEG", quality=JPEG_QUALITY, subsampling=0)


def _dump_json(path: Path, obj: Any) -> None:
    # Inside the temporary build folder: the folder's rename is what makes the output atomic.
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1, sort_keys=True, allow_nan=False) + "\n", encoding="utf-8")


def _object_records(scene: SceneSpec) -> list[dict[str, Any]]:
    """Per-object labels (for attribute classifiers and checks), back to front; ``glyph_xy`` is where the
    glyph's centre is drawn (pixels), null without a glyph."""
    return [
        {
            "category": o.category,
            "colour": o.colour,
            "size": o.size,
            "texture": o.texture,
            "glyph": o.glyph,
            "glyph_xy": None if o.glyph is None else [round(float(v), 2) for v in o.glyph_position()],
            "cx": round(o.cx, 2),
            "cy": round(o.cy, 2),
        }
        for o in scene.objects
    ]


# ------------------------------------------------------------------------------------- captions and QA


def _write_caption_set(
    params: WorldParams, out: Path, name: str, purpose: int, count: int
) -> tuple[list[dict[str, Any]], list[SceneSpec]]:
    records, scenes = [], []
    for i in range(count):
        scene = sample_caption_scene(_rng(params, purpose, i), params.image_size)
        image = f"images/{name}/{i:06d}.jpg"
        _save_jpeg(render_scene(scene).image, out / image)
        records.append(
            {"id": f"{name}_{i:06d}", "image": image, "caption": caption(scene), "objects": _object_records(scene)}
        )
        scenes.append(scene)
    return records, scenes


def _conversation(record_id: str, image: str, questions: list[Question]) -> dict[str, Any]:
    """LLaVA's format: ``<image>`` in the first human turn only; ``skills`` lists each turn's skill."""
    turns = []
    for i, q in enumerate(questions):
        prompt = mc_prompt(q.question, q.options, ANSWER_FORMAT)
        turns += [{"from": "human", "value": "<image>\n" + prompt if i == 0 else prompt},
                  {"from": "gpt", "value": expected_answer(q, ANSWER_FORMAT)}]
    return {"id": record_id, "image": image, "skills": [q.skill for q in questions], "conversations": turns}


def _qa_train(
    params: WorldParams, skill_index: int, skill: str, train: list[dict[str, Any]], scenes: list[SceneSpec]
) -> tuple[list[dict[str, Any]], list[Question]]:
    """Stage-2 conversations of one skill, asked about the stage-1 training images (as LLaVA reuses COCO)."""
    items, questions = [], []
    for j in range(params.n_qa_train_per_skill):
        rng = _rng(params, QA_TRAIN, skill_index, j)
        for _ in range(MAX_TRIES):
            index = int(rng.integers(len(scenes)))
            q = make_question(skill, scenes[index], rng, params.spatial_question)
            if q is not None:
                break
        else:
            raise ValueError(f"no training image supports a {skill!r} question; raise n_caption_train")
        items.append(_conversation(f"qa_{skill}_train_{j:05d}", train[index]["image"], [q]))
        questions.append(q)
    return items, questions


def _qa_conversations(
    params: WorldParams, train: list[dict[str, Any]], scenes: list[SceneSpec]
) -> tuple[list[dict[str, Any]], dict[str, list[dict[str, Any]]], list[Question]]:
    """Stage-2 conversations of ``qa_turns_per_image`` turns: images are drawn and asked up to that many
    skills (random order weighted by the questions left; a skill whose quota of ``n_qa_train_per_skill`` is
    met, or which the scene cannot support, is skipped) until every quota is met. Returns the conversations,
    each skill's turns as one-turn records (``qa/<skill>/train.json``) and every question asked."""
    left = {skill: params.n_qa_train_per_skill for skill in SKILLS}
    conversations: list[dict[str, Any]] = []
    per_skill: dict[str, list[dict[str, Any]]] = {skill: [] for skill in SKILLS}
    questions: list[Question] = []
    for c in range(MAX_TRIES * len(SKILLS) * params.n_qa_train_per_skill):
        if not any(left.values()):
            break
        rng = _rng(params, QA_TRAIN, len(SKILLS) + 1, c)
        index = int(rng.integers(len(scenes)))
        asked: list[Question] = []
        open_skills = [s for s in SKILLS if left[s]]
        # A random order weighted by the questions each skill has left (Efraimidis-Spirakis): skills that
        # few scenes support (glyph, spatial) keep pace instead of ending as one-turn conversations.
        keys = rng.random(len(open_skills)) ** (1.0 / np.array([left[s] for s in open_skills]))
        for skill in [open_skills[i] for i in np.argsort(-keys, kind="stable")]:
            q = make_question(skill, scenes[index], rng, params.spatial_question)
            if q is not None:
                left[skill] -= 1
                per_skill[skill].append(_conversation(f"qa_{skill}_train_{len(per_skill[skill]):05d}",
                                                      train[index]["image"], [q]))
                asked.append(q)
                if len(asked) == params.qa_turns_per_image:
                    break
        if asked:
            conversations.append(_conversation(f"qa_train_{c:05d}", train[index]["image"], asked))
            questions += asked
    else:
        raise ValueError(f"no training image supports the remaining questions {left}; raise n_caption_train")
    return conversations, per_skill, questions


def _qa_test_scene(params: WorldParams, skill: str, rng: np.random.Generator, j: int) -> SceneSpec:
    # Test scenes are drawn so that every answer is represented (counts 1-4 in turn, glyphs always present).
    size = params.image_size
    if skill == "count":
        return sample_caption_scene(rng, size, n_objects=1 + j % 4)
    if skill == "spatial":
        return sample_caption_scene(rng, size, n_objects=2 + int(rng.integers(0, 3)))
    if skill == "glyph":
        return sample_caption_scene(rng, size, glyph_target=True)
    return sample_caption_scene(rng, size)


def qa_test_item(params: WorldParams, skill: str, j: int) -> tuple[SceneSpec, Question]:
    """The scene and question of the ``skill`` test split's item ``j``, from the world's seeds (what
    ``make_world`` renders; analyses replay it to know each test image's objects)."""
    rng = _rng(params, QA_TEST, SKILLS.index(skill), j)
    for _ in range(MAX_TRIES):
        scene = _qa_test_scene(params, skill, rng, j)
        q = make_question(skill, scene, rng, params.spatial_question)
        if q is not None:
            return scene, q
    raise ValueError(f"could not draw a scene for a {skill!r} test question")


def _qa_test(params: WorldParams, out: Path, skill: str) -> list[dict[str, Any]]:
    items = []
    for j in range(params.n_qa_test_per_skill):
        scene, q = qa_test_item(params, skill, j)
        image = f"images/qa_test/{skill}_{j:05d}.jpg"
        _save_jpeg(render_scene(scene).image, out / image)
        items.append(
            {
                "id": f"qa_{skill}_test_{j:05d}",
                "image": image,
                "skill": skill,
                "question": q.question,
                "options": list(q.options),
                "answer": q.answer,
                "answer_letter": q.answer_letter,
                "answer_format": ANSWER_FORMAT,
                "prompt": mc_prompt(q.question, q.options, ANSWER_FORMAT),
            }
        )
    return items


def _corpus(params: WorldParams, train: list[dict[str, Any]], questions: list[Question]) -> list[str]:
    """Training captions, the training questions with their answers, each also as the stage-2 turn (the
    multiple-choice prompt, then the answer), and captions of unrendered scenes.

    The turns stand in for the instruction tuning of LLaVA's LLMs (Vicuna knows how to answer a listed-option
    question before stage 2): without them the tiny LM met the prompt format first in stage 2 (its first
    loss 6.97 nats per answer token, against 0.90 with them) and split its steps between the format and the
    image; they also make "Answer with the option." 4 BPE tokens instead of 14 (bench/MLLM_NOTES.md).
    """
    lines = [r["caption"] for r in train]
    lines += [f"{q.question} {q.answer_text}" for q in questions]
    lines += [mc_prompt(q.question, q.options, ANSWER_FORMAT) + expected_answer(q, ANSWER_FORMAT) for q in questions]
    for i in range(params.n_corpus_sentences):
        lines.append(caption(sample_caption_scene(_rng(params, CORPUS, i), params.image_size)))
    return lines


# ------------------------------------------------------------------------------------ SPair-format pairs


@dataclass(frozen=True)
class _SpairImage:
    imname: str
    category: str
    scene: SceneSpec
    index: int  # of the category's instance in scene.objects
    keypoints: np.ndarray  # (K, 2) image coordinates of all the category's keypoints
    visible: np.ndarray  # (K,) bool
    box: tuple[float, float, float, float]
    truncated: bool
    occluded: bool


def _spair_images(
    params: WorldParams, split_index: int, split: str, cat_index: int, category: str
) -> list[_SpairImage]:
    images = []
    for i in range(params.n_images_per_category[split]):
        rng = _rng(params, SPAIR_IMAGE, split_index, cat_index, i)
        scene, index = sample_correspondence_scene(rng, params.image_size, category, min_visible=MIN_COMMON_KEYPOINTS)
        images.append(
            _SpairImage(
                imname=f"{category}_{split}_{i:04d}.jpg",
                category=category,
                scene=scene,
                index=index,
                keypoints=scene.objects[index].keypoints(),
                visible=keypoint_visibility(scene, index),
                box=clipped_box(scene, index),
                truncated=is_truncated(scene, index),
                occluded=is_occluded(scene, index),
            )
        )
    return images


def _xy(point: np.ndarray) -> list[float]:
    return [round(float(point[0]), 2), round(float(point[1]), 2)]


def _image_annotation(img: _SpairImage) -> dict[str, Any]:
    """SPair-71k's ImageAnnotation fields, plus ``render``: what re-renders the image and re-derives its points."""
    names = img.scene.objects[img.index].kind.keypoint_names
    return {
        "filename": img.imname,
        "src_database": "vislaw mini-world",
        "src_annotation": "",
        "src_image": "",
        "image_width": img.scene.width,
        "image_height": img.scene.height,
        "image_depth": 3,
        "category": img.category,
        "pose": "Unspecified",
        "truncated": int(img.truncated),
        "occluded": int(img.occluded),
        "difficult": 0,
        "bndbox": list(img.box),
        "kps": {str(k): (_xy(p) if v else None) for k, (p, v) in enumerate(zip(img.keypoints, img.visible))},
        "azimuth_id": 0,
        "render": {"scene": scene_to_dict(img.scene), "object_index": img.index, "keypoint_names": list(names)},
    }


def _pair_annotation(pair_id: int, name: str, src: _SpairImage, trg: _SpairImage, common: np.ndarray) -> dict[str, Any]:
    src_obj, trg_obj = src.scene.objects[src.index], trg.scene.objects[trg.index]
    turn = abs(src_obj.rotation - trg_obj.rotation)
    src_side = max(src.box[2] - src.box[0], src.box[3] - src.box[1])
    trg_side = max(trg.box[2] - trg.box[0], trg.box[3] - trg.box[1])
    ratio = max(src_side, trg_side) / max(min(src_side, trg_side), 1e-9)
    return {
        "pair_id": pair_id,
        "filename": name,
        "src_imname": src.imname,
        "trg_imname": trg.imname,
        "src_imsize": [src.scene.width, src.scene.height, 3],
        "trg_imsize": [trg.scene.width, trg.scene.height, 3],
        "src_bndbox": list(src.box),
        "trg_bndbox": list(trg.box),
        "category": src.category,
        "src_pose": "Unspecified",
        "trg_pose": "Unspecified",
        "src_kps": [_xy(p) for p in src.keypoints[common]],
        "trg_kps": [_xy(p) for p in trg.keypoints[common]],
        "kps_ids": [str(int(k)) for k in np.flatnonzero(common)],
        "mirror": 0,
        # SPair's conventions: variation 0-2 (none, mild, strong); truncation and occlusion 0 none,
        # 1 source, 2 target, 3 both.
        "viewpoint_variation": 0 if turn < 10 else 1 if turn < 25 else 2,
        "scale_variation": 0 if ratio < 1.25 else 1 if ratio < 1.6 else 2,
        "truncation": int(src.truncated) + 2 * int(trg.truncated),
        "occlusion": int(src.occluded) + 2 * int(trg.occluded),
    }


def _pair_counts(total: int, n_categories: int) -> list[int]:
    return [total // n_categories + (1 if c < total % n_categories else 0) for c in range(n_categories)]


def _write_spair(params: WorldParams, root: Path) -> dict[str, dict[str, int]]:
    counts: dict[str, dict[str, int]] = {"images": {}, "pairs": {}}
    cats = categories()
    for split_index, split in enumerate(spair.SPLITS):
        names: list[str] = []
        per_category = _pair_counts(params.n_pairs[split], len(cats))
        n_images = 0
        for cat_index, cat in enumerate(cats):
            images = _spair_images(params, split_index, split, cat_index, cat.name)
            for img in images:
                _save_jpeg(render_scene(img.scene).image, root / "JPEGImages" / cat.name / img.imname)
                _dump_json(
                    root / "ImageAnnotation" / cat.name / f"{Path(img.imname).stem}.json", _image_annotation(img)
                )
            n_images += len(images)
            rng = _rng(params, SPAIR_PAIRS, split_index, cat_index)
            ordered = [(a, b) for a in range(len(images)) for b in range(len(images)) if a != b]
            chosen = 0
            for k in rng.permutation(len(ordered)):
                if chosen == per_category[cat_index]:
                    break
                src, trg = images[ordered[k][0]], images[ordered[k][1]]
                common = src.visible & trg.visible
                if int(common.sum()) < MIN_COMMON_KEYPOINTS:
                    continue
                pair_id = len(names) + 1
                name = f"{pair_id:06d}-{Path(src.imname).stem}-{Path(trg.imname).stem}:{cat.name}"
                _dump_json(
                    root / "PairAnnotation" / split / f"{name}.json", _pair_annotation(pair_id, name, src, trg, common)
                )
                names.append(name)
                chosen += 1
            if chosen < per_category[cat_index]:
                raise ValueError(
                    f"only {chosen} of {per_category[cat_index]} {split} pairs possible for {cat.name!r}: "
                    f"raise n_images_per_category[{split!r}] or lower n_pairs[{split!r}]"
                )
        layout = root / "Layout" / "large" / f"{split}.txt"
        layout.parent.mkdir(parents=True, exist_ok=True)
        layout.write_text("".join(f"{n}\n" for n in names), encoding="utf-8")
        counts["images"][split] = n_images
        counts["pairs"][split] = len(names)
    return counts


# ---------------------------------------------------------------------------------------------- grid

_PALETTE = (
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
    (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212),
)  # fmt: skip


def draw_pair_grid(
    spair_root: str | os.PathLike[str],
    out_png: str | os.PathLike[str],
    *,
    split: str = "test",
    n_pairs: int = 16,
    columns: int = 4,
    zoom: int = 2,
) -> None:
    """Save a grid of pairs (source | target) with matched keypoints drawn in matching colours and numbers.

    Pairs are taken round-robin over categories so that every category shows up. Works on any
    SPair-format folder (the real dataset too).
    """
    by_category: dict[str, list[spair.SpairPair]] = {}
    for pair in spair.load_pairs(spair_root, split):
        by_category.setdefault(pair.category, []).append(pair)
    chosen: list[spair.SpairPair] = []
    for rank in range(max((len(v) for v in by_category.values()), default=0)):
        chosen += [pairs[rank] for pairs in by_category.values() if rank < len(pairs)]
    chosen = chosen[:n_pairs]
    cell_w = max(max(p.src_size[0], p.trg_size[0]) for p in chosen) * zoom if chosen else 1
    cell_h = max(max(p.src_size[1], p.trg_size[1]) for p in chosen) * zoom + 12 if chosen else 1
    rows = max(1, math.ceil(len(chosen) / columns))
    sheet = Image.new("RGB", (columns * (2 * cell_w + 12), rows * (cell_h + 6)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for n, pair in enumerate(chosen):
        x0, y0 = (n % columns) * (2 * cell_w + 12), (n // columns) * (cell_h + 6)
        draw.text((x0 + 2, y0), f"{pair.category} #{pair.pair_id}", fill=(0, 0, 0))
        for side, (path, kps) in enumerate(((pair.src_image, pair.src_kps), (pair.trg_image, pair.trg_kps))):
            with Image.open(path) as img:
                big = img.convert("RGB").resize((img.width * zoom, img.height * zoom), Image.Resampling.NEAREST)
            ox, oy = x0 + side * (cell_w + 4), y0 + 12
            sheet.paste(big, (ox, oy))
            for kid, (x, y) in zip(pair.kps_ids, kps):
                colour = _PALETTE[int(kid) % len(_PALETTE)]
                cx, cy = ox + x * zoom, oy + y * zoom
                draw.ellipse([cx - 3, cy - 3, cx + 3, cy + 3], fill=colour, outline=(0, 0, 0))
                draw.text((cx + 4, cy - 5), str(int(kid)), fill=colour)
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out_png, format="PNG")


# ------------------------------------------------------------------------------------ manifest and main


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fingerprint(hashes: Mapping[str, str], prefix: str = "") -> str:
    """SHA-256 over the sorted (relative path, file hash) list of the files under ``prefix``."""
    digest = hashlib.sha256()
    for rel in sorted(hashes):
        if rel.startswith(prefix):
            digest.update(f"{rel}\0{hashes[rel]}\n".encode())
    return digest.hexdigest()


def _manifest(out: Path, params: WorldParams, counts: dict[str, Any]) -> dict[str, Any]:
    hashes = {p.relative_to(out).as_posix(): file_sha256(p) for p in sorted(out.rglob("*")) if p.is_file()}
    files = {rel: h for rel, h in hashes.items() if not rel.endswith(".jpg") and "/ImageAnnotation/" not in rel}
    folders: dict[str, int] = {}
    for rel in hashes:
        if rel not in files:
            folder = rel.rsplit("/", 1)[0]
            folders[folder] = folders.get(folder, 0) + 1
    return {
        "generator": "vislaw.data.world",
        "code_hash": code_hash("data"),
        "params": params.to_dict(),
        "counts": counts,
        "files": files,  # every file but images and per-image annotations, with its SHA-256
        "bulk_folders": folders,  # number of images / per-image annotations per folder
        "fingerprint": fingerprint(hashes),
        "fingerprints": {part: fingerprint(hashes, part + "/") for part in ("images", "captions", "qa", "spair")},
    }


def make_world(outdir: str | os.PathLike[str], params: WorldParams | Mapping[str, Any]) -> dict[str, Any]:
    """Generate the whole mini-world into ``outdir`` (replaced atomically); returns the manifest."""
    if not isinstance(params, WorldParams):
        params = WorldParams.from_mapping(params)
    params.check()
    start = time.perf_counter()

    def progress(step: str) -> None:
        print(f"make_world: {step} done after {time.perf_counter() - start:.1f} s", file=sys.stderr)

    with atomic_dir(outdir) as out:
        train, train_scenes = _write_caption_set(params, out, "caption_train", CAPTION_TRAIN, params.n_caption_train)
        probe, _ = _write_caption_set(params, out, "caption_probe", CAPTION_PROBE, params.n_caption_probe)
        _dump_json(out / "captions" / "train.json", train)
        _dump_json(out / "captions" / "probe.json", probe)
        progress("captions")

        instruct: list[dict[str, Any]] = []
        questions: list[Question] = []
        counts: dict[str, Any] = {"caption_train": len(train), "caption_probe": len(probe), "qa": {}}
        if params.qa_turns_per_image > 1:
            instruct, per_skill, questions = _qa_conversations(params, train, train_scenes)
        else:
            per_skill = {}
            for skill_index, skill in enumerate(SKILLS):
                per_skill[skill], asked = _qa_train(params, skill_index, skill, train, train_scenes)
                instruct += per_skill[skill]
                questions += asked
        for skill in SKILLS:
            qa_test = _qa_test(params, out, skill)
            _dump_json(out / "qa" / skill / "train.json", per_skill[skill])
            _dump_json(out / "qa" / skill / "test.json", qa_test)
            counts["qa"][skill] = {"train": len(per_skill[skill]), "test": len(qa_test)}
        order = _rng(params, QA_TRAIN, len(SKILLS)).permutation(len(instruct))
        _dump_json(out / "qa" / "instruct_train.json", [instruct[i] for i in order])
        counts["qa_conversations"] = len(instruct)
        progress("QA benchmarks")

        corpus = _corpus(params, train, questions)
        write_corpus(out / CORPUS_FILE, corpus)
        counts["corpus_lines"] = len(corpus)
        progress("corpus")

        counts["spair"] = _write_spair(params, out / "spair")
        progress("SPair-format pairs")
        draw_pair_grid(out / "spair", out / GRID, split="test")
        manifest = _manifest(out, params, counts)
        _dump_json(out / MANIFEST, manifest)
        progress("grid and manifest")
    return manifest
