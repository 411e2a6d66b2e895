"""Figures of the AC law and the AC policy (matplotlib, Agg backend, PNG).

Each function takes the workflow's tables and writes one PNG atomically.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: workflow jobs have no display
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib import patheffects  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from vislaw.io import atomic_path  # noqa: E402
from vislaw.law import design_matrix  # noqa: E402
from vislaw.measurements import Measurements  # noqa: E402

_GROUP_COLOURS = {"vision": "#1f77b4", "ocr": "#ff7f0e", "all": "#7f7f7f"}
# The R^2 plot's lowest value: a poor law's Q^2 can be -5, which would flatten every other bar
_R2_AXIS_FLOOR = -1.5


def _panel_grid(n: int, width: float = 3.6, height: float = 3.3) -> tuple[plt.Figure, np.ndarray]:
    cols = min(4, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, axes.flat


def _save(fig: plt.Figure, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    plt.close(fig)


def _setting_numbers(settings: Sequence[str]) -> dict[str, int]:
    """Each setting's number on the plots (1, 2, ... in table order): names overlap where points crowd."""
    return {name: i + 1 for i, name in enumerate(dict.fromkeys(settings))}


def _key_text(numbers: Mapping[str, int], width: int = 150) -> str:
    """``1 name · 2 name · ...``, wrapped into lines of about ``width`` characters."""
    lines, line = [], ""
    for name, number in numbers.items():
        item = f"{number} {name}"
        if line and len(line) + 3 + len(item) > width:
            lines.append(line)
            line = item
        else:
            line = f"{line}  ·  {item}" if line else item
    return "\n".join([*lines, line])


def _label_points(ax: plt.Axes, names: Sequence[str], x: np.ndarray, y: np.ndarray, numbers: Mapping[str, int],
                  **text) -> None:
    """Label points by number; points that (nearly) coincide share one label ("3,7"), so none hides another.

    Labels sit up-right of their point, or up-left in the right fifth of the axes (clear of a colorbar)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
    near_x, near_y = 0.03 * (x1 - x0), 0.04 * (y1 - y0)
    done: set[int] = set()
    for i in range(len(names)):
        if i in done or not (np.isfinite(x[i]) and np.isfinite(y[i])):
            continue
        group = [j for j in range(i, len(names)) if j not in done and np.isfinite(x[j]) and np.isfinite(y[j])
                 and abs(x[j] - x[i]) <= near_x and abs(y[j] - y[i]) <= near_y]
        done.update(group)
        label = ",".join(str(numbers[names[j]]) for j in group)
        right = x[i] > x0 + 0.8 * (x1 - x0)
        ax.annotate(label, (x[i], y[i]), xytext=(-3 if right else 3, 3), textcoords="offset points",
                    ha="right" if right else "left", **text)


def plot_measured_vs_predicted(
    predictions: pd.DataFrame, r2: pd.DataFrame, features: str, out_png: str | Path
) -> None:
    """Per benchmark: measured score against the law's in-sample prediction, settings labelled."""
    benchmarks = list(dict.fromkeys(predictions["benchmark"]))
    numbers = _setting_numbers(predictions["setting"])
    fig, axes = _panel_grid(len(benchmarks))
    for ax, benchmark in zip(axes, benchmarks):
        sub = predictions[predictions["benchmark"] == benchmark]
        scored = sub[sub["measured"].notna()]
        candidates = sub[sub["measured"].isna()]
        ax.scatter(scored["predicted"], scored["measured"], s=22, color="#1f77b4", zorder=3, label="scored")
        lo = min(scored["predicted"].min(), scored["measured"].min())
        hi = max(scored["predicted"].max(), scored["measured"].max())
        pad = 0.05 * (hi - lo)
        ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="0.6", lw=1, ls="--", zorder=1)
        _label_points(ax, list(scored["setting"]), scored["predicted"].to_numpy(), scored["measured"].to_numpy(),
                      numbers, fontsize=7)
        if not candidates.empty:
            for _, row in candidates.iterrows():
                ax.axvline(row["predicted"], color="#d62728", lw=0.8, alpha=0.6)
                ax.annotate(f"{numbers[row['setting']]} (candidate)", (row["predicted"], lo), fontsize=6,
                            rotation=90, color="#d62728", xytext=(2, 2), textcoords="offset points")
        fit = r2[(r2["benchmark"] == benchmark) & (r2["features"] == features)].iloc[0]
        ax.set_title(f"{benchmark}\nR$^2$={fit['r2']:.3f}  Q$^2_{{LOO}}$={fit['q2_loo']:.3f}", fontsize=9)
        ax.set_xlabel(f"predicted ({features})", fontsize=8)
        ax.set_ylabel("measured", fontsize=8)
        ax.tick_params(labelsize=7)
    fig.suptitle("AC law: measured vs predicted benchmark scores", fontsize=11)
    fig.tight_layout()
    fig.text(0.5, 0, _key_text(numbers), ha="center", va="top", fontsize=8)
    _save(fig, out_png)


