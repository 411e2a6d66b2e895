"""The measuring pipeline end to end on the smoke preset (mini-world, mini zoo, tiny LM, AC policy with a
budget), in a fresh copy: what runs, what it writes, what reruns, and how failures look."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml

import vislaw

from .conftest import SMOKE, planned_rules, snakemake

pytestmark = pytest.mark.workflow
OUT = Path("results/smoke")
MEASURING_RULES = {"pretrain_encoder", "extract_features", "c_score", "train_projector", "a_score"}


def preset_variant(workdir: Path, name: str, edit) -> str:
    config = yaml.safe_load((workdir / SMOKE).read_text())
    edit(config)
    (workdir / "presets" / name).write_text(yaml.safe_dump(config, sort_keys=False))
    return f"presets/{name}"


def test_only_the_policys_picks_are_trained_and_evaluated(smoke_run: Path) -> None:
    out = smoke_run / OUT
    rounds = sorted(out.glob("policy/round_*.json"), key=lambda p: int(p.stem.split("_")[1]))
    picks = [s for r in rounds for s in json.loads(r.read_text())["picks"]]
    assert json.loads(rounds[-1].read_text())["done"]
    assert len(picks) == 2 == len(set(picks))  # the budget, fewer than the 4 candidates
    assert sorted(p.name for p in (out / "mllm").iterdir()) == sorted(picks)
    assert sorted(p.name for p in (out / "eval").iterdir()) == sorted(picks)
    benchmarks = ["colour", "count", "glyph"]
    for setting in picks:
        assert sorted(p.stem for p in (out / "eval" / setting).glob("*.json")) == sorted(benchmarks)
    table = pd.read_csv(out / "measurements.csv").set_index("setting")
    assert set(table.index) == {"contrastive_64", "selfsup_64", "random_vit_64", "contrastive_selfsup_64"}
    assert table.loc[picks, benchmarks].notna().all().all()
    assert table.drop(index=picks)[benchmarks].isna().all().all()
    report = json.loads((out / "policy/recommendation.json").read_text())
    assert report["trainings"] == 2 and report["recommended"] in picks
    rounds_csv = pd.read_csv(out / "policy/rounds.csv")
    assert set(rounds_csv.loc[rounds_csv["picked"], "setting"]) == set(picks)


def test_stage1_lowers_the_caption_loss_for_every_encoder(smoke_run: Path) -> None:
    import torch

    for projector in sorted((smoke_run / OUT / "projectors").glob("*.pt")):
        loss = torch.load(projector, map_location="cpu", weights_only=True)["record"]["loss"]
        first, last = sum(loss[:3]) / 3, sum(loss[-3:]) / 3
        print(f"stage 1 {projector.stem}: caption loss {first:.3f} -> {last:.3f} in {len(loss)} steps")
        assert last < 0.98 * first, (projector.stem, first, last)  # smoke: 24 steps, 2-10 % lower


def test_trainings_record_the_precision_that_ran(smoke_run: Path) -> None:
    import torch

    from vislaw.train import resolve_precision

    ran = resolve_precision("auto", torch.device("cpu"))  # the preset's precision: auto, on this CPU
    out = smoke_run / OUT
    stage1 = [torch.load(p, map_location="cpu", weights_only=True)["record"] for p in (out / "projectors").glob("*.pt")]
    stage2 = [torch.load(p / "projector.pt", map_location="cpu", weights_only=True)["record"]
              for p in (out / "mllm").iterdir()]
    assert len(stage1) == 4 and len(stage2) == 2
    assert [r["config"]["precision"] for r in stage1 + stage2] == [ran] * 6


def test_scores_carry_their_protocols(smoke_run: Path) -> None:
    out = smoke_run / OUT
    ac = pd.read_csv(out / "scores/ac.csv").set_index("setting")
    for setting in ac.index:
        c = json.loads((out / f"scores/C/{setting}.json").read_text())
        a = json.loads((out / f"scores/A/{setting}.json").read_text())
        assert c["C"] == pytest.approx(ac.loc[setting, "C"]) and 0 <= c["C"] <= 100
        assert c["protocol"]["c_score"]["window"] == 11 and c["protocol"]["c_score"]["temperature"] == 0.02
        assert c["protocol"]["extraction"]["grid"] == [8, 8] and c["protocol"]["extraction"]["layer"] == -2
        assert set(c["per_category"]) and c["n_pairs"] == 32
        assert a["A"] == pytest.approx(ac.loc[setting, "A"]) and a["A"] < 0  # a mean log-likelihood
        assert a["protocol"]["a_score"]["method"] == "caption_loglik" and a["n_probe"] == 16
        assert a["protocol"]["projector_trained"] == "builtin"  # vislaw's stage 1, on the caches A reads


def test_summary_matches_the_tables(smoke_run: Path) -> None:
    out = smoke_run / OUT
    text = (out / "summary.md").read_text()
    ac = pd.read_csv(out / "scores/ac.csv")
    for row in ac.itertuples():
        assert re.search(rf"^\| {row.setting} \| {row.A:.3f} \| {row.C:.3f} \|", text, flags=re.M), row.setting
    report = json.loads((out / "policy/recommendation.json").read_text())
    assert f"recommended (best mean normalised score among the trained): **{report['recommended']}**" in text
    assert f"trainings spent: {report['trainings']} of 4 candidates (budget 2)" in text
    # the chance section: each trained setting's mean accuracy over the evaluation files, and its count of
    # benchmarks beaten, recomputed here from the files with the binomial test
    from scipy.stats import binomtest

    assert "## Against chance" in text
    evaluations = pd.read_csv(out / "evaluations.csv")
    assert len(evaluations) == len(list((out / "eval").glob("*/*.json")))
    for setting_dir in sorted((out / "eval").iterdir()):
        records = [json.loads(f.read_text()) for f in sorted(setting_dir.glob("*.json"))]
        listed = evaluations[evaluations["setting"] == setting_dir.name].set_index("benchmark")
        assert {r["benchmark"]: r["score"] for r in records} == listed["score"].to_dict()
        mean = sum(r["score"] for r in records) / len(records)
        beaten = sum(binomtest(round(r["score"] * r["n"] / 100), r["n"], r["chance"] / 100,
                               alternative="greater").pvalue < 0.05 for r in records)
        assert re.search(rf"^\| {setting_dir.name} \| {mean:.1f} \| {beaten} of {len(records)} \|", text,
                         flags=re.M), setting_dir.name


def test_second_run_does_nothing(smoke_run: Path) -> None:
    assert planned_rules(smoke_run, "--configfile", SMOKE) == {}


# What reruns after a change that touches only C: the C jobs, then the tables and the policy built on them.
C_AND_AGGREGATES = {"c_score": 4, "ac_table": 1, "policy_round": 1, "measurements": 1, "policy_report": 1,
                    "summary": 1}


def test_changing_the_c_protocol_reruns_only_c_and_the_aggregates(smoke_run: Path) -> None:
    def window(config):
        config["c_score"] = {"window": 5}

    planned = planned_rules(smoke_run, "--configfile", preset_variant(smoke_run, "window.yaml", window))
    assert planned == C_AND_AGGREGATES


def test_editing_the_c_score_code_reruns_only_c_and_the_aggregates(smoke_run: Path, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    # An edited copy of the library, first on the path: the workflow hashes the code it imports.
    source = tmp_path / "src"
    shutil.copytree(Path(vislaw.__file__).parent, source / "vislaw", ignore=shutil.ignore_patterns("__pycache__"))
    with (source / "vislaw" / "scores" / "correspondence.py").open("a") as module:
        module.write("\n# an edit\n")
    monkeypatch.setenv("PYTHONPATH", str(source))
    assert planned_rules(smoke_run, "--configfile", SMOKE) == C_AND_AGGREGATES
    monkeypatch.delenv("PYTHONPATH")
    assert planned_rules(smoke_run, "--configfile", SMOKE) == {}  # the installed code: nothing to do


def test_changing_one_encoder_reruns_only_that_encoder(smoke_run: Path) -> None:
    def resolution(config):
        config["encoders"]["random_vit_64"]["train"]["image_size"] = 48

    planned = planned_rules(smoke_run, "--configfile", preset_variant(smoke_run, "res.yaml", resolution))
    # random_vit_64's own jobs (it is not one of the policy's picks, so no stage 2), then the aggregates
    assert planned == {**{rule: 1 for rule in MEASURING_RULES}, "ac_table": 1, "policy_round": 1,
                       "measurements": 1, "policy_report": 1, "summary": 1}


def test_a_local_checkpoint_overwritten_in_place_reruns_its_extraction(smoke_run: Path) -> None:
    import torch

    # the cache's protocol names the weights by path, so only the files' times can tell that they changed
    checkpoint = smoke_run / "checkpoints" / "copied_vit"
    shutil.copytree(smoke_run / OUT / "zoo" / "random_vit_64", checkpoint)

    def local(config):
        config["encoders"]["copied_vit"] = {"kind": "mini", "weights": "checkpoints/copied_vit", "image_size": 64,
                                            "patch": 8, "mean": [0.5] * 3, "std": [0.5] * 3,
                                            "options": {"arch": "vit"}}

    preset = preset_variant(smoke_run, "local.yaml", local)
    target = "results/smoke/features/copied_vit/spair_test.h5"
    try:
        snakemake(smoke_run, target, "--configfile", preset)
        assert planned_rules(smoke_run, target, "--configfile", preset) == {}
        weights = checkpoint / "backbone.pt"
        later = (smoke_run / target).stat().st_mtime + 10
        os.utime(weights, (later, later))  # touched, same bytes: Snakemake's recorded checksum says unchanged
        assert planned_rules(smoke_run, target, "--configfile", preset) == {}
        state = torch.load(weights, map_location="cpu", weights_only=True)
        state["pos_embed"] += 0.01
        torch.save(state, weights)  # fine-tuned and saved over the old file
        assert planned_rules(smoke_run, target, "--configfile", preset) == {"extract_features": 1}
    finally:  # the shared smoke run's outputs stay the preset's (the SLURM test compares its job logs)
        shutil.rmtree(smoke_run / OUT / "features" / "copied_vit", ignore_errors=True)
        for kind, suffix in (("logs", ".log"), ("benchmarks", ".tsv")):
            (smoke_run / OUT / kind / "extract_features" / f"copied_vit{suffix}").unlink(missing_ok=True)


def test_settings_no_result_depends_on_rerun_nothing(smoke_run: Path) -> None:
    # the extraction's batch size is not part of a cache's protocol; trials and max_budget only shape the
    # Monte-Carlo simulation, which a run with a budget does not make
    def settings(config):
        config.setdefault("features", {})["batch_size"] = 3
        config["policy"].update(trials=7, max_budget=2)

    assert planned_rules(smoke_run, "--configfile", preset_variant(smoke_run, "inert.yaml", settings)) == {}


def test_one_benchmarks_metric_reruns_only_that_benchmarks_evaluations(smoke_run: Path) -> None:
    config = yaml.safe_load((smoke_run / SMOKE).read_text())
    benchmark = next(iter(config["benchmarks"]))
    trained = {p.parent.name for p in (smoke_run / OUT / "eval").glob(f"*/{benchmark}.json")}

    def metric(config):
        config["evaluation"] = {"metric": {benchmark: "accuracy"}}

    planned = planned_rules(smoke_run, "--configfile", preset_variant(smoke_run, "metric.yaml", metric))
    # this benchmark's jobs only, not every benchmark's as before. A dry run plans the first round's
    # pick; the second's waits on the checkpoint round that its changed score reruns.
    assert len(trained) == 2 and 1 <= planned["evaluate"] <= len(trained)
    assert set(planned) <= {"evaluate", "policy_round", "measurements", "policy_report", "summary"}


def test_a_failing_external_command_fails_its_job_with_its_stderr_and_no_output(smoke_run: Path) -> None:
    def external(config):
        config["evaluation"] = {"command": "echo vislaw-boom-$task >&2; exit 3"}

    preset = preset_variant(smoke_run, "external.yaml", external)
    setting = json.loads((smoke_run / OUT / "policy/round_1.json").read_text())["picks"][0]
    target = f"results/smoke/eval/{setting}/glyph.json"
    (smoke_run / target).unlink()
    proc = snakemake(smoke_run, target, "--configfile", preset, check=False)
    assert proc.returncode != 0
    log = (smoke_run / OUT / f"logs/evaluate/{setting}/glyph.log").read_text()
    assert "vislaw-boom-glyph" in log and "exit status 3" in log
    assert not (smoke_run / target).exists()
    assert not list((smoke_run / target).parent.glob(".glyph.json*"))  # no temporary left behind


def test_bad_encoder_entries_fail_the_dry_run_naming_the_key(smoke_run: Path) -> None:
    cases = {
        "kind.yaml": (lambda c: c["encoders"].update(bad={"kind": "nope", "image_size": 64}),
                      "'nope' is not one of ['hf', 'timm', 'concat', 'mini', 'diffusers']"),
        "weights.yaml": (lambda c: c["encoders"].update(
            bad={"kind": "hf", "weights": "./no/such/checkpoint", "patch": 8, "image_size": 64,
                 "mean": [0.5] * 3, "std": [0.5] * 3}), "encoders.bad.weights: path './no/such/checkpoint' does not exist"),
        "train.yaml": (lambda c: c["encoders"]["selfsup_64"]["train"].update(stepz=3),
                       "config key 'encoders.selfsup_64.train': unknown selfsup training setting(s) ['stepz']"),
        # pandas reads the name back as a missing value: the setting would vanish from the tables
        "na.yaml": (lambda c: c["encoders"].update(NA=c["encoders"]["random_vit_64"]),
                    "config key 'encoders.NA': a CSV reader takes the name 'NA' for a missing value"),
        "diffusers.yaml": (lambda c: c["encoders"].update(bad={"spec": "sd15_unet.runway",
                                                               "options": {"block": "mid"}}),
                           "encoders.bad.options: block must be upK (K >= 1) or one of ('last', 'last_merge2x2')"),
    }
    for name, (edit, message) in cases.items():
        proc = snakemake(smoke_run, "-n", "--configfile", preset_variant(smoke_run, name, edit), check=False)
        assert proc.returncode != 0, name
        assert message in proc.stdout + proc.stderr, (name, proc.stdout[-2000:] + proc.stderr[-2000:])


def test_more_probe_pairs_than_the_world_makes_fail_the_dry_run(smoke_run: Path) -> None:
    # the A job used to take the first n_probe pairs silently: 17 asked of 16 gave A over 16
    def probe(config):
        config["a_score"]["n_probe"] = config["world"]["n_caption_probe"] + 1

    proc = snakemake(smoke_run, "-n", "--configfile", preset_variant(smoke_run, "probe.yaml", probe), check=False)
    assert proc.returncode != 0
    assert ("config key 'a_score.n_probe': 17 probe pairs asked, but 'world.n_caption_probe' makes 16"
            in proc.stdout + proc.stderr)


def test_a_misspelt_command_placeholder_fails_the_dry_run(smoke_run: Path) -> None:
    def command(config):
        config["evaluation"] = {"command": "lmms-eval --model_args pretrained=$modle --tasks $task"}

    proc = snakemake(smoke_run, "-n", "--configfile", preset_variant(smoke_run, "placeholder.yaml", command),
                     check=False)
    assert proc.returncode != 0
    assert "config key 'evaluation.command': unknown placeholder(s) $modle" in proc.stdout + proc.stderr
