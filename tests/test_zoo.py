"""The mini zoo: objectives learn, runs are reproducible, checkpoints load through kind ``mini``."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch

from vislaw.data.scene import GLYPHS
from vislaw.data.world import make_world, smoke_params
from vislaw.encoders import EncoderConfigError, EncoderSpec, create_encoder
from vislaw.features import extract_to_h5, read_features
from vislaw.zoo import MEAN, STD, read_checkpoint_record, train_encoder, training_config

# Tiny backbones and step counts: the point is behaviour, not quality.
TINY_VIT = {"arch": "vit", "dim": 32, "depth": 3, "heads": 2, "stem": [8, 16]}
TINY_CNN = {"arch": "cnn", "dim": 32, "depth": 3, "stem": [8, 16]}
TINY_UNET = {"arch": "unet", "dim": 32, "deep": 32, "stem": [16]}
TINY = {"steps": 16, "batch_size": 8, "log_every": 4, "limit_images": 48}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("zoo") / "world"
    make_world(root, smoke_params())
    return root


@pytest.fixture(scope="module")
def checkpoints(world: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A trained ViT at 64 px and a random CNN, shared by the loading tests."""
    out = tmp_path_factory.mktemp("ckpt")
    train_encoder("contrastive", world, out / "vit", {**TINY, "arch": TINY_VIT, "image_size": 64})
    train_encoder("random", world, out / "cnn", {"arch": TINY_CNN, "image_size": 64, "seed": 1})
    train_encoder("random", world, out / "unet", {"arch": TINY_UNET, "image_size": 64, "seed": 2})
    return {"vit": out / "vit", "cnn": out / "cnn", "unet": out / "unet"}


def mini_spec(path: Path, name: str, arch: str, image_size: int = 64, **fields: object) -> EncoderSpec:
    return EncoderSpec(kind="mini", weights=str(path), image_size=image_size, patch=8, mean=MEAN, std=STD,
                       options={"arch": arch}, name=name, **fields)


@pytest.mark.parametrize(("objective", "arch"), [("contrastive", TINY_VIT), ("selfsup", TINY_CNN),
                                                 ("denoise", TINY_UNET), ("denoise", TINY_CNN),
                                                 ("supervised", TINY_CNN), ("supervised", TINY_VIT)])
def test_each_objective_lowers_its_loss(world: Path, tmp_path: Path, objective: str, arch: dict) -> None:
    overrides = {**TINY, "arch": arch, "image_size": 64}
    if objective == "selfsup":
        overrides["view_size"] = 48
    if objective == "denoise":  # one noise level: a random level per image makes 8-image batch losses jumpy
        overrides.update(noise=[0.5, 0.5], batch_size=16)
    if objective == "supervised":  # more reads per object: 8-image batches of dense labels are noisy
        overrides.update(points=8, lr=3e-3)
    record = train_encoder(objective, world, tmp_path / objective, overrides)
    curve = [loss for _, loss in record["loss_curve"]]
    assert len(curve) == 4 and curve[-1] < curve[0], curve
    saved = json.loads((tmp_path / objective / "zoo.json").read_text())
    assert saved["objective"] == objective and saved["config"]["steps"] == 16
    expected_arch = {**arch, "image_size": 64, **({"mlp_ratio": 2.0} if arch["arch"] == "vit" else {})}
    assert saved["architecture"] == expected_arch
    assert (tmp_path / objective / "backbone.pt").is_file() and (tmp_path / objective / "heads.pt").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left


def test_same_seed_same_weights_other_seed_other_weights(world: Path, tmp_path: Path) -> None:
    def weights(seed: int, name: str) -> dict[str, torch.Tensor]:
        train_encoder("selfsup", world, tmp_path / name,
                      {**TINY, "steps": 4, "arch": TINY_CNN, "image_size": 64, "view_size": 48, "seed": seed})
        return torch.load(tmp_path / name / "backbone.pt", weights_only=True)

    first, again, other = weights(3, "a"), weights(3, "b"), weights(4, "c")
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert any(not torch.equal(first[k], other[k]) for k in first)


def test_training_config_rejects_unknown_keys_and_objectives() -> None:
    with pytest.raises(ValueError, match="view_size"):
        training_config("contrastive", {"view_size": 48})
    with pytest.raises(ValueError, match="objective"):
        training_config("clip", {})
    assert training_config("random", {"steps": 100})["steps"] == 0


@pytest.mark.parametrize(("key", "image_size", "grid"), [("vit", 64, (8, 8)), ("vit", 96, (12, 12)),
                                                         ("cnn", 64, (8, 8)), ("cnn", 96, (12, 12))])
