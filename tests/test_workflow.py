"""The workflow end to end on the paper presets, in a fresh copy: outputs, published fits, reruns, errors."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest
import yaml

from vislaw.paper import table2, table4

from .conftest import REPO, copy_workflow, planned_rules, snakemake

pytestmark = pytest.mark.workflow
RAW = REPO / "resources" / "paper" / "raw"
V3 = "presets/paper-v3.yaml"


@pytest.fixture(scope="module")
def v3_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    workdir = copy_workflow(tmp_path_factory.mktemp("clone"))
    snakemake(workdir, "--configfile", V3)
    return workdir


def with_changes(workdir: Path, name: str, changes: dict) -> str:
    """A copy of the v3 preset with nested ``changes`` applied, written beside it; returns its path."""
    config = yaml.safe_load((workdir / V3).read_text())
    for dotted, value in changes.items():
        *parents, key = dotted.split(".")
        node = config
        for parent in parents:
            node = node.setdefault(parent, {})
        node[key] = value
    path = workdir / "presets" / name
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return f"presets/{name}"


def test_outputs_have_the_documented_columns(v3_run: Path) -> None:
    out = v3_run / "results" / "paper-v3"
    expected = {
        "law/r2.csv": ["benchmark", "features", "r2", "q2_loo", "spearman_loo"],
        "law/summary.csv": ["features", "group", "mean_r2", "mean_q2_loo", "fitted", "benchmarks"],
        "law/coefficients.csv": ["benchmark", "features", "term", "value", "stderr"],
        "law/predictions.csv": ["setting", "benchmark", "predicted", "measured"],
        "policy/simulation.csv": ["benchmark", "budget", "recall_at_1", "recall_at_3", "random_recall_at_3",
                                  "trials"],
    }
    for rel, columns in expected.items():
        assert list(pd.read_csv(out / rel).columns) == columns, rel
    r2 = pd.read_csv(out / "law/r2.csv")
    assert len(r2) == 8 * 8  # 8 benchmarks x 8 feature sets
    assert set(pd.read_csv(out / "law/summary.csv")["group"]) == {"vision", "ocr", "all"}
    terms = pd.read_csv(out / "law/coefficients.csv").query("features == 'AC_poly'")["term"].unique()
    assert list(terms) == ["const", "A", "C", "A2", "AC", "C2"]
    simulation = pd.read_csv(out / "policy/simulation.csv")
    assert simulation.groupby("benchmark")["budget"].max().eq(15).all()
    assert simulation["trials"].eq(1000).all()
    for png in ("law_fit", "law_surface", "r2_comparison", "policy_recall"):
        assert (out / "plots" / f"{png}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_workflow_reproduces_v3_tables_2_and_4(v3_run: Path) -> None:
    summary = pd.read_csv(v3_run / "results/paper-v3/law/summary.csv").set_index(["features", "group"])
    names = {("none", "A Score"): "A_linear", ("none", "C Score"): "C_linear", ("none", "AC Score"): "AC_linear",
             ("polynomial", "A Score"): "A_poly", ("polynomial", "C Score"): "C_poly",
             ("polynomial", "AC Score"): "AC_poly"}
    published = table2(RAW).set_index(["transformation", "fitting_data"])
    for key, features in names.items():
        for group, column in (("vision", "R2_vision_percent"), ("ocr", "R2_ocr_percent")):
            assert 100 * summary.loc[(features, group), "mean_r2"] == pytest.approx(
                published.loc[key, column], abs=0.15), (features, group)
    coefficients = pd.read_csv(v3_run / "results/paper-v3/law/coefficients.csv")
    alpha = coefficients.query("features == 'AC_poly' and term == 'AC'").set_index("benchmark")["value"]
    for _, row in table4(RAW).iterrows():
        benchmark = "SEED-Bench" if row["benchmark"] == "SeedBench" else row["benchmark"]
        assert alpha[benchmark] == pytest.approx(row["alpha_AC"], abs=0.15), benchmark


def test_summary_numbers_match_the_csvs(v3_run: Path) -> None:
    out = v3_run / "results/paper-v3"
    text = (out / "summary.md").read_text()
    summary = pd.read_csv(out / "law/summary.csv").set_index(["features", "group"])
    row = re.search(r"^\| AC_poly \| (.+) \|$", text, flags=re.M).group(1).split(" | ")
    expected = [summary.loc[("AC_poly", g), s] for s in ("mean_r2", "mean_q2_loo") for g in ("vision", "ocr", "all")]
    assert [float(v) for v in row] == pytest.approx(expected, abs=5e-4)
    simulation = pd.read_csv(out / "policy/simulation.csv").set_index(["benchmark", "budget"])
    policy_section = text.split("## The AC policy", 1)[1]
    mmbench = re.search(r"^\| MMBench \| (.+) \|$", policy_section, flags=re.M).group(1).split(" | ")
    assert mmbench[3] == (f"{simulation.loc[('MMBench', 4), 'recall_at_3']:.3f} "
                          f"({simulation.loc[('MMBench', 4), 'random_recall_at_3']:.3f})")
    for link in re.findall(r"\]\((plots/[^)]+)\)", text):
        assert (out / link).is_file(), link


def test_rerun_with_nothing_changed_does_nothing(v3_run: Path) -> None:
    assert planned_rules(v3_run, "--configfile", V3) == {}


def test_changing_the_trial_count_reruns_only_the_simulation_and_its_dependants(v3_run: Path) -> None:
    preset = with_changes(v3_run, "trials.yaml", {"policy.trials": 50})
    assert planned_rules(v3_run, "--configfile", preset) == {"simulate_policy": 1, "plot_policy": 1, "summary": 1}


def test_changing_the_law_reruns_only_the_fit_and_its_dependants(v3_run: Path) -> None:
    preset = with_changes(v3_run, "law.yaml", {"law.seed": 3})
    assert planned_rules(v3_run, "--configfile", preset) == {"fit_law": 1, "plot_law": 1, "plot_r2": 1,
                                                             "summary": 1}


def test_bad_measurements_fail_the_dry_run_naming_file_and_line(v3_run: Path) -> None:
    table = (v3_run / "resources/paper/measurements_v3.csv").read_text().splitlines()
    table[4] = table[4].replace("-1.92", "abc")  # SigLIP-B's A
    (v3_run / "bad.csv").write_text("\n".join(table) + "\n")
    preset = with_changes(v3_run, "bad.yaml", {"measurements": "bad.csv", "name": "bad"})
    proc = snakemake(v3_run, "-n", "--configfile", preset, check=False)
    assert proc.returncode != 0
    assert "config key 'measurements': bad.csv, line 5, column 'A': 'abc' is not a number" in proc.stdout + proc.stderr
    assert not (v3_run / "results" / "bad").exists()


def test_config_typos_fail_validation(v3_run: Path) -> None:
    preset = with_changes(v3_run, "typo.yaml", {"policy.trails": 10})
    proc = snakemake(v3_run, "-n", "--configfile", preset, check=False)
    assert proc.returncode != 0
    assert "trails" in proc.stdout + proc.stderr


LAW_AND_POLICY = {"fit_law": 1, "simulate_policy": 1, "plot_law": 1, "plot_r2": 1, "plot_policy": 1, "summary": 1}


MEASURING = {"make_world": 1, "pretrain_llm": 1, "ac_table": 1, "policy_round": 1, "measurements": 1,
             "policy_report": 1}


@pytest.mark.parametrize(
    ("preset", "expected"),
    [
        ("presets/paper-v1.yaml", LAW_AND_POLICY),
        # the default run, before the policy's first round: 7 zoo trainings, 8 settings (one concat)
        (None, {**LAW_AND_POLICY, **MEASURING, "pretrain_encoder": 7, "extract_features": 8, "c_score": 8,
                "train_projector": 8, "a_score": 8}),
        # the smoke run has a training budget: the policy's own fit is its law
        ("presets/smoke.yaml", {**MEASURING, "summary": 1, "pretrain_encoder": 3, "extract_features": 4,
                                "c_score": 4, "train_projector": 4, "a_score": 4}),
    ],
)
def test_configs_plan_their_dag(tmp_path: Path, preset: str | None, expected: dict) -> None:
    workdir = copy_workflow(tmp_path)
    args = ["--configfile", preset] if preset else []
    assert planned_rules(workdir, *args) == expected


def test_smoke_world_rule_writes_the_world_and_reruns_only_on_world_changes(tmp_path: Path) -> None:
    workdir = copy_workflow(tmp_path)
    smoke = "presets/smoke.yaml"
    snakemake(workdir, "results/smoke/data", "--configfile", smoke)
    data = workdir / "results/smoke/data"
    manifest = json.loads((data / "manifest.json").read_text())
    assert manifest["params"]["image_size"] == 64 and manifest["counts"]["caption_train"] == 128
    assert (data / "spair/PairAnnotation/test").is_dir() and (data / "pairs_grid.png").is_file()
    seconds = float((workdir / "results/smoke/benchmarks/make_world.tsv").read_text().splitlines()[1].split()[0])
    assert seconds > 0
    assert "make_world" not in planned_rules(workdir, "--configfile", smoke)
    config = yaml.safe_load((workdir / smoke).read_text())
    config["world"]["seed"] = 1
    (workdir / "presets/seed1.yaml").write_text(yaml.safe_dump(config))
    assert planned_rules(workdir, "results/smoke/data", "--configfile", "presets/seed1.yaml") == {"make_world": 1}


def test_report_html_holds_the_plots_and_the_summary(v3_run: Path) -> None:
    snakemake(v3_run, "--configfile", V3, "--report", "report.html")
    html = (v3_run / "report.html").read_text(encoding="utf-8")
    # Snakemake embeds each report() output with its caption and category in one self-contained file.
    for name in ("law_fit.png", "law_surface.png", "r2_comparison.png", "policy_recall.png", "summary.md"):
        assert name in html, name
    for category in ("AC law", "AC policy", "Summary"):
        assert category in html, category

