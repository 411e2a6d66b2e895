"""Real data as the data folder: `prepare_data` on a tiny SPair-71k + LLaVA-format fixture, its errors, and the
workflow's 'data' block (the paper-real preset's dry run, one data source, the prepare rule itself)."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pytest
import yaml
from PIL import Image

from vislaw.data import spair
from vislaw.data.datasets import CORPUS_FILE, image_set, qa_skills, read_corpus, read_records
from vislaw.data.prepare import PROBE_DRAW, DataSourceError, check_source, prepare_data
from vislaw.data.text import mc_prompt

from .conftest import REPO, copy_workflow, planned_rules, snakemake

SPAIR_FIXTURE = Path(__file__).parent / "fixtures" / "spair"
PRESET = "presets/paper-real.yaml"
N_CAPTIONS = 12
# The preset's diffusion settings -> the tiny pipeline family that stands in for each (tests/tiny_checkpoints.py)
DIFFUSION_SETTINGS = {"SD15": "sd", "SD21": "sd", "SDim": "sdim", "SDXL": "sdxl", "DiT": "dit", "SD3": "sd3"}


def _jpeg(path: Path, colour: tuple[int, int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (16, 12), colour).save(path, format="JPEG")


def _caption_record(i: int) -> dict[str, Any]:
    # LLaVA's pretraining format, as in blip_laion_cc_sbu_558k.json
    return {"id": f"{i:09d}", "image": f"{i % 3:05d}/{i:09d}.jpg",
            "conversations": [{"from": "human", "value": "Describe the image briefly.\n<image>"},
                              {"from": "gpt", "value": f"a plain picture number {i}"}]}


def make_source(root: Path) -> dict[str, Any]:
    """A tiny real-format source: SPair-71k, LLaVA-format captions and conversations, one MC benchmark.

    Returns the config's ``data`` block (absolute paths, as a user's own config may have them)."""
    shutil.copytree(SPAIR_FIXTURE, root / "SPair-71k")
    captions = [_caption_record(i) for i in range(N_CAPTIONS)]
    for i, record in enumerate(captions):
        _jpeg(root / "pretrain" / "images" / record["image"], (20 * i, 100, 200 - 10 * i))
    (root / "pretrain" / "captions.json").write_text(json.dumps(captions))
    instruct = [{"id": f"c{i}", "image": captions[i]["image"],
                 "conversations": [{"from": "human", "value": "<image>\nWhat number is this?"},
                                   {"from": "gpt", "value": f"Number {i}."}]} for i in range(4)]
    instruct[1]["conversations"] += [{"from": "human", "value": "Is it bright?"}, {"from": "gpt", "value": "Yes."}]
    (root / "instruct.json").write_text(json.dumps(instruct))
    tests = [{"id": "q0", "image": "a.jpg", "question": "Which colour?", "options": ["red", "blue"], "answer": 1},
             {"image": "b.jpg", "question": "How many?", "options": ["one", "two", "three"], "answer": "C"}]
    for name in ("a.jpg", "b.jpg"):
        _jpeg(root / "bench" / name, (200, 0, 0))
    (root / "bench" / "test.json").write_text(json.dumps(tests))
    return {
        "spair": str(root / "SPair-71k"),
        "captions": {"train": str(root / "pretrain" / "captions.json"), "image_root": str(root / "pretrain" / "images"),
                     "n_probe": 4, "n_train": 8, "seed": 0},
        "instruct": {"train": str(root / "instruct.json")},
        "qa": {"colours": {"test": str(root / "bench" / "test.json"), "image_root": str(root / "bench")}},
    }


@pytest.fixture
def source(tmp_path: Path) -> dict[str, Any]:
    return make_source(tmp_path / "source")


def _rewrite(path: str, edit) -> None:
    records = json.loads(Path(path).read_text())
    edit(records)
    Path(path).write_text(json.dumps(records))


# ------------------------------------------------------------------------------------------ library


def test_prepared_folder_has_the_layout_image_set_reads(source: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "data"
    manifest = prepare_data(out, source)

    spair_set = image_set(out, "spair_test")
    assert list(spair_set.ids) == [i.key for i in spair.split_images(SPAIR_FIXTURE, "test")]
    assert all(p.is_file() for p in spair_set.paths)

    train, probe = image_set(out, "caption_train"), image_set(out, "caption_probe")
    assert len(train.ids) == 8 and len(probe.ids) == 4
    assert all(i.startswith("images/captions/") for i in train.ids + probe.ids)
    assert all(p.is_file() for p in train.paths + probe.paths)
    originals = {r["image"]: r["conversations"][1]["value"]
                 for r in json.loads(Path(source["captions"]["train"]).read_text())}
    for record in read_records(out / "captions" / "train.json"):
        assert record["caption"] == originals[record["image"].removeprefix("images/captions/")]

    assert qa_skills(out) == ["colours"]
    qa = read_records(out / "qa" / "colours" / "test.json")
    assert [(r["answer"], r["answer_letter"]) for r in qa] == [(1, "B"), (2, "C")]
    assert qa[0]["prompt"] == mc_prompt("Which colour?", ["red", "blue"]) and qa[1]["id"] == "1"
    assert set(image_set(out, "qa_test").ids) == {"images/qa/colours/a.jpg", "images/qa/colours/b.jpg"}

    # the built-in stage 2 finds each conversation's image in the caption_train cache
    instruct = read_records(out / "qa" / "instruct_train.json")
    assert {r["image"] for r in instruct} <= set(train.ids)
    # external commands get the files as the user gave them
    assert (out / "source" / "captions_train.json").resolve() == Path(source["captions"]["train"]).resolve()
    assert (out / "source" / "instruct_train.json").read_text() == Path(source["instruct"]["train"]).read_text()

    corpus = read_corpus(out / CORPUS_FILE)
    assert corpus[:8] == [r["caption"] for r in read_records(out / "captions" / "train.json")]
    assert "What number is this?" in corpus
    assert manifest["counts"]["caption_source"] == N_CAPTIONS
    assert manifest["counts"]["spair"]["test"] == {"pairs": 2, "images": 4, "categories": 2}
    assert json.loads((out / "manifest.json").read_text())["fingerprint"] == manifest["fingerprint"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "source"]  # no temporary folder left beside it


def test_draws_are_seeded_and_the_probe_does_not_move_with_n_train(source: dict[str, Any], tmp_path: Path) -> None:
    prepare_data(tmp_path / "a", source)
    source["captions"]["n_train"] = None
    prepare_data(tmp_path / "b", source)
    source["captions"]["seed"] = 1
    prepare_data(tmp_path / "c", source)
    a, b, c = (image_set(tmp_path / x, "caption_probe").ids for x in "abc")
    assert a == b and a != c
    assert len(image_set(tmp_path / "b", "caption_train").ids) == N_CAPTIONS
    # the probe keeps the order drawn, so A's first a_score.n_probe pairs are a random draw, not the file's start
    drawn = np.random.default_rng([0, PROBE_DRAW]).choice(N_CAPTIONS, size=4, replace=False)
    assert drawn.tolist() != sorted(drawn.tolist())
    probe = read_records(tmp_path / "a" / "captions" / "probe.json")
    assert [r["caption"] for r in probe] == [f"a plain picture number {i}" for i in drawn]


def test_a_probe_file_replaces_the_draw(source: dict[str, Any], tmp_path: Path) -> None:
    probe = tmp_path / "probe.json"
    probe.write_text(json.dumps([{"image": "00001/000000001.jpg", "caption": "held out"}]))
    source["captions"]["probe"] = str(probe)
    prepare_data(tmp_path / "data", source)
    assert read_records(tmp_path / "data" / "captions" / "probe.json")[0]["caption"] == "held out"


def test_a_missing_spair_folder_is_named(source: dict[str, Any], tmp_path: Path) -> None:
    source["spair"] = str(tmp_path / "nowhere")
    with pytest.raises(DataSourceError, match=r"config key 'data.spair': not an SPair-71k folder: .*nowhere"):
        check_source(source)


def test_a_spair_folder_without_a_test_split_is_named(source: dict[str, Any]) -> None:
    shutil.rmtree(Path(source["spair"]) / "PairAnnotation" / "test")
    with pytest.raises(DataSourceError, match=r"config key 'data.spair': .*PairAnnotation/test does not exist"):
        check_source(source)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda r: r[2].pop("conversations"), r"record \[2\]: needs 'caption', or 'conversations'"),
        (lambda r: r[3]["conversations"].pop(1), r"record \[3\]: 'conversations' has no 'gpt' turn"),
        (lambda r: r[5].update(image="../escape.jpg"), r"record \[5\]: 'image' '../escape.jpg' must be relative"),
        (lambda r: r.__setitem__(1, "a string"), r"record \[1\]: should be a JSON object, not str"),
    ],
)
def test_a_bad_caption_record_is_named_by_file_and_index(source: dict[str, Any], tmp_path: Path, edit,
                                                          message: str) -> None:
    _rewrite(source["captions"]["train"], edit)
    with pytest.raises(DataSourceError) as err:
        prepare_data(tmp_path / "data", source)
    assert str(err.value).startswith(f"config key 'data.captions.train': {source['captions']['train']}, record [")
    assert re.search(message, str(err.value)), str(err.value)
    assert not (tmp_path / "data").exists()


def test_malformed_json_names_line_and_column(source: dict[str, Any], tmp_path: Path) -> None:
    Path(source["captions"]["train"]).write_text('[\n  {"image": "a.jpg",\n   "caption": }\n]')
    with pytest.raises(DataSourceError, match=r"captions.json, line 3, column 15: malformed JSON"):
        prepare_data(tmp_path / "data", source)


def test_a_missing_image_of_a_used_record_is_named(source: dict[str, Any], tmp_path: Path) -> None:
    source["captions"]["n_train"] = None
    os.remove(Path(source["captions"]["image_root"]) / "00001" / "000000007.jpg")
    with pytest.raises(DataSourceError, match=r"record \[7\]: image .*000000007.jpg does not exist"):
        prepare_data(tmp_path / "data", source)


def test_a_repeated_image_is_refused(source: dict[str, Any], tmp_path: Path) -> None:
    source["captions"]["n_train"] = None
    _rewrite(source["captions"]["train"], lambda r: r[4].update(image=r[1]["image"]))
    with pytest.raises(DataSourceError, match=r"record \[4\]: repeats the image '00001/000000001.jpg' of record \[1\]"):
        prepare_data(tmp_path / "data", source)


def test_too_many_probe_pairs_name_the_key(source: dict[str, Any], tmp_path: Path) -> None:
    source["captions"]["n_probe"] = 50
    with pytest.raises(DataSourceError, match=r"config key 'data.captions.n_probe': 50 probe pairs asked, but .* 12"):
        prepare_data(tmp_path / "data", source)


def test_conversations_must_use_caption_train_images_for_the_builtin_stage_2(source: dict[str, Any],
                                                                             tmp_path: Path) -> None:
    source["captions"]["n_train"] = 2  # the draw leaves out most conversation images
    with pytest.raises(DataSourceError, match=r"config key 'data.instruct.train': .*instruct.json, record \[\d\]: "
                                              r"image '.*' is not in the caption_train set"):
        prepare_data(tmp_path / "data", source)
    source["instruct"]["image_root"] = source["captions"]["image_root"]  # external stage 2: any images
    prepare_data(tmp_path / "data", source)
    assert (tmp_path / "data" / "images" / "instruct").is_dir()
    assert not (tmp_path / "data" / "qa" / "instruct_train.json").exists()


def test_a_conversation_whose_turns_do_not_alternate_is_named(source: dict[str, Any], tmp_path: Path) -> None:
    _rewrite(source["instruct"]["train"], lambda r: r[1]["conversations"].pop(2))  # human, gpt, gpt
    with pytest.raises(DataSourceError, match=r"config key 'data.instruct.train': .*instruct.json, record \[1\]: "
                                              r"'conversations' should alternate 'human' and 'gpt' turns"):
        prepare_data(tmp_path / "data", source)
    assert not (tmp_path / "data").exists()
    # for an external trainer (image_root given) the turns are its business: LLaVA drops a leading gpt turn
    source["instruct"]["image_root"] = source["captions"]["image_root"]
    prepare_data(tmp_path / "data", source)
    assert (tmp_path / "data" / "manifest.json").is_file()


def test_a_bad_benchmark_answer_is_named(source: dict[str, Any], tmp_path: Path) -> None:
    _rewrite(source["qa"]["colours"]["test"], lambda r: r[1].update(answer=3))
    with pytest.raises(DataSourceError, match=r"config key 'data.qa.colours.test': .*test.json, record \[1\]: "
                                              r"'answer' should be an option index 0-2 or a letter A/B/C, got 3"):
        prepare_data(tmp_path / "data", source)


# ------------------------------------------------------------------------------------------ the preset


def _setting_keys() -> list[tuple[str, dict[str, str]]]:
    """(preset key, settings.csv row) in the file's order; the key rule is the preset's header's."""
    with open(REPO / "resources" / "paper" / "raw" / "settings.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    return [((r["repo_name"] if r["repo_name"] != "-" else r["v3_name"]).replace(".", "").replace("+", "_"), r)
            for r in rows]


