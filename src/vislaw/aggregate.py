"""Job bodies of the rules that combine the per-encoder results: the A/C table, the AC policy's rounds and
report, and the measured tables.

They read JSON and CSV and import no torch (``vislaw.jobs`` does), so each of these jobs, which sit between
and after the GPU stages, starts in a fraction of a second instead of two.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from vislaw.io import write_csv, write_json
from vislaw.policy import (
    LivePolicy,
    PolicyRound,
    next_round,
    normalised_points,
    replay,
    target_scores,
)


def ac_table(encoders: list[str], inputs: Mapping[str, list[str]], out_csv: str) -> None:
    """Rule ac_table: ``setting,A,C`` plus the protocol columns, one row per encoder, in config order.

    ``inputs`` holds the score JSONs per kind (``c``, and ``a`` once measured), aligned with ``encoders``.
    """
    rows = []
    for i, encoder in enumerate(encoders):
        c = json.loads(Path(inputs["c"][i]).read_text())
        extraction = c["protocol"]["extraction"]
        row: dict[str, Any] = {"setting": encoder}
        if "a" in inputs:
            a = json.loads(Path(inputs["a"][i]).read_text())
            row["A"] = a["A"]
            row["A_method"] = a["protocol"]["a_score"]["method"]
        row["C"] = c["C"]
        row["C_pck@0.05"] = c["pck"].get("0.05")
        row["C_protocol"] = (
            f"PCK@{c['protocol']['c_score']['alphas'][0]:g} bbox, window {c['protocol']['c_score']['window']}, "
            f"T={c['protocol']['c_score']['temperature']:g}, frame {c['protocol']['c_score']['frame_size']:g}"
        )
        row["resolution"] = extraction["image_size"]
        row["grid"] = "x".join(str(g) for g in extraction["grid"])
        row["layer"] = extraction["layer"]
        rows.append(row)
    write_csv(out_csv, pd.DataFrame(rows))


def _ac_points(ac_csv: str) -> tuple[list[str], Any]:
    table = pd.read_csv(ac_csv)
    return list(table["setting"]), normalised_points(table["A"].to_numpy(float), table["C"].to_numpy(float))


def _eval_scores(eval_files: Mapping[str, Mapping[str, str]]) -> dict[str, dict[str, float]]:
    """benchmark -> setting -> score, from ``{setting: {benchmark: eval JSON}}``."""
    scores: dict[str, dict[str, float]] = {}
    for setting, per_benchmark in eval_files.items():
        for benchmark, path in per_benchmark.items():
            scores.setdefault(benchmark, {})[setting] = float(json.loads(Path(path).read_text())["score"])
    return scores


def live_policy(settings: Mapping[str, Any]) -> LivePolicy:
    return LivePolicy(budget=settings["budget"], initial=settings["initial"], per_round=settings["per_round"],
                      top_k=settings["top_k"], seed=settings["seed"], train_all=settings["train_all"])


def policy_round(ac_csv: str, eval_files: Mapping[str, Mapping[str, str]], round_number: int,
                 settings: Mapping[str, Any], out_json: str) -> None:
    """Checkpoint policy_round: the next round's picks from the A/C table and the scores measured so far."""
    names, points = _ac_points(ac_csv)
    scores = _eval_scores(eval_files)
    trained = [s for s in names if s in eval_files]
    decided = next_round(names, points, target_scores(scores, trained) if trained else {}, round_number,
                         live_policy(settings))
    print(f"round {round_number}: picks {list(decided.picks)} ({decided.reason})", file=sys.stderr)
    write_json(out_json, decided.to_dict())


def measured_table(ac_csv: str, eval_files: Mapping[str, Mapping[str, str]], benchmarks: list[str],
                   out_csv: str) -> None:
    """Rule measurements: the A/C table with the benchmark scores of the trained settings (blank for the
    others, which the law then predicts)."""
    table = pd.read_csv(ac_csv)
    scores = _eval_scores(eval_files)
    for benchmark in benchmarks:
        per_setting = scores.get(benchmark, {})
        table[benchmark] = [per_setting.get(s, float("nan")) for s in table["setting"]]
    write_csv(out_csv, table)


