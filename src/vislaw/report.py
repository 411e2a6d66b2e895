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
    r2: pd.DataFrame,
    summary: pd.DataFrame,
    coefficients: pd.DataFrame,
    predictions: pd.DataFrame,
    simulation: pd.DataFrame,
    predict_with: str,
    plots: Mapping[str, str],
    summary_dir: str | Path,
    budgets_shown: Sequence[int] = (1, 2, 3, 4, 5, 6),
) -> str:
    """The markdown text of ``results/<name>/summary.md`` (plot links relative to ``summary_dir``)."""
    lines = [f"# vislaw run `{name}`", ""]
    settings = list(dict.fromkeys(predictions["setting"]))
    lines += [
        f"Measurements: `{measurements_path}`: {len(settings)} settings, {len(groups)} benchmarks "
        f"({', '.join(f'{b} ({g})' for b, g in groups.items())}).",
        "",
        "## The AC law",
        "",
        "Mean in-sample R^2 and leave-one-setting-out Q^2 by feature set and benchmark group:",
        "",
    ]
    wide = summary.pivot(index="features", columns="group", values=["mean_r2", "mean_q2_loo"])
    group_order = [*dict.fromkeys(groups.values()), "all"]
    wide = wide.reindex(columns=[(s, g) for s in ("mean_r2", "mean_q2_loo") for g in group_order])
    wide.columns = [f"{stat.replace('mean_', '')} {group}" for stat, group in wide.columns]
    wide = wide.reindex(list(dict.fromkeys(summary["features"]))).reset_index()
    lines += [markdown_table(wide), ""]

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

    lines += ["## The AC policy (Monte-Carlo)", ""]
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

    lines += ["## Plots", ""]
    for title, path in plots.items():
        lines.append(f"- [{title}]({Path(os.path.relpath(path, summary_dir)).as_posix()})")
    lines.append("")
    return "\n".join(lines)


def write_summary(path: str | Path, text: str) -> None:
    write_text(path, text)
