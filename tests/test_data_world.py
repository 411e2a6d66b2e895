"""The mini-world generator: determinism, keypoints checked against the renderer, formats, atomic output."""

from __future__ import annotations

import hashlib
import io
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vislaw.data import spair, world
from vislaw.data.datasets import CORPUS_FILE, read_corpus
from vislaw.data.render import render_scene
from vislaw.data.scene import (
    COLOUR_NAMES,
    BackgroundSpec,
    LightingSpec,
    ObjectSpec,
    SceneSpec,
    distance_to_polygon_edges,
    points_in_polygon,
    scene_from_dict,
    scene_to_dict,
)
from vislaw.data.shapes import categories
from vislaw.data.text import OPTION_INSTRUCTION, SKILLS, caption, make_question, mc_prompt


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def worlds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("worlds")
    out = {"a": base / "a" / "data", "b": base / "b" / "data", "other": base / "c" / "data"}
    world.make_world(out["a"], world.smoke_params(seed=0))
    world.make_world(out["b"], world.smoke_params(seed=0).to_dict())  # a config mapping works the same
    world.make_world(out["other"], world.smoke_params(seed=1))
    return out


def test_same_seed_same_bytes(worlds):
    a, b = _files(worlds["a"]), _files(worlds["b"])
    assert sorted(a) == sorted(b)
    assert [name for name in a if a[name] != b[name]] == []


def test_different_seed_different_scenes(worlds):
    a, other = _files(worlds["a"]), _files(worlds["other"])
    captions_a = json.loads(a["captions/train.json"])
    captions_o = json.loads(other["captions/train.json"])
    assert sum(x["caption"] != y["caption"] for x, y in zip(captions_a, captions_o)) > 0.9 * len(captions_a)
    images = [name for name in a if name.endswith(".jpg") and name in other]
    assert images and all(a[name] != other[name] for name in images)
    manifests = [json.loads(files["manifest.json"]) for files in (a, other)]
    assert manifests[0]["fingerprint"] != manifests[1]["fingerprint"]


def test_manifest_lists_counts_params_and_fingerprint(worlds):
    root = worlds["a"]
    manifest = json.loads((root / "manifest.json").read_text())
    params = world.smoke_params(seed=0)
    assert manifest["params"] == params.to_dict()
    hashes = {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in root.rglob("*")
        if p.is_file() and p.name != "manifest.json"
    }
    assert manifest["fingerprint"] == world.fingerprint(hashes)
    assert manifest["fingerprints"]["spair"] == world.fingerprint(hashes, "spair/")
    for rel, digest in manifest["files"].items():
        assert hashes[rel] == digest
    assert sum(manifest["bulk_folders"].values()) + len(manifest["files"]) == len(hashes)
    counts = manifest["counts"]
    assert counts["caption_train"] == params.n_caption_train
    assert counts["spair"]["pairs"] == dict(params.n_pairs)
    assert all(
        counts["qa"][s] == {"train": params.n_qa_train_per_skill, "test": params.n_qa_test_per_skill} for s in SKILLS
    )
    corpus = read_corpus(root / CORPUS_FILE)
    assert len(corpus) == counts["corpus_lines"]
    # every stage-2 turn is in the LM's corpus as one document: the prompt's lines, then the answer
    turn = json.loads((root / "qa" / "instruct_train.json").read_text())[0]["conversations"]
    assert turn[0]["value"].removeprefix("<image>\n") + turn[1]["value"] in corpus
    with Image.open(root / world.GRID) as grid:
        assert grid.format == "PNG" and grid.width > 200


def _recorded_scene(root: Path, category: str, imname: str) -> tuple[dict, SceneSpec, int]:
    ann = spair.load_image_annotation(root, category, imname)
    return ann, scene_from_dict(ann["render"]["scene"]), ann["render"]["object_index"]