def plot_law_surfaces(
    measurements: Measurements,
    coefficients: pd.DataFrame,
    normalisation: pd.DataFrame,
    features: str,
    out_png: str | Path,
) -> None:
    """Per benchmark: the fitted score over normalised (A, C), settings marked and coloured by measured score."""
    benchmarks = list(measurements.benchmarks)
    numbers = _setting_numbers(measurements.settings)
    fig, axes = _panel_grid(len(benchmarks), width=3.9, height=3.4)
    for ax, benchmark in zip(axes, benchmarks):
        coef = coefficients[(coefficients["benchmark"] == benchmark) & (coefficients["features"] == features)]
        norm = normalisation[normalisation["benchmark"] == benchmark].set_index("quantity")
        if coef["value"].isna().all():
            ax.text(0.5, 0.5, "every setting scored the same:\nno law to fit", ha="center", va="center",
                    transform=ax.transAxes, fontsize=8)
            ax.set_title(benchmark, fontsize=9)
            continue
        a = (measurements.a[benchmark] - norm.loc["A", "min"]) / (norm.loc["A", "max"] - norm.loc["A", "min"])
        c = (measurements.c - norm.loc["C", "min"]) / (norm.loc["C", "max"] - norm.loc["C", "min"])
        # The scored settings span [0, 1]; candidates, normalised by them, may lie outside: the axes take them in
        a_range = (min(0.0, np.nanmin(a)) - 0.05, max(1.0, np.nanmax(a)) + 0.05)
        c_range = (min(0.0, np.nanmin(c)) - 0.05, max(1.0, np.nanmax(c)) + 0.05)
        ga, gc = np.meshgrid(np.linspace(*a_range, 111), np.linspace(*c_range, 111))
        surface = (design_matrix(ga.ravel(), gc.ravel(), list(coef["term"])) @ coef["value"].to_numpy())
        surface = surface.reshape(ga.shape)
        # One colour scale for surface and dots: the normalised score range, saturating outside it (the
        # fitted quadratic can dive far below 0 where no setting lies, which would wash out the contrast).
        levels = np.linspace(-0.1, 1.1, 25)
        image = ax.contourf(ga, gc, surface, levels=levels, cmap="viridis", extend="both")
        ax.contour(ga, gc, surface, levels=[0.25, 0.5, 0.75, 1.0], colors="white", linewidths=0.6)
        y = measurements.scores[benchmark]
        y_norm = (y - norm.loc["score", "min"]) / (norm.loc["score", "max"] - norm.loc["score", "min"])
        scored = ~np.isnan(y)
        ax.scatter(a[scored], c[scored], c=y_norm[scored], cmap="viridis", vmin=levels[0], vmax=levels[-1],
                   edgecolors="black", linewidths=0.9, s=34, zorder=3)
        ax.scatter(a[~scored], c[~scored], marker="x", color="#d62728", s=30, zorder=3)
        ax.set_xlim(*a_range)
        ax.set_ylim(*c_range)
        _label_points(ax, list(measurements.settings), a, c, numbers, fontsize=7, color="white",
                      path_effects=[patheffects.withStroke(linewidth=1.5, foreground="black")])
        ax.set_title(benchmark, fontsize=9)
        ax.set_xlabel("A (normalised)", fontsize=8)
        ax.set_ylabel("C (normalised)", fontsize=8)
        ax.tick_params(labelsize=7)
        colorbar = fig.colorbar(image, ax=ax, fraction=0.046, pad=0.03, ticks=[0, 0.25, 0.5, 0.75, 1.0])
        colorbar.ax.tick_params(labelsize=6)
        colorbar.set_label("normalised score", fontsize=7)
    fig.suptitle(f"Fitted AC law ({features}): normalised score over normalised A and C; dots: settings, "
                 "coloured by measured score on the same scale (x: candidates)", fontsize=10)
    fig.tight_layout()
    fig.text(0.5, 0, _key_text(numbers), ha="center", va="top", fontsize=8)
    _save(fig, out_png)