EVALUATION_COLUMNS = ["setting", "benchmark", "score", "metric", "chance", "n", "exact_match"]


def evaluation_table(eval_files: Mapping[str, Mapping[str, str]], out_csv: str) -> None:
    """Rule measurements' second table: one row per evaluation file (chance, n and exact match are blank for
    an external benchmark's score)."""
    rows = []
    for setting, per_benchmark in eval_files.items():
        for benchmark, path in per_benchmark.items():
            record = json.loads(Path(path).read_text())
            rows.append({"setting": setting, "benchmark": benchmark,
                         **{k: record.get(k) for k in EVALUATION_COLUMNS[2:]}})
    write_csv(out_csv, pd.DataFrame(rows, columns=EVALUATION_COLUMNS))


def _predicted_top_k(fit: PolicyRound, k: int) -> list[str] | None:
    """The k settings ``fit`` predicts best; None with fewer than two trained, where nothing is fitted (any
    ranking would only be config order)."""
    if len(fit.trained) < 2:
        return None
    return sorted(fit.predictions, key=fit.predictions.get, reverse=True)[:k]


def policy_report(ac_csv: str, rounds: list[str], eval_files: Mapping[str, Mapping[str, str]],
                  settings: Mapping[str, Any], out_csv: str, out_json: str) -> None:
    """Rule policy_report: ``rounds.csv`` (each round's predictions and picks) and the recommendation.

    The recommendation is the trained setting with the best target (mean normalised benchmark score);
    with ``train_all`` the live policy is replayed on the measured scores (a shadow run within
    ``budget``), which says whether the truly best setting was in its predicted top-k.
    """
    names, points = _ac_points(ac_csv)
    scores = _eval_scores(eval_files)
    policy = live_policy(settings)
    history = [PolicyRound.from_dict(json.loads(Path(p).read_text())) for p in rounds]
    trained = [s for s in names if s in eval_files]
    targets = target_scores(scores, trained)
    # the fit on everything trained: the last row of rounds.csv and the reported ranking
    full = next_round(names, points, targets, len(history) + 1,
                      LivePolicy(**{**policy.__dict__, "budget": len(trained), "train_all": False}))
    shadow = None
    # rounds.csv: the live rounds, then (train_all) the replay within the budget, then the fit on all trained
    sources = [("live", r) for r in history]
    if policy.train_all:
        replayed = replay(names, points, scores, LivePolicy(**{**policy.__dict__, "train_all": False}))
        sources += [("replay", r) for r in replayed]
        last = replayed[-1]
        shadow_trained = list(last.trained)
        shadow = {
            "trainings": len(shadow_trained),
            "predicted_top_k": _predicted_top_k(last, policy.top_k),
            "recommended": max(shadow_trained, key=target_scores(scores, shadow_trained).get),
        }
    sources.append(("final fit", full))
    rows = []
    for source, r in sources:
        for s in names:
            rows.append({"source": source, "round": r.round, "setting": s, "trained_before": s in r.trained,
                         "picked": s in r.picks, "predicted": r.predictions.get(s, float("nan")),
                         "reason": r.reason})
    write_csv(out_csv, pd.DataFrame(rows))
    best = max(targets, key=targets.get)
    report = {
        "trained": trained,
        "trainings": len(trained),
        "candidates": len(names),
        "recommended": best,
        "targets": targets,
        "predicted_top_k": _predicted_top_k(full, policy.top_k),
        "train_all": policy.train_all,
        "budget": policy.budget,
    }
    if shadow is not None:
        # everything was measured: the true best is known, and the shadow run says what the policy would do
        # settings tied for the best target are all the truly best: the policy found it if it holds any of them
        tied = [s for s in trained if targets[s] == targets[best]]
        in_top_k = None if shadow["predicted_top_k"] is None else any(s in shadow["predicted_top_k"] for s in tied)
        report["shadow"] = {**shadow, "true_best": best, "true_best_tied": tied, "true_best_in_top_k": in_top_k}
    write_json(out_json, report)