def test_every_keypoint_matches_the_renderer(worlds):
    """Re-render every image from its recorded parameters: same bytes, and every named keypoint lands on the
    object it names (object-id mask), where the geometry puts it (within a pixel), and is not hidden."""
    root = worlds["a"] / "spair"
    checked = 0
    for split in spair.SPLITS:
        for pair in spair.load_pairs(root, split):
            for imname, image_path, kps, bbox in (
                (pair.src_imname, pair.src_image, pair.src_kps, pair.src_bbox),
                (pair.trg_imname, pair.trg_image, pair.trg_kps, pair.trg_bbox),
            ):
                ann, scene, index = _recorded_scene(root, pair.category, imname)
                rendered = render_scene(scene)
                buffer = io.BytesIO()
                Image.fromarray(rendered.image).save(buffer, format="JPEG", quality=world.JPEG_QUALITY, subsampling=0)
                assert buffer.getvalue() == image_path.read_bytes()

                obj = scene.objects[index]
                assert obj.category == pair.category
                assert ann["render"]["keypoint_names"] == list(obj.kind.keypoint_names)
                expected = obj.keypoints()[pair.kps_ids]
                assert np.abs(expected - kps).max() < 0.01  # recorded to 2 decimals; the budget is 1 px
                for kid, (x, y) in zip(pair.kps_ids, kps):
                    assert ann["kps"][str(kid)] == [x, y]
                    # On the object: inside its silhouette or on its outline (vertices lie on the outline;
                    # 0.01 px allows for the 2-decimal rounding of the recorded coordinates).
                    on_object = any(
                        points_in_polygon(np.array([[x, y]]), poly)[0]
                        or distance_to_polygon_edges(np.array([[x, y]]), poly)[0] < 0.01
                        for poly in obj.body_polygons()
                    )
                    assert on_object
                    # The rendered mask shows this object at (or right next to) the keypoint's pixel.
                    col, row = int(math.floor(x)), int(math.floor(y))
                    near = rendered.object_ids[max(row - 1, 0) : row + 2, max(col - 1, 0) : col + 2]
                    assert (near == index).any(), (pair.name, imname, kid)
                    assert rendered.object_ids[row, col] in (index, -1) or rendered.object_ids[row, col] < index
                # Boxes hold their keypoints and lie in the image.
                assert (bbox[0] <= kps[:, 0]).all() and (kps[:, 0] <= bbox[2]).all()
                assert (bbox[1] <= kps[:, 1]).all() and (kps[:, 1] <= bbox[3]).all()
                assert 0 <= bbox[0] < bbox[2] <= scene.width and 0 <= bbox[1] < bbox[3] <= scene.height
                checked += len(kps)
    assert checked > 500