def test_paper_real_preset_validates_and_lists_the_15_settings() -> None:
    from vislaw.encoders import spec_from_config

    config = yaml.safe_load((REPO / PRESET).read_text())
    schema = json.loads((REPO / "schemas" / "config.schema.json").read_text())
    jsonschema.Draft202012Validator(schema).validate(config)
    settings = _setting_keys()
    assert len(settings) == 15
    assert list(config["encoders"]) == [key for key, _ in settings]
    for key, row in settings:
        spec = spec_from_config(key, config["encoders"])
        weights = spec.weights if spec.kind != "concat" else ".".join(p.weights for p in spec.parts)
        assert (weights, spec.image_size) == (row["hub_id"], int(row["input_res"])), key
        rows, cols = spec.grid
        assert rows * cols == int(row["tokens_to_llm"]), key
    assert set(config["benchmarks"]) == set(config["evaluation"]["metric"])
    text = (REPO / PRESET).read_text()
    assert "/home/" not in text and "/mnt/" not in text and not any(
        str(v).startswith("/") for v in (config["data"]["spair"], config["llm"]["weights"]))


# ------------------------------------------------------------------------------------------ the workflow


@pytest.fixture(scope="module")
def real_workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A workflow copy with ``presets/real-tiny.yaml``: the paper-real preset pointed at a tiny source, the
    transformers encoders at tiny local checkpoints and the LM at a local folder."""
    from .tiny_checkpoints import DIFFUSION_GRID, save_diffusion_pipeline, save_hf_tower

    root = tmp_path_factory.mktemp("real")
    workdir = copy_workflow(root / "clone")
    config = yaml.safe_load((workdir / PRESET).read_text())
    config["name"] = "real-tiny"
    config["data"] = make_source(root / "source")
    del config["data"]["qa"]  # the preset evaluates with lmms-eval
    config["data"]["instruct"]["image_root"] = config["data"]["captions"]["image_root"]
    towers = {family: str(save_hf_tower(family, root / "towers")) for family in ("clip", "siglip", "dinov2")}
    for key, entry in config["encoders"].items():
        family = next((f for f in ("clip", "siglip", "dinov2") if entry["spec"].startswith(f"{f}_vit")), None)
        if family:
            entry["weights"] = towers[family]
    if importlib.util.find_spec("diffusers") is not None:
        # The diffusion settings at tiny pipelines of their families, at 32 px (their grids: tiny_checkpoints).
        for key, family in DIFFUSION_SETTINGS.items():
            block, patch = DIFFUSION_GRID[family]
            config["encoders"][key].update(weights=str(save_diffusion_pipeline(family, root / "pipes")),
                                           image_size=32, patch=patch)
    (root / "vicuna").mkdir()
    config["llm"]["weights"] = str(root / "vicuna")
    config["a_score"]["n_probe"] = 4
    (workdir / "presets" / "real-tiny.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return workdir


def _variant(workdir: Path, name: str, change) -> str:
    config = yaml.safe_load((workdir / "presets" / "real-tiny.yaml").read_text())
    change(config)
    (workdir / "presets" / name).write_text(yaml.safe_dump(config, sort_keys=False))
    return f"presets/{name}"


@pytest.mark.workflow
def test_paper_real_preset_plans_the_measuring_dag(real_workdir: Path) -> None:
    # before the policy's first round: 15 settings measured, stages 1 and 2 and evaluation external, the LM given
    assert planned_rules(real_workdir, "--configfile", "presets/real-tiny.yaml") == {
        "prepare_data": 1, "extract_features": 15, "c_score": 15, "train_projector": 15, "a_score": 15,
        "ac_table": 1, "policy_round": 1, "measurements": 1, "policy_report": 1, "fit_law": 1,
        "simulate_policy": 1, "plot_law": 1, "plot_r2": 1, "plot_policy": 1, "summary": 1,
    }


@pytest.mark.workflow
def test_paper_real_diffusion_settings_extract_through_the_workflow(real_workdir: Path) -> None:
    # The six diffusion settings' extract_features jobs, run by snakemake: one cache per image set each, on
    # the settings' grids (8x8 for the U-Nets' first up-block, 4x4 for the transformers' merged tokens).
    pytest.importorskip("diffusers")
    import h5py

    targets = [f"results/real-tiny/features/{key}/spair_test.h5" for key in DIFFUSION_SETTINGS]
    snakemake(real_workdir, *targets, "--configfile", "presets/real-tiny.yaml")
    for key, family in DIFFUSION_SETTINGS.items():
        with h5py.File(real_workdir / "results" / "real-tiny" / "features" / key / "spair_test.h5") as h5:
            protocol = json.loads(h5.attrs["protocol"])
            shape = h5["tokens"].shape
            assert json.loads(h5.attrs["library_versions"])["diffusers"]
        grid = [8, 8] if family in ("sd", "sdxl", "sdim") else [4, 4]
        assert protocol["grid"] == grid and shape == (4, grid[0] * grid[1], 32 if grid == [8, 8] else 64), key
        assert protocol["spec"]["options"]["block"] == ("up1" if grid == [8, 8] else "last_merge2x2")
    assert planned_rules(real_workdir, *targets, "--configfile", "presets/real-tiny.yaml") == {}


@pytest.mark.workflow
def test_the_llms_files_are_inputs_of_the_rules_that_load_it(real_workdir: Path) -> None:
    # A model saved over the folder in place leaves the folder's time unchanged: its files are what tell.
    llm = real_workdir.parent / "vicuna-files"
    for name in ("config.json", "model.safetensors", ".cache/huggingface/meta"):
        (llm / name).parent.mkdir(parents=True, exist_ok=True)
        (llm / name).write_text(name)
    preset = _variant(real_workdir, "llm-files.yaml", lambda c: c["llm"].update(weights=str(llm)))
    setting = next(iter(yaml.safe_load((real_workdir / preset).read_text())["encoders"]))
    targets = [f"results/real-tiny/projectors/{setting}.pt", f"results/real-tiny/scores/A/{setting}.json"]
    text = snakemake(real_workdir, "-n", *targets, "--configfile", preset).stdout
    jobs = {block.split(":", 1)[0]: block for block in text.split("\nrule ")[1:]}
    for rule in ("train_projector", "a_score"):
        inputs = next(line for line in jobs[rule].splitlines() if line.strip().startswith("input:"))
        assert f"{llm / 'config.json'}, {llm / 'model.safetensors'}" in inputs, (rule, inputs)
        assert ".cache" not in inputs


@pytest.mark.workflow
def test_prepare_rule_writes_the_folder_and_names_a_bad_record(real_workdir: Path) -> None:
    snakemake(real_workdir, "results/real-tiny/data", "--configfile", "presets/real-tiny.yaml")
    data = real_workdir / "results" / "real-tiny" / "data"
    assert len(image_set(data, "caption_train").ids) == 8 and len(image_set(data, "spair_test").ids) == 4
    assert planned_rules(real_workdir, "results/real-tiny/data", "--configfile", "presets/real-tiny.yaml") == {}

    config = yaml.safe_load((real_workdir / "presets" / "real-tiny.yaml").read_text())
    bad = Path(config["data"]["captions"]["train"]).with_name("bad.json")
    records = json.loads(Path(config["data"]["captions"]["train"]).read_text())
    records[6]["conversations"] = [{"from": "human", "value": "<image>"}]
    bad.write_text(json.dumps(records))
    preset = _variant(real_workdir, "bad.yaml", lambda c: (c.update(name="bad"),
                                                           c["data"]["captions"].update(train=str(bad))))
    proc = snakemake(real_workdir, "results/bad/data", "--configfile", preset, check=False)
    assert proc.returncode != 0
    log = (real_workdir / "results" / "bad" / "logs" / "prepare_data.log").read_text()
    assert f"config key 'data.captions.train': {bad}, record [6]: 'conversations' has no 'gpt' turn" in log
    assert not (real_workdir / "results" / "bad" / "data").exists()


@pytest.mark.workflow
@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda c: c.update(world={"seed": 0}),
         "config keys 'world' and 'data': give one data source, not both"),
        (lambda c: c["data"].update(spair="data/SPair-71k"),
         "config key 'data.spair': not an SPair-71k folder: data/SPair-71k/JPEGImages does not exist"),
        (lambda c: c["data"]["captions"].update(image_root="data/LLaVA-Pretrain/images"),
         "config key 'data.captions.image_root': folder data/LLaVA-Pretrain/images does not exist"),
        (lambda c: c.update(stage2={"epochs": 1}),
         "config key 'data.instruct.image_root': the built-in stage 2 reads the caption_train features"),
        (lambda c: c.update(evaluation={"command": None}),
         "config key 'data.qa': the built-in evaluation needs test records for ['mmbench_en_dev'"),
    ],
)
def test_bad_data_configs_fail_the_dry_run_naming_the_key(real_workdir: Path, change, message: str) -> None:
    preset = _variant(real_workdir, "variant.yaml", change)
    proc = snakemake(real_workdir, "-n", "--configfile", preset, check=False)
    assert proc.returncode != 0
    assert message in proc.stdout + proc.stderr, proc.stdout + proc.stderr


@pytest.mark.workflow
def test_the_builtin_steps_run_on_prepared_real_format_data(tmp_path: Path) -> None:
    """prepare_data's folder through every built-in step: a tiny CLIP tower, the tiny LM on the corpus of the
    captions and conversations, stage 1, A, C, stage 2 on the conversations, and the MC benchmark."""
    from .tiny_checkpoints import CLIP_STATS, save_hf_tower

    workdir = copy_workflow(tmp_path / "clone")
    config = {
        "name": "own", "data": make_source(tmp_path / "source"),
        "encoders": {"tiny_clip": {"kind": "hf", "weights": str(save_hf_tower("clip", tmp_path / "towers")),
                                   "image_size": 32, "patch": 8, "mean": list(CLIP_STATS["mean"]),
                                   "std": list(CLIP_STATS["std"])}},
        "benchmarks": {"colours": {"group": "vision"}},
        "llm": {"weights": None, "pretrain": {"vocab_size": 300, "hidden_size": 32, "intermediate_size": 64,
                                              "num_hidden_layers": 2, "num_attention_heads": 2, "steps": 20,
                                              "batch_size": 4, "seq_len": 16}},
        "a_score": {"n_probe": 4}, "stage1": {"batch_size": 4}, "stage2": {"batch_size": 4},
    }
    (workdir / "presets" / "own.yaml").write_text(yaml.safe_dump(config))
    out = workdir / "results" / "own"
    targets = ["scores/C/tiny_clip.json", "scores/A/tiny_clip.json", "eval/tiny_clip/colours.json"]
    snakemake(workdir, *(f"results/own/{t}" for t in targets), "--configfile", "presets/own.yaml")
    c, a, evaluation = (json.loads((out / t).read_text()) for t in targets)
    assert c["n_pairs"] == 2 and 0 <= c["C"] <= 100
    assert a["n_probe"] == 4 and a["A"] < 0
    assert evaluation["n"] == 2 and evaluation["benchmark"] == "colours"
