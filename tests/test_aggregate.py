"""The torch-free job bodies that combine per-encoder results (vislaw.aggregate), on planted score files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from vislaw.aggregate import ac_table, evaluation_table, measured_table, policy_report

SETTINGS = ["enc_a", "enc_b", "enc_c"]
# (A, C) and two benchmarks' scores per setting; enc_c is left untrained in the measured table's test
A = {"enc_a": -1.2, "enc_b": -0.9, "enc_c": -1.0}
C = {"enc_a": 4.0, "enc_b": 9.0, "enc_c": 6.5}
SCORES = {"colour": {"enc_a": 40.0, "enc_b": 70.0, "enc_c": 50.0},
          "count": {"enc_a": 60.0, "enc_b": 50.0, "enc_c": 80.0}}


def _write(path: Path, record: dict) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record))
    return str(path)


def _score_files(root: Path) -> dict[str, list[str]]:
    c_files, a_files = [], []
    for s in SETTINGS:
        c_files.append(_write(root / "C" / f"{s}.json", {
            "C": C[s], "pck": {"0.05": C[s], "0.01": 1.0},
            "protocol": {"extraction": {"image_size": 96, "grid": [12, 12], "layer": -2},
                         "c_score": {"alphas": [0.05, 0.01], "window": 5, "temperature": 0.1, "frame_size": 96}}}))
        a_files.append(_write(root / "A" / f"{s}.json", {"A": A[s], "protocol": {"a_score": {"method": "caption_loglik"}}}))
    return {"c": c_files, "a": a_files}


def _eval_files(root: Path, settings: list[str]) -> dict[str, dict[str, str]]:
    return {s: {b: _write(root / "eval" / s / f"{b}.json",
                          {"score": SCORES[b][s], "metric": "accuracy", "chance": 25.0, "n": 100, "exact_match": 0.5})
                for b in SCORES} for s in settings}


def test_the_aggregate_jobs_import_no_torch() -> None:
    code = "import sys, vislaw.aggregate; print('torch' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "False"


def test_ac_table_has_one_row_per_encoder_in_config_order(tmp_path) -> None:
    out = tmp_path / "ac.csv"
    ac_table(SETTINGS, _score_files(tmp_path), str(out))
    table = pd.read_csv(out)
    assert list(table["setting"]) == SETTINGS
    assert list(table["A"]) == [-1.2, -0.9, -1.0] and list(table["C"]) == [4.0, 9.0, 6.5]
    assert set(table["A_method"]) == {"caption_loglik"} and set(table["grid"]) == {"12x12"}
    assert table["C_protocol"][0] == "PCK@0.05 bbox, window 5, T=0.1, frame 96"


def test_ac_table_without_a_scores_has_no_a_column(tmp_path) -> None:
    out = tmp_path / "ac.csv"
    ac_table(SETTINGS, {"c": _score_files(tmp_path)["c"]}, str(out))
    assert "A" not in pd.read_csv(out).columns


def test_measured_table_leaves_untrained_settings_blank(tmp_path) -> None:
    ac_csv = tmp_path / "ac.csv"
    ac_table(SETTINGS, _score_files(tmp_path), str(ac_csv))
    out = tmp_path / "measurements.csv"
    measured_table(str(ac_csv), _eval_files(tmp_path, ["enc_a", "enc_b"]), ["colour", "count"], str(out))
    table = pd.read_csv(out).set_index("setting")
    assert table.loc["enc_a", "colour"] == 40.0 and table.loc["enc_b", "count"] == 50.0
    assert table.loc["enc_c", ["colour", "count"]].isna().all()


def test_evaluation_table_has_one_row_per_file(tmp_path) -> None:
    out = tmp_path / "evaluations.csv"
    evaluation_table(_eval_files(tmp_path, ["enc_a", "enc_b"]), str(out))
    table = pd.read_csv(out)
    assert list(table.columns) == ["setting", "benchmark", "score", "metric", "chance", "n", "exact_match"]
    assert len(table) == 4
    row = table[(table["setting"] == "enc_b") & (table["benchmark"] == "colour")].iloc[0]
    assert row["score"] == 70.0 and row["chance"] == 25.0 and row["n"] == 100


@pytest.mark.parametrize("train_all", [True, False])
def test_policy_report_recommends_the_best_mean_normalised_score(tmp_path, train_all) -> None:
    ac_csv = tmp_path / "ac.csv"
    ac_table(SETTINGS, _score_files(tmp_path), str(ac_csv))
    settings = {"budget": 3, "initial": 3, "per_round": 1, "top_k": 2, "seed": 0, "train_all": train_all}
    rounds_csv, report_json = tmp_path / "rounds.csv", tmp_path / "recommendation.json"
    policy_report(str(ac_csv), [], _eval_files(tmp_path, SETTINGS), settings, str(rounds_csv), str(report_json))
    report = json.loads(report_json.read_text())
    # min-max per benchmark over the three: colour a 0, b 1, c 1/3; count a 1/3, b 0, c 1 -> means 1/6, 1/2, 2/3
    assert report["targets"] == pytest.approx({"enc_a": 1 / 6, "enc_b": 1 / 2, "enc_c": 2 / 3})
    assert report["recommended"] == "enc_c" and report["trainings"] == 3
    assert ("shadow" in report) == train_all
    rounds = pd.read_csv(rounds_csv)
    assert set(rounds["setting"]) == set(SETTINGS)
    # the replay (train_all) and the fit on all trained are told apart; the latter is the reported ranking
    assert list(dict.fromkeys(rounds["source"])) == (["replay", "final fit"] if train_all else ["final fit"])
    final = rounds[rounds["source"] == "final fit"].sort_values("predicted", ascending=False)
    assert list(final["setting"][: len(report["predicted_top_k"])]) == report["predicted_top_k"]


def _policy_report(root: Path, settings: dict, trained: list[str] = SETTINGS) -> dict:
    """policy_report on the three settings' A and C with ``trained`` evaluated; its recommendation.json."""
    ac_csv, report_json = root / "ac.csv", root / "recommendation.json"
    ac_table(SETTINGS, _score_files(root), str(ac_csv))
    policy_report(str(ac_csv), [], _eval_files(root, trained), settings, str(root / "r.csv"), str(report_json))
    return json.loads(report_json.read_text())


