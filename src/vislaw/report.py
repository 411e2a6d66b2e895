"""The run's markdown summary: the tables of the law and the policy, and links to the plots."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd

from vislaw.io import write_text


def markdown_table(frame: pd.DataFrame, digits: int = 3) -> str:
    """A GitHub-flavoured markdown table; floats rounded to ``digits``, NaN shown as an empty cell."""

    def cell(value: object) -> str:
        if isinstance(value, float):
            return "" if math.isnan(value) else f"{value:.{digits}f}"
        return str(value)

    header = "| " + " | ".join(str(c) for c in frame.columns) + " |"
    rule = "| " + " | ".join("---" for _ in frame.columns) + " |"
    rows = ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *rows])


def build_summary(
    name: str,
    measurements_path: str,
    groups: Mapping[str, str],
    predict_with: str,
    summary_dir: str | Path,
    law: Mapping[str, pd.DataFrame] | None = None,
    simulation: pd.DataFrame | None = None,
    plots: Mapping[str, str] | None = None,
    ac: pd.DataFrame | None = None,
    measurements: pd.DataFrame | None = None,
    policy: Mapping | None = None,
    evaluations: pd.DataFrame | None = None,
    budgets_shown: Sequence[int] = (1, 2, 3, 4, 5, 6),
) -> str:
    """The markdown text of ``results/<name>/summary.md`` (plot links relative to ``summary_dir``).

    ``law`` holds the fit's tables (``r2``, ``summary``, ``coefficients``, ``predictions``); ``ac``,
    ``measurements`` and ``policy`` (the recommendation record) are there when the run measured encoders;
    ``evaluations`` (``evaluations.csv``: setting, benchmark, score, chance, n) adds chance and a binomial
    test per benchmark.
    """
    lines = [f"# vislaw run `{name}`", ""]
    lines += [f"Benchmarks: {', '.join(f'{b} ({g})' for b, g in groups.items())}. Measurements: "
              f"`{measurements_path}`.", ""]
    if ac is not None:
        lines += _measured_section(ac, measurements, groups, policy)
    if evaluations is not None:
        lines += _chance_section(evaluations, groups)
    if law is not None:
        lines += _law_section(law, groups, predict_with)
    if simulation is not None:
        lines += _simulation_section(simulation, budgets_shown)
    if plots:
        lines += ["## Plots", ""]
        for title, path in plots.items():
            lines.append(f"- [{title}]({Path(os.path.relpath(path, summary_dir)).as_posix()})")
        lines.append("")
    return "\n".join(lines)


def _measured_section(ac: pd.DataFrame, measurements: pd.DataFrame | None, groups: Mapping[str, str],
                      policy: Mapping | None) -> list[str]:
    lines = ["## Measured A and C scores", ""]
    columns = [c for c in ("setting", "A", "C", "C_pck@0.05", "resolution", "grid") if c in ac.columns]
    lines += [markdown_table(ac[columns]), ""]
    if measurements is not None:
        scored = measurements[["setting", *groups]].copy()
        values = scored[list(groups)]
        scored["mean"] = values.mean(axis=1)
        # Benchmarks on other scales (MME's ~1500 points beside percentages) swamp the plain mean; each
        # benchmark min-max normalised over the settings first, as the policy's target, does not.
        span = values.max() - values.min()
        normalised = (values - values.min()) / span.where(span > 0)
        # a benchmark every setting scored the same counts 0 for each, as in the policy's target
        normalised = normalised.where(values.isna() | (span > 0), 0.0)
        scored["normalised mean"] = 100 * normalised.mean(axis=1)
        lines += ["Benchmark scores of the trained settings (blank: not trained); the normalised mean averages "
                  "each benchmark's score min-max normalised over these settings (0-100), as the policy's "
                  "target does:", "", markdown_table(scored, digits=1), ""]
    if policy is not None:
        lines += ["## The AC policy's recommendation", ""]
        mode = "train_all" if policy["train_all"] else f"budget {policy['budget']}"
        lines += [
            f"- trainings spent: {policy['trainings']} of {policy['candidates']} candidates ({mode})",
            f"- recommended (best mean normalised score among the trained): **{policy['recommended']}**",
            f"- predicted top-{_top_k_size(policy['predicted_top_k'])} by the AC fit on all trained: "
            f"{_top_k_text(policy['predicted_top_k'])}",
        ]
        shadow = policy.get("shadow")
        if shadow:
            verdict = {True: "yes", False: "no", None: "not available"}[shadow["true_best_in_top_k"]]
            truly_best = _names_text(shadow.get("true_best_tied") or [shadow["true_best"]])
            lines += [
                f"- replay of the live policy with budget {policy['budget']} on the measured scores: "
                f"{shadow['trainings']} trainings, predicted top-{_top_k_size(shadow['predicted_top_k'])} "
                f"{_top_k_text(shadow['predicted_top_k'])}; recommends **{shadow['recommended']}**",
                f"- truly best setting (all trained): {truly_best}; in the replay's predicted "
                f"top-{_top_k_size(shadow['predicted_top_k'])}: **{verdict}**",
            ]
        lines.append("")
    return lines


def _names_text(names: Sequence[str]) -> str:
    """``**a**``, or ``**a**, **b** (tied)`` for settings tied for the best."""
    text = ", ".join(f"**{n}**" for n in names)
    return text + " (tied)" if len(names) > 1 else text


def _top_k_size(top_k: Sequence[str] | None) -> str:
    return "k" if top_k is None else str(len(top_k))


def _top_k_text(top_k: Sequence[str] | None) -> str:
    """The predicted top-k, or why there is none (the report holds None where nothing was fitted)."""
    return "not available: fewer than two trainings" if top_k is None else ", ".join(top_k)


def beats_chance(evaluations: pd.DataFrame, benchmarks: Sequence[str], level: float = 0.05) -> pd.DataFrame:
    """Per (setting, benchmark) of built-in evaluations (rows of ``evaluations.csv``): accuracy, chance, and
    the one-sided binomial test of "better than chance" (p-value, and whether p < ``level``). Rows without
    a chance (an external benchmark's score) are left out."""
    from scipy.stats import binomtest

    rows = []
    for record in evaluations.to_dict("records"):
        if record["benchmark"] not in benchmarks or pd.isna(record.get("chance")):
            continue
        n = int(record["n"])
        correct = round(record["score"] * n / 100.0)
        p = binomtest(correct, n, record["chance"] / 100.0, alternative="greater").pvalue
        rows.append({"setting": record["setting"], "benchmark": record["benchmark"], "score": float(record["score"]),
                     "chance": float(record["chance"]), "n": n, "p_value": float(p), "beats_chance": p < level})
    return pd.DataFrame(rows, columns=["setting", "benchmark", "score", "chance", "n", "p_value", "beats_chance"])


def _chance_section(evaluations: pd.DataFrame, groups: Mapping[str, str]) -> list[str]:
    table = beats_chance(evaluations, list(groups))
    if table.empty:
        return []
    lines = ["## Against chance", ""]
    chance = table.groupby("benchmark", sort=False)["chance"].first().reindex(list(groups))
    lines += ["Chance accuracy per benchmark (mean of 1/options): " + ", ".join(
        f"{b} {c:.1f}" for b, c in chance.dropna().items()) + ".", ""]
    wins = table.pivot(index="setting", columns="benchmark", values="beats_chance").reindex(columns=list(groups))
    means = table.groupby("setting")["score"].mean().sort_values(ascending=False)
    rows = []
    for setting, mean in means.items():
        beaten = [b for b in groups if bool(wins.loc[setting].get(b, False))]
        rows.append([setting, f"{mean:.1f}", f"{len(beaten)} of {wins.loc[setting].notna().sum()}",
                     ", ".join(b for b in groups if b not in beaten and pd.notna(wins.loc[setting].get(b)))])
    lines += ["Settings by mean accuracy; benchmarks each beats chance on (one-sided binomial test, p < 0.05) "
              "and those it does not:", "",
              markdown_table(pd.DataFrame(rows, columns=["setting", "mean", "beats chance on", "not on"])), ""]
    return lines


def _law_section(law: Mapping[str, pd.DataFrame], groups: Mapping[str, str], predict_with: str) -> list[str]:
    summary, r2, coefficients, predictions = law["summary"], law["r2"], law["coefficients"], law["predictions"]
    lines = ["## The AC law", "", "Mean in-sample R^2 and leave-one-setting-out Q^2 by feature set and "
             "benchmark group:", ""]
    wide = summary.pivot(index="features", columns="group", values=["mean_r2", "mean_q2_loo"])
    group_order = [*dict.fromkeys(groups.values()), "all"]
    wide = wide.reindex(columns=[(s, g) for s in ("mean_r2", "mean_q2_loo") for g in group_order])
    wide.columns = [f"{stat.replace('mean_', '')} {group}" for stat, group in wide.columns]
    wide = wide.reindex(list(dict.fromkeys(summary["features"]))).reset_index()
    lines += [markdown_table(wide), ""]
    unfitted = list(dict.fromkeys(r2.loc[r2["r2"].isna(), "benchmark"]))
    if unfitted:
        lines += [f"Not fitted, and left out of the means: {', '.join(unfitted)} (every scored setting has the "
                  "same score).", ""]
    lines += [f"Per benchmark, `{predict_with}` (the law used for predictions):", ""]
    per = r2[r2["features"] == predict_with][["benchmark", "r2", "q2_loo", "spearman_loo"]].copy()
    alpha = coefficients[(coefficients["features"] == predict_with) & (coefficients["term"] == "AC")]
    if not alpha.empty:
        per = per.merge(alpha[["benchmark", "value"]].rename(columns={"value": "alpha_AC"}), on="benchmark")
    lines += [markdown_table(per, digits=4), ""]
    candidates = predictions[predictions["measured"].isna()]
    if not candidates.empty:
        lines += ["## Predicted scores of candidates (no measured scores)", ""]
        table = candidates.pivot(index="setting", columns="benchmark", values="predicted")
        table = table.reindex(columns=list(groups)).reset_index()
        lines += [markdown_table(table, digits=2), ""]
    return lines


def _simulation_section(simulation: pd.DataFrame, budgets_shown: Sequence[int]) -> list[str]:
    lines = ["## The AC policy (Monte-Carlo)", ""]
    trials = int(simulation["trials"].iloc[0])
    shown = [b for b in budgets_shown if b in set(simulation["budget"])]
    lines += [
        f"Recall@3 (share of {trials} runs whose predicted top-3 holds the best setting) by number of "
        "trainings, with random order's in brackets:",
        "",
    ]
    rows = []
    for benchmark, sub in simulation.groupby("benchmark", sort=False):
        sub = sub.set_index("budget")
        rows.append(
            [benchmark]
            + [f"{sub.loc[b, 'recall_at_3']:.3f} ({sub.loc[b, 'random_recall_at_3']:.3f})" for b in shown]
        )
    mean = simulation.groupby("budget")[["recall_at_3", "random_recall_at_3"]].mean()
    rows.append(["**mean**"] + [f"{mean.loc[b, 'recall_at_3']:.3f} ({mean.loc[b, 'random_recall_at_3']:.3f})"
                                for b in shown])
    lines += [markdown_table(pd.DataFrame(rows, columns=["benchmark", *[f"budget {b}" for b in shown]])), ""]
    return lines


def write_summary(path: str | Path, text: str) -> None:
    write_text(path, text)