def test_pairs_are_different_instances_under_different_views(worlds):
    root = worlds["a"] / "spair"
    pairs = spair.load_pairs(root, "test")
    changed = {"colour": 0, "texture": 0, "rotation": 0, "background": 0}
    for pair in pairs:
        _, src_scene, src_i = _recorded_scene(root, pair.category, pair.src_imname)
        _, trg_scene, trg_i = _recorded_scene(root, pair.category, pair.trg_imname)
        src, trg = src_scene.objects[src_i], trg_scene.objects[trg_i]
        assert pair.src_imname != pair.trg_imname
        assert (src.scale, src.aspect, src.rotation) != (trg.scale, trg.aspect, trg.rotation)
        changed["colour"] += src.colour != trg.colour
        changed["texture"] += src.texture != trg.texture
        changed["rotation"] += abs(src.rotation - trg.rotation) > 5
        changed["background"] += src_scene.background != trg_scene.background
        assert len(pair.kps_ids) >= world.MIN_COMMON_KEYPOINTS
    assert all(v > len(pairs) // 2 for v in changed.values()), changed


def test_categories_are_rich_enough():
    cats = categories()
    assert len(cats) >= 6 and len(COLOUR_NAMES) == 8
    for cat in cats:
        assert 4 <= len(cat.keypoints) <= 10, cat.name
        assert len(set(cat.keypoint_names)) == len(cat.keypoints)
        pts = cat.keypoint_array()
        spacing = np.hypot(*(pts[:, None] - pts[None]).transpose(2, 0, 1))
        assert spacing[~np.eye(len(pts), dtype=bool)].min() > 0.25, cat.name  # distinct points


def test_captions_and_qa_formats(worlds):
    root = worlds["a"]
    train = json.loads((root / "captions" / "train.json").read_text())
    probe = json.loads((root / "captions" / "probe.json").read_text())
    assert {r["image"] for r in train}.isdisjoint(r["image"] for r in probe)
    for record in train + probe:
        assert (root / record["image"]).is_file() and record["caption"].startswith("a ")
    instruct = json.loads((root / "qa" / "instruct_train.json").read_text())
    assert sorted({skill for item in instruct for skill in item["skills"]}) == sorted(SKILLS)
    for item in instruct:
        human, gpt = item["conversations"]
        assert human["from"] == "human" and human["value"].startswith("<image>\n")
        # the answer is the option's text, which the prompt lists and asks for
        options = re.findall(r"^[A-D]\. (.+)$", human["value"], re.M)
        assert gpt["from"] == "gpt" and gpt["value"] in options and len(options) >= 3
        assert human["value"].endswith(OPTION_INSTRUCTION)
        assert (root / item["image"]).is_file()
    for skill in SKILLS:
        test = json.loads((root / "qa" / skill / "test.json").read_text())
        for item in test:
            assert 0 <= item["answer"] < len(item["options"]) and len(set(item["options"])) == len(item["options"])
            assert item["prompt"] == mc_prompt(item["question"], item["options"], "option")
            assert item["answer_format"] == "option" and item["answer_letter"] == "ABCD"[item["answer"]]
            assert (root / item["image"]).is_file() and item["skill"] == skill
    assert len(set(json.loads((root / "qa" / "count" / "test.json").read_text())[i]["answer"] for i in range(4))) > 1


def _obj(category: str, colour: str, size: str, cx: float, cy: float, glyph: str | None = None) -> ObjectSpec:
    return ObjectSpec(category, colour, "brown", size, 10.0, 1.0, 0.0, cx, cy, "stripes", 0.3, 0.0, glyph)


def test_captions_and_answers_follow_the_scene():
    scene = SceneSpec(
        width=96,
        height=96,
        background=BackgroundSpec("stripes", (90, 90, 90), (120, 120, 120), 10.0, 0.0),
        clutter=(),
        lighting=LightingSpec(1.0, 0.0, 0.0, (1.0, 1.0, 1.0)),
        objects=(_obj("triangle", "red", "small", 20, 20, None), _obj("star", "blue", "large", 20, 75, "H")),
        noise_seed=0,
    )
    assert caption(scene) == (
        "a small striped red triangle above a large striped blue star with the letter H, on a striped background"
    )
    rng = np.random.default_rng(0)
    answers = {skill: make_question(skill, scene, rng, spatial="relation") for skill in SKILLS}
    assert answers["count"].answer_text == "2"
    assert answers["glyph"].answer_text == "H" and "blue star" in answers["glyph"].question
    assert answers["size"].answer_text in ("small", "large")
    spatial = answers["spatial"]
    assert spatial.answer_text == ("above" if spatial.question.startswith("Where is the red") else "below")
    # both objects sit on the image's diagonals (offsets -28,-28 and -28,+27 from its centre): no location
    assert make_question("spatial", scene, rng, spatial="location") is None
    assert scene_from_dict(json.loads(json.dumps(scene_to_dict(scene)))) == scene


def test_location_questions_name_an_object_off_centre_along_its_clear_axis():
    objects = (
        _obj("triangle", "red", "small", 15, 50),  # 33 px left of the centre (48, 48), 2 px down: on the left
        _obj("star", "blue", "large", 52, 88),  # 4 px right, 40 px down: at the bottom
        _obj("heart", "green", "small", 50, 46),  # 2 px from the centre: never asked about
        _obj("fish", "yellow", "small", 80, 70),  # 32 px right, 22 down: no clear axis (32 < 1.5 x 22)
    )
    scene = SceneSpec(96, 96, BackgroundSpec("stripes", (90, 90, 90), (120, 120, 120), 10.0, 0.0), (),
                      LightingSpec(1.0, 0.0, 0.0, (1.0, 1.0, 1.0)), objects, 0)
    rng = np.random.default_rng(0)
    asked = {}
    for _ in range(40):
        q = make_question("spatial", scene, rng)
        assert q.options[q.answer] == q.answer_text and sorted(q.options) == sorted(
            ("on the left", "on the right", "at the top", "at the bottom"))
        asked[q.question] = q.answer_text
    assert asked == {"Where in the image is the red triangle?": "on the left",
                     "Where in the image is the blue star?": "at the bottom"}
    with pytest.raises(ValueError, match="spatial question 'left' unknown"):
        make_question("spatial", scene, rng, spatial="left")


def test_output_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    out = tmp_path / "data"
    out.mkdir()
    (out / "stale.txt").write_text("old run")

    def fail(*args, **kwargs):
        raise RuntimeError("killed")

    monkeypatch.setattr(world, "_write_spair", fail)
    with pytest.raises(RuntimeError, match="killed"):
        world.make_world(out, world.smoke_params())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # no temporary folder left behind
    assert (out / "stale.txt").read_text() == "old run"  # the old output is untouched


def test_params_reject_unknown_keys():
    with pytest.raises(ValueError, match="n_pairz"):
        world.WorldParams.from_mapping({"n_pairz": {"trn": 1}})
    with pytest.raises(ValueError, match="splits"):
        world.WorldParams.from_mapping({"n_pairs": {"trn": 1, "test": 1}})


def test_params_reject_an_unknown_spatial_question():
    with pytest.raises(ValueError, match="spatial_question 'relative' unknown"):
        world.WorldParams.from_mapping({"spatial_question": "relative"})
    assert world.WorldParams.from_mapping({"spatial_question": "relation"}).spatial_question == "relation"


def test_relation_worlds_ask_relations(tmp_path: Path) -> None:
    """``spatial_question: relation`` (CV-Bench's form) is the same world with the relative question; the test
    split's items are what `qa_test_item` replays."""
    params = world.WorldParams.from_mapping({**world.smoke_params().to_dict(), "spatial_question": "relation"})
    world.make_world(tmp_path / "data", params)
    test = json.loads((tmp_path / "data" / "qa" / "spatial" / "test.json").read_text())
    assert all(" relative to the " in item["question"] for item in test)
    assert set(test[0]["options"]) == {"to the left", "to the right", "above", "below"}
    for j, item in enumerate(test):
        _, question = world.qa_test_item(params, "spatial", j)
        assert (question.question, question.answer) == (item["question"], item["answer"])


def test_params_reject_a_turn_count_outside_one_to_one_per_skill():
    for bad in (0, len(SKILLS) + 1):
        with pytest.raises(ValueError, match=f"qa_turns_per_image {bad} outside"):
            world.WorldParams.from_mapping({"qa_turns_per_image": bad})


def test_multi_turn_conversations_ask_each_skill_its_quota_once_per_image(tmp_path: Path) -> None:
    """``qa_turns_per_image: 3``: every skill gets exactly ``n_qa_train_per_skill`` questions, a conversation
    holds at most 3 turns of distinct skills with ``<image>`` in its first prompt only, and the per-skill
    training files hold exactly the conversations' turns."""
    params = world.WorldParams.from_mapping({**world.smoke_params().to_dict(), "qa_turns_per_image": 3})
    manifest = world.make_world(tmp_path / "data", params)
    root = tmp_path / "data"
    conversations = json.loads((root / "qa" / "instruct_train.json").read_text())
    turns = []
    for item in conversations:
        skills, chat = item["skills"], item["conversations"]
        assert 1 <= len(skills) <= 3 and len(set(skills)) == len(skills) and len(chat) == 2 * len(skills)
        assert [t["from"] for t in chat] == ["human", "gpt"] * len(skills)
        assert [t["value"].startswith("<image>\n") for t in chat[::2]] == [True] + [False] * (len(skills) - 1)
        turns += [(skill, item["image"], chat[2 * i]["value"].removeprefix("<image>\n"), chat[2 * i + 1]["value"])
                  for i, skill in enumerate(skills)]
    assert sum(len(item["skills"]) == 3 for item in conversations) > len(conversations) / 2
    per_skill = []
    for skill in SKILLS:
        records = json.loads((root / "qa" / skill / "train.json").read_text())
        assert len(records) == params.n_qa_train_per_skill == manifest["counts"]["qa"][skill]["train"]
        per_skill += [(skill, r["image"], r["conversations"][0]["value"].removeprefix("<image>\n"),
                       r["conversations"][1]["value"]) for r in records]
    assert sorted(turns) == sorted(per_skill)
    assert manifest["counts"]["qa_conversations"] == len(conversations) < len(turns)


def test_a_bad_corpus_line_is_named(tmp_path: Path) -> None:
    path = tmp_path / CORPUS_FILE
    path.write_text('{"text": "a red star"}\n\n{"text": "What colour?\\nA. red"}\n["not", "an object"]\n')
    with pytest.raises(ValueError, match=r"corpus.jsonl, line 4: not a JSON object"):
        read_corpus(path)
    path.write_text('{"text": "a red star"}\n\n{"text": "What colour?\\nA. red"}\n')
    assert read_corpus(path) == ["a red star", "What colour?\nA. red"]