def test_policy_report_counts_any_setting_tied_for_the_best_as_found(tmp_path, monkeypatch) -> None:
    # enc_b and enc_c tie on both benchmarks (targets 1 and 1). The replay's top-1 is enc_c; the first of the
    # tied in config order is enc_b, which alone would have read as "not found".
    monkeypatch.setitem(SCORES, "colour", {"enc_a": 40.0, "enc_b": 70.0, "enc_c": 70.0})
    monkeypatch.setitem(SCORES, "count", {"enc_a": 60.0, "enc_b": 80.0, "enc_c": 80.0})
    report = _policy_report(tmp_path, {"budget": 3, "initial": 2, "per_round": 1, "top_k": 1, "seed": 0,
                                       "train_all": True})
    assert report["targets"] == {"enc_a": 0.0, "enc_b": 1.0, "enc_c": 1.0}
    assert report["shadow"]["predicted_top_k"] == ["enc_c"]
    assert report["shadow"]["true_best_tied"] == ["enc_b", "enc_c"] and report["shadow"]["true_best_in_top_k"] is True


def test_policy_report_has_no_predicted_top_k_with_fewer_than_two_trainings(tmp_path) -> None:
    # One training fits nothing, so a predicted top-k would only be config order: it is reported as None.
    settings = {"budget": 1, "initial": 1, "per_round": 1, "top_k": 2, "seed": 0, "train_all": True}
    report = _policy_report(tmp_path, settings)
    assert report["shadow"]["trainings"] == 1
    assert report["shadow"]["predicted_top_k"] is None and report["shadow"]["true_best_in_top_k"] is None
    assert len(report["predicted_top_k"]) == 2  # the fit on all three trained
    # the live run itself trained only one: its own fit has no top-k either
    report = _policy_report(tmp_path, {**settings, "train_all": False}, trained=["enc_b"])
    assert report["trained"] == ["enc_b"] and report["predicted_top_k"] is None