def test_checkpoints_load_as_kind_mini(checkpoints: dict[str, Path], key: str, image_size: int,
                                       grid: tuple[int, int]) -> None:
    encoder = create_encoder(mini_spec(checkpoints[key], f"mini_{key}", key, image_size))
    assert encoder.grid == grid and encoder.num_layers == 3
    x = torch.rand(2, 3, image_size, image_size)
    tokens = encoder.tokens(x, layers=(-2, -1, 0))
    assert {layer: tuple(t.shape) for layer, t in tokens.items()} == {l: (2, grid[0] * grid[1], 32) for l in (-2, -1, 0)}
    assert torch.equal(tokens[-2], encoder.tokens(x, layers=(1,))[1])  # -2 = penultimate of 3 blocks
    assert not torch.allclose(tokens[-2], tokens[-1])
    if key == "vit":  # the CLS token comes first when the spec keeps the prefix
        keep = create_encoder(mini_spec(checkpoints[key], "k", key, image_size, drop_prefix=False))
        kept = keep.tokens(x)[-2]
        assert kept.shape[1] == grid[0] * grid[1] + 1 and torch.allclose(kept[:, 1:], tokens[-2])


@pytest.mark.parametrize(("image_size", "grid"), [(64, (8, 8)), (96, (12, 12))])
def test_unet_layers_are_stride_8_readouts_along_the_path(checkpoints: dict[str, Path], image_size: int,
                                                         grid: tuple[int, int]) -> None:
    encoder = create_encoder(mini_spec(checkpoints["unet"], "mini_unet", "unet", image_size))
    assert encoder.grid == grid and encoder.num_layers == 4
    x = torch.rand(2, 3, image_size, image_size)
    tokens = encoder.tokens(x, layers=(0, 1, -2, -1))
    # down8 (dim), mid16 (deep), the first up-block (dim; the default layer -2, as DIFT), up4 (stem width)
    assert {layer: tuple(t.shape) for layer, t in tokens.items()} == {
        0: (2, grid[0] * grid[1], 32), 1: (2, grid[0] * grid[1], 32), -2: (2, grid[0] * grid[1], 32),
        -1: (2, grid[0] * grid[1], 16)}
    assert torch.equal(tokens[-2], encoder.tokens(x, layers=(2,))[2])
    backbone = encoder.backbone
    normalised = encoder.normalize(x)
    torch.testing.assert_close(backbone.feature_map(normalised).flatten(2).transpose(1, 2), tokens[-2])
    assert tuple(backbone.reconstruct(normalised).shape) == (2, 3, image_size, image_size)


def test_caption_set_carries_object_centres_and_labels(world: Path) -> None:
    from vislaw.zoo.data import load_caption_set

    data = load_caption_set(world, 16)
    entries = json.loads((world / "captions" / "train.json").read_text())[:16]
    assert data.objects is not None and data.objects.shape[:2] == (16, max(len(e["objects"]) for e in entries))
    for row, entry in enumerate(entries):
        objects = data.objects[row]
        assert int((objects[:, 2] >= 0).sum()) == len(entry["objects"])
        side = data.images.shape[-1]
        first = entry["objects"][0]
        torch.testing.assert_close(objects[0, :2], torch.tensor([first["cx"], first["cy"]]) / side)
        names = [n.split("=", 1)[1] for n in data.attribute_names if n.startswith("category=")]
        assert names[int(objects[0, 2])] == first["category"]
        assert objects.shape[-1] == 7
        # the glyph as 1 + its index in GLYPHS (what the supervised identity head learns), 0 without one
        assert objects[: len(entry["objects"]), 6].tolist() == [
            float(1 + GLYPHS.index(o["glyph"])) if o.get("glyph") else 0.0 for o in entry["objects"]]
        # where the glyph is drawn (bench/object_probe.py reads there): on its object, or null without one
        for o in entry["objects"]:
            assert (o["glyph_xy"] is None) == (o["glyph"] is None)
            if o["glyph"]:  # on its object: within the largest size class's half-extent of the centre
                assert math.dist(o["glyph_xy"], (o["cx"], o["cy"])) < 0.25 * side
    assert any(o.get("glyph") for e in entries for o in e["objects"])  # the check above saw glyphs


def test_caption_set_refuses_a_glyph_outside_the_worlds_set(world: Path, tmp_path: Path) -> None:
    from vislaw.zoo.data import load_caption_set

    planted = tmp_path / "world"
    (planted / "captions").mkdir(parents=True)
    entries = json.loads((world / "captions" / "train.json").read_text())[:4]
    entries[2]["objects"][0]["glyph"] = "K"
    (planted / "captions" / "train.json").write_text(json.dumps(entries))
    for entry in entries:
        (planted / entry["image"]).parent.mkdir(parents=True, exist_ok=True)
        (planted / entry["image"]).write_bytes((world / entry["image"]).read_bytes())
    with pytest.raises(ValueError, match=rf"train\.json: image {entries[2]['image']}: glyph 'K' is not one of"):
        load_caption_set(planted)