def plot_r2_comparison(summary: pd.DataFrame, feature_sets: Sequence[str], out_png: str | Path) -> None:
    """Mean in-sample R^2 and leave-one-out Q^2 of each feature set, per benchmark group."""
    groups = list(dict.fromkeys(summary["group"]))
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2), sharey=True)
    x = np.arange(len(feature_sets))
    width = 0.8 / len(groups)
    for ax, column, title in zip(axes, ["mean_r2", "mean_q2_loo"], ["in-sample R$^2$", "leave-one-out Q$^2$"]):
        for i, group in enumerate(groups):
            sub = summary[summary["group"] == group].set_index("features")
            values = [sub.loc[f, column] if f in sub.index else np.nan for f in feature_sets]
            positions = x + (i - (len(groups) - 1) / 2) * width
            ax.bar(positions, values, width, color=_GROUP_COLOURS.get(group), label=group)
            for position, value in zip(positions, values):
                if not np.isfinite(value):
                    continue
                if value < _R2_AXIS_FLOOR:  # the bar runs off the axes: its value goes inside, at the bottom
                    ax.text(position, _R2_AXIS_FLOOR + 0.03, f"{value:.2f}", rotation=90, ha="center", va="bottom",
                            fontsize=6, color="white")
                else:
                    ax.annotate(f"{value:.2f}", (position, value), xytext=(0, 1 if value >= 0 else -1),
                                textcoords="offset points", ha="center", va="bottom" if value >= 0 else "top",
                                fontsize=6)
        ax.axhline(0, color="black", lw=0.8)
        ax.set_xticks(x, feature_sets, rotation=30, ha="right", fontsize=8)
        ax.set_title(f"mean {title} by benchmark group", fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("mean over the group's benchmarks")
    bottom = min(-0.1, float(np.nanmin(summary[["mean_r2", "mean_q2_loo"]].to_numpy())) - 0.1)
    axes[0].set_ylim(max(bottom, _R2_AXIS_FLOOR), 1.1)
    axes[1].legend(fontsize=8, loc="upper right")
    fig.text(0.5, -0.02, f"Bars below {_R2_AXIS_FLOOR} are cut at the axis; their values are written inside them.",
             ha="center", fontsize=7)
    fig.tight_layout()
    _save(fig, out_png)


def _recall_panel(ax: plt.Axes, budget: Sequence[int], recall: pd.DataFrame, title: str) -> None:
    """One panel of the policy plot: Recall@3 and @1 of the AC policy and random order's Recall@3 by budget."""
    ax.plot(budget, recall["recall_at_3"], marker="o", ms=3, label="AC policy, Recall@3")
    ax.plot(budget, recall["recall_at_1"], marker=".", ms=3, ls=":", label="AC policy, Recall@1")
    ax.plot(budget, recall["random_recall_at_3"], color="0.5", ls="--", label="random order")
    ax.set_title(title, fontsize=9)
    ax.set_ylim(-0.02, 1.02)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # budgets are whole trainings
    ax.set_xlabel("trainings (budget)", fontsize=8)
    ax.set_ylabel("recall", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)


def plot_policy_recall(simulation: pd.DataFrame, groups: Mapping[str, str], out_png: str | Path) -> None:
    """Recall@1 and @3 of the AC policy by training budget against random order's Recall@3, per benchmark and on
    average."""
    benchmarks = list(dict.fromkeys(simulation["benchmark"]))
    fig, axes = _panel_grid(len(benchmarks) + 1, width=3.4, height=3.0)
    for ax, benchmark in zip(axes, benchmarks):
        sub = simulation[simulation["benchmark"] == benchmark]
        _recall_panel(ax, sub["budget"], sub, f"{benchmark} ({groups.get(benchmark, '?')})")
    mean = simulation.groupby("budget")[["recall_at_1", "recall_at_3", "random_recall_at_3"]].mean()
    ax = axes[len(benchmarks)]
    _recall_panel(ax, mean.index, mean, "mean over benchmarks")
    ax.legend(fontsize=6, loc="lower right")
    trials = int(simulation["trials"].iloc[0])
    fig.suptitle(f"AC policy: share of {trials} simulated runs whose predicted top 1 (Recall@1) or top 3 "
                 "(Recall@3) holds the best setting", fontsize=10)
    fig.tight_layout()
    _save(fig, out_png)
