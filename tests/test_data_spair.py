"""The SPair-71k reader on a hand-written fixture in the real format, on the mini-world, and on bad input."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vislaw.data import spair
from vislaw.data.world import make_world, smoke_params

FIXTURE = Path(__file__).parent / "fixtures" / "spair"


@pytest.fixture(scope="module")
def world_spair(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("world") / "data"
    make_world(out, smoke_params())
    return out / "spair"


@pytest.fixture
def fixture_copy(tmp_path: Path) -> Path:
    root = tmp_path / "SPair-71k"
    shutil.copytree(FIXTURE, root)
    return root


def test_reads_the_hand_written_fixture():
    (trn,) = spair.load_pairs(FIXTURE, "trn")
    assert trn.name == "000001-2008_000585-2008_002221:aeroplane"
    assert trn.pair_id == 1 and trn.split == "trn" and trn.category == "aeroplane"
    assert (trn.src_imname, trn.trg_imname) == ("2008_000585.jpg", "2008_002221.jpg")
    assert trn.src_image == FIXTURE / "JPEGImages" / "aeroplane" / "2008_000585.jpg"
    assert trn.src_size == (8, 6) and trn.trg_size == (6, 8)
    np.testing.assert_array_equal(trn.src_kps, [[2, 2], [6, 3], [4, 4]])
    np.testing.assert_array_equal(trn.trg_kps, [[1, 2], [4, 3], [3, 6]])
    np.testing.assert_array_equal(trn.kps_ids, [0, 3, 7])
    np.testing.assert_array_equal(trn.src_bbox, [1, 1, 7, 5])
    np.testing.assert_array_equal(trn.trg_bbox, [0, 1, 5, 7])
    assert (trn.viewpoint_variation, trn.scale_variation, trn.truncation, trn.occlusion, trn.mirror) == (2, 0, 0, 0, 0)
    assert trn.src_key == "aeroplane/2008_000585.jpg"

    test = spair.load_pairs(FIXTURE, "test")
    assert [p.name for p in test] == spair.layout_names(FIXTURE, "test")
    assert [p.category for p in test] == ["aeroplane", "cat"]
    assert [p.category for p in spair.load_pairs(FIXTURE, "test", categories=["cat"])] == ["cat"]


def test_split_images_are_unique_and_sorted():
    images = spair.split_images(FIXTURE, "test")
    assert [i.key for i in images] == [
        "aeroplane/2008_002221.jpg",
        "aeroplane/2009_001133.jpg",
        "cat/2007_000528.jpg",
        "cat/2010_003381.jpg",
    ]
    assert all(i.path.is_file() for i in images)
    assert images[0].size == (6, 8)


def _check_pair_contents(pair: spair.SpairPair) -> None:
    """What every consumer may rely on, whichever dataset the pair came from."""
    assert isinstance(pair, spair.SpairPair)
    assert isinstance(pair.pair_id, int) and isinstance(pair.category, str)
    n = len(pair.kps_ids)
    assert n >= 1
    for kps, size, bbox, image in (
        (pair.src_kps, pair.src_size, pair.src_bbox, pair.src_image),
        (pair.trg_kps, pair.trg_size, pair.trg_bbox, pair.trg_image),
    ):
        assert kps.dtype == np.float64 and kps.shape == (n, 2)
        assert bbox.dtype == np.float64 and bbox.shape == (4,)
        assert isinstance(size, tuple) and all(isinstance(v, int) for v in size)
        with Image.open(image) as img:
            assert img.size == size  # imsize is [width, height, channels]
        assert (kps >= 0).all() and (kps[:, 0] <= size[0]).all() and (kps[:, 1] <= size[1]).all()
        assert bbox[0] <= bbox[2] <= size[0] and bbox[1] <= bbox[3] <= size[1]
    assert pair.kps_ids.dtype == np.int64
    assert pair.name.endswith(f":{pair.category}") and pair.name.startswith(f"{pair.pair_id:06d}-")
    assert pair.src_image.parent.name == pair.category


def test_fixture_and_world_load_identically(world_spair: Path):
    for root in (FIXTURE, world_spair):
        for split in spair.SPLITS:
            pairs = spair.load_pairs(root, split)
            assert pairs, (root, split)
            for pair in pairs:
                _check_pair_contents(pair)
            assert [p.name for p in pairs] == sorted(spair.layout_names(root, split))
            keys = {p.src_key for p in pairs} | {p.trg_key for p in pairs}
            assert [i.key for i in spair.split_images(root, split)] == sorted(keys)
    # The world's image annotations carry SPair's fields (plus the rendering parameters).
    pair = spair.load_pairs(world_spair, "test")[0]
    ann = spair.load_image_annotation(world_spair, pair.category, pair.src_imname)
    real = spair.load_image_annotation(FIXTURE, "cat", "2007_000528.jpg")
    assert set(real) <= set(ann) and "render" in ann


def test_missing_folder_is_named(tmp_path: Path, fixture_copy: Path):
    with pytest.raises(spair.SpairNotFoundError, match=re.escape(str(tmp_path / "nowhere"))):
        spair.load_pairs(tmp_path / "nowhere", "test")
    shutil.rmtree(fixture_copy / "PairAnnotation" / "val")
    with pytest.raises(FileNotFoundError, match=re.escape(str(fixture_copy / "PairAnnotation" / "val"))):
        spair.load_pairs(fixture_copy, "val")
    with pytest.raises(ValueError, match="unknown SPair split"):
        spair.load_pairs(fixture_copy, "train")


def test_missing_image_is_named(fixture_copy: Path):
    (fixture_copy / "JPEGImages" / "cat" / "2007_000528.jpg").unlink()
    with pytest.raises(spair.SpairNotFoundError) as err:
        spair.load_pairs(fixture_copy, "test")
    assert isinstance(err.value, FileNotFoundError)
    assert "2007_000528.jpg" in str(err.value) and "000005-2010_003381-2007_000528:cat.json" in str(err.value)
    assert len(spair.load_pairs(fixture_copy, "test", check_images=False)) == 2


def test_malformed_json_is_named(fixture_copy: Path):
    bad = fixture_copy / "PairAnnotation" / "test" / "000005-2010_003381-2007_000528:cat.json"
    bad.write_text(bad.read_text()[:-20])
    with pytest.raises(spair.SpairFormatError, match="not valid JSON") as err:
        spair.load_pairs(fixture_copy, "test")
    assert isinstance(err.value, ValueError) and str(bad) in str(err.value)


def test_missing_field_is_named(fixture_copy: Path):
    bad = fixture_copy / "PairAnnotation" / "trn" / "000001-2008_000585-2008_002221:aeroplane.json"
    bad.write_text(bad.read_text().replace('"trg_bndbox"', '"trg_box"'))
    with pytest.raises(spair.SpairFormatError, match="trg_bndbox") as err:
        spair.load_pairs(fixture_copy, "trn")
    assert str(bad) in str(err.value)


def test_keypoint_count_mismatch_is_named(fixture_copy: Path):
    bad = fixture_copy / "PairAnnotation" / "test" / "000004-2008_002221-2009_001133:aeroplane.json"
    bad.write_text(bad.read_text().replace('"trg_kps": [[2, 1], [6, 2], [5, 7]]', '"trg_kps": [[2, 1], [6, 2]]'))
    with pytest.raises(spair.SpairFormatError, match="keypoint count mismatch, 3 source vs 2 target") as err:
        spair.load_pairs(fixture_copy, "test")
    assert str(bad) in str(err.value)


def test_category_must_match_file_name(fixture_copy: Path):
    bad = fixture_copy / "PairAnnotation" / "val" / "000003-2007_000528-2010_003381:cat.json"
    bad.write_text(bad.read_text().replace('"category": "cat"', '"category": "dog"'))
    with pytest.raises(spair.SpairFormatError, match="differs from the file name"):
        spair.load_pairs(fixture_copy, "val")


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        # a JSON null would become NaN and corrupt C without a word
        ('"src_kps": [[2, 1], [5, 2]]', '"src_kps": [[2, null], [5, 2]]', "field 'src_kps' holds a null"),
        # [x, y, visible] triples must not be regrouped into pairs
        ('"src_kps": [[2, 1], [5, 2]]', '"src_kps": [[2, 1, 1], [5, 2, 1]]',
         r"field 'src_kps' should be a list of \[x, y\] points, got shape \[2, 3\]"),
        ('"src_kps": [[2, 1], [5, 2]]', '"src_kps": [2, 1, 5, 2]', r"got shape \[4\]"),
        # an inverted box makes PCK's threshold negative: every keypoint would count as wrong
        ('"trg_bndbox": [2, 1, 7, 5]', '"trg_bndbox": [7, 5, 2, 1]', "field 'trg_bndbox' is not a box with x2 > x1"),
        ('"trg_bndbox": [2, 1, 7, 5]', '"trg_bndbox": [2, null, 7, 5]', "field 'trg_bndbox' holds a null"),
        ('"trg_bndbox": [2, 1, 7, 5]', '"trg_bndbox": "x"', r"field 'trg_bndbox' should be \[x1, y1, x2, y2\]"),
        ('"src_imsize": [8, 6, 3]', '"src_imsize": [null, 6, 3]', "field 'src_imsize' should be"),
        ('"kps_ids": ["1", "4"]', '"kps_ids": ["a", "b"]', "field 'kps_ids' should be an integer, got 'a'"),
        ('"pair_id": 5', '"pair_id": "five"', "field 'pair_id' should be an integer, got 'five'"),
        ('"mirror": 0', '"mirror": null', "field 'mirror' should be an integer, got None"),
    ],
)
def test_bad_values_are_named_with_their_file_and_field(fixture_copy: Path, old: str, new: str, message: str):
    bad = fixture_copy / "PairAnnotation" / "test" / "000005-2010_003381-2007_000528:cat.json"
    assert old in bad.read_text()
    bad.write_text(bad.read_text().replace(old, new))
    with pytest.raises(spair.SpairFormatError, match=message) as err:
        spair.load_pairs(fixture_copy, "test")
    assert str(bad) in str(err.value)


def test_an_image_of_another_size_than_annotated_is_named(fixture_copy: Path):
    # keypoints are framed through the annotated size: a resized copy of the image would misplace them all
    image = fixture_copy / "JPEGImages" / "cat" / "2007_000528.jpg"
    Image.open(image).resize((16, 12)).save(image)
    with pytest.raises(spair.SpairFormatError, match=r"trg_imsize says 8x6 \(width x height\) but .*2007_000528"
                                                     r"\.jpg is 16x12") as err:
        spair.load_pairs(fixture_copy, "test")
    assert "000005-2010_003381-2007_000528:cat.json" in str(err.value)