def test_supervised_glyph_identity_head_learns_only_from_objects_with_a_glyph(world: Path) -> None:
    from vislaw.zoo.arch import build_backbone
    from vislaw.zoo.data import load_caption_set
    from vislaw.zoo.objectives import Supervised

    data = load_caption_set(world, 16)
    rows = torch.tensor([r for r in range(16) if bool((data.objects[r, :, 6] > 0).any())])
    assert len(rows) > 0  # the smoke world puts glyphs on some objects
    settings = training_config("supervised", {**TINY, "arch": TINY_CNN, "image_size": 64})

    def identity_grad(caption_set) -> torch.Tensor | None:
        torch.manual_seed(0)
        objective = Supervised(build_backbone(settings["arch"]), caption_set, settings)
        objective.loss(rows, torch.Generator().manual_seed(0)).backward()
        return objective.glyph_identity_head.weight.grad

    assert identity_grad(data) is not None and identity_grad(data).abs().sum() > 0
    no_glyphs = data.objects.clone()
    no_glyphs[..., 6] = torch.where(no_glyphs[..., 6] > 0, 0.0, no_glyphs[..., 6])
    assert identity_grad(dataclasses.replace(data, objects=no_glyphs)) is None  # no glyph, no identity loss


def test_supervised_position_head_adds_the_weighted_error_of_each_object_place(world: Path) -> None:
    """With no jitter the points are the object centres; a zeroed position head predicts the image centre, so
    the term is the mean squared centre coordinate in [-1, 1], times ``position_weight``."""
    from vislaw.zoo.arch import build_backbone
    from vislaw.zoo.data import load_caption_set
    from vislaw.zoo.objectives import Supervised

    data = load_caption_set(world, 16)
    rows = torch.arange(16)
    settings = training_config("supervised", {**TINY, "arch": TINY_CNN, "image_size": 64, "jitter": 0.0,
                                              "position_weight": 2.5})
    torch.manual_seed(0)
    objective = Supervised(build_backbone(settings["arch"]), data, settings)
    torch.nn.init.zeros_(objective.position_head.weight)
    torch.nn.init.zeros_(objective.position_head.bias)
    with_term = objective.loss(rows, torch.Generator().manual_seed(0))
    objective.settings["position_weight"] = 0.0
    without = objective.loss(rows, torch.Generator().manual_seed(0))
    centres = data.objects[rows][data.objects[rows, :, 2] >= 0][:, :2].double()
    expected = 2.5 * float(((centres * 2 - 1) ** 2).mean())
    assert (with_term - without).item() == pytest.approx(expected, rel=1e-4)
    assert training_config("supervised")["position_weight"] == 0.0  # off by default: no head, same draws
    assert Supervised(build_backbone(settings["arch"]), data, training_config("supervised")).position_head is None


def test_weight_decay_spares_norms_biases_position_tables_and_what_the_objective_names(world: Path) -> None:
    """timm's ViT exempts ``pos_embed`` and ``cls_token``; beyond those, only the names an objective's
    ``no_weight_decay()`` gives (the supervised position head's weight), not every name containing "pos"."""
    from vislaw.zoo.arch import build_backbone
    from vislaw.zoo.data import load_caption_set
    from vislaw.zoo.objectives import Contrastive, Supervised
    from vislaw.zoo.train import weight_decay_groups

    data = load_caption_set(world, 16)

    def spared_names(model: torch.nn.Module) -> set[str]:
        decay, spared = weight_decay_groups(model, 0.05)
        assert (decay["weight_decay"], spared["weight_decay"]) == (0.05, 0.0)
        assert len(decay["params"]) + len(spared["params"]) == len(list(model.parameters()))
        return {n for n, p in model.named_parameters() if any(p is q for q in spared["params"])}

    def vectors(model: torch.nn.Module) -> set[str]:
        return {n for n, p in model.named_parameters() if p.ndim < 2}

    settings = training_config("supervised", {**TINY, "arch": TINY_VIT, "image_size": 64, "position_weight": 1.0})
    supervised = Supervised(build_backbone(settings["arch"]), data, settings)
    assert supervised.position_head.weight.ndim == 2
    assert spared_names(supervised) == vectors(supervised) | {"backbone.pos_embed", "backbone.cls_token",
                                                               "position_head.weight"}
    supervised.no_weight_decay = set  # an objective naming nothing: the head's matrix is decayed like any other
    assert spared_names(supervised) == vectors(supervised) | {"backbone.pos_embed", "backbone.cls_token"}
    settings = training_config("contrastive", {**TINY, "arch": TINY_VIT, "image_size": 64})
    contrastive = Contrastive(build_backbone(settings["arch"]), data, settings)
    assert spared_names(contrastive) == vectors(contrastive) | {"backbone.pos_embed", "backbone.cls_token", "text.pos"}


def test_mini_encoders_extract_and_concatenate(checkpoints: dict[str, Path], world: Path, tmp_path: Path) -> None:
    parts = (mini_spec(checkpoints["vit"], "mini_vit", "vit"), mini_spec(checkpoints["cnn"], "mini_cnn", "cnn"))
    spec = EncoderSpec(kind="concat", image_size=64, parts=parts, name="vit_plus_cnn")
    tokens = create_encoder(spec).tokens(torch.rand(2, 3, 64, 64))[-2]
    assert tuple(tokens.shape) == (2, 64, 64)
    torch.testing.assert_close(tokens.norm(dim=-1), torch.ones(2, 64))
    torch.testing.assert_close(tokens[..., :32].norm(dim=-1), torch.full((2, 64), 0.5**0.5))  # each part normalised
    images = sorted((world / "spair" / "JPEGImages").rglob("*.jpg"))[:3]
    protocol = extract_to_h5(spec, images, tmp_path / "f.h5", dataset_fingerprint="t", device="cpu")
    assert read_features(tmp_path / "f.h5", [p.stem for p in images], protocol).shape == (3, 64, 64)


def test_missing_or_mismatched_checkpoint_names_the_config_key(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(EncoderConfigError, match=r"encoders\.mini_x\.weights: .*does not exist"):
        create_encoder(mini_spec(tmp_path / "nothing", "mini_x", "vit"))
    with pytest.raises(EncoderConfigError, match=r"encoders\.mini_x\.weights: kind 'mini' needs"):
        create_encoder(dataclasses.replace(mini_spec(tmp_path, "mini_x", "vit"), weights=None))
    with pytest.raises(EncoderConfigError, match=r"encoders\.mini_x\.weights: .*not a mini-zoo checkpoint"):
        create_encoder(mini_spec(tmp_path, "mini_x", "vit"))  # exists, but holds no zoo.json
    with pytest.raises(EncoderConfigError, match=r"encoders\.mini_x\.options: arch='cnn'"):
        create_encoder(mini_spec(checkpoints["vit"], "mini_x", "cnn"))
    with pytest.raises(EncoderConfigError, match=r"encoders\.mini_x\.options: unknown key"):
        create_encoder(dataclasses.replace(mini_spec(checkpoints["vit"], "mini_x", "vit"),
                                           options={"arch": "vit", "width": 3}))
    with pytest.raises(EncoderConfigError, match=r"encoders\.mini_x\.mean"):
        create_encoder(dataclasses.replace(mini_spec(checkpoints["vit"], "mini_x", "vit"), mean=(0.4, 0.4, 0.4)))
    with pytest.raises(EncoderConfigError, match=r"encoders\.mini_x\.layer"):
        create_encoder(dataclasses.replace(mini_spec(checkpoints["vit"], "mini_x", "vit"), layer=3))
    with pytest.raises(EncoderConfigError, match=r"encoders\.mini_x\.patch"):
        create_encoder(dataclasses.replace(mini_spec(checkpoints["vit"], "mini_x", "vit"), patch=16))


def test_random_setting_records_no_training(checkpoints: dict[str, Path]) -> None:
    record = read_checkpoint_record(checkpoints["cnn"])
    assert record["objective"] == "random" and record["loss_curve"] == [] and record["config"]["seed"] == 1
    assert not (checkpoints["cnn"] / "heads.pt").exists()


def test_selfsup_views_keep_colours_unless_channel_shuffling_is_asked_for() -> None:
    """jitter_colours with only the channel permutation left: probability 0 (the default) returns every image
    as it was; probability 1 permutes each image's channels (the same three planes, reordered), and some of
    eight images get a non-identity order."""
    from vislaw.zoo.data import Augment, jitter_colours

    images = torch.rand(8, 3, 6, 6)
    plain = dict(brightness=0.0, contrast=0.0, saturation=0.0, grayscale=0.0)
    assert Augment().channel_shuffle == 0.0
    kept = jitter_colours(images.clone(), Augment(**plain), torch.Generator().manual_seed(0))
    torch.testing.assert_close(kept, images)
    shuffled = jitter_colours(images.clone(), Augment(**plain, channel_shuffle=1.0), torch.Generator().manual_seed(0))
    moved = 0
    for before, after in zip(images, shuffled):
        order = [next(j for j in range(3) if torch.allclose(after[c], before[j], atol=1e-6)) for c in range(3)]
        assert sorted(order) == [0, 1, 2]
        moved += order != [0, 1, 2]
    assert moved > 0
    assert training_config("selfsup")["channel_shuffle"] == 0.0
