"""vislaw.plots: the policy plot's panels, read back from the figure before it is saved."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from vislaw import plots


def _simulation() -> pd.DataFrame:
    rows = []
    for benchmark, at3, at1 in (("colour", [0.0, 0.5, 1.0, 1.0], [0.0, 0.25, 0.5, 1.0]),
                                ("glyph", [0.2, 0.4, 0.6, 1.0], [0.1, 0.2, 0.3, 1.0])):
        for budget, r3, r1 in zip(range(1, 5), at3, at1, strict=True):
            rows.append({"benchmark": benchmark, "budget": budget, "recall_at_1": r1, "recall_at_3": r3,
                         "random_recall_at_3": budget / 4, "trials": 100})
    return pd.DataFrame(rows)


@pytest.fixture
def policy_figure(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[plt.Figure]:
    """The figure plot_policy_recall draws for the planted simulation (captured instead of saved)."""
    captured: list[plt.Figure] = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: captured.append(fig))
    plots.plot_policy_recall(_simulation(), {"colour": "vision", "glyph": "ocr"}, tmp_path / "policy.png")
    (fig,) = captured
    yield fig
    plt.close(fig)


def test_the_mean_panel_averages_the_benchmarks(policy_figure: plt.Figure) -> None:
    panels = [ax for ax in policy_figure.axes if ax.get_visible()]
    assert [ax.get_title() for ax in panels] == ["colour (vision)", "glyph (ocr)", "mean over benchmarks"]
    at3, at1, random = panels[2].get_lines()
    np.testing.assert_allclose(at3.get_ydata(), [0.1, 0.45, 0.8, 1.0])  # by hand: (colour + glyph) / 2
    np.testing.assert_allclose(at1.get_ydata(), [0.05, 0.225, 0.4, 1.0])
    np.testing.assert_allclose(random.get_ydata(), [0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(panels[1].get_lines()[0].get_ydata(), [0.2, 0.4, 0.6, 1.0])


def test_every_panel_is_styled_alike_with_whole_budgets(policy_figure: plt.Figure) -> None:
    panels = [ax for ax in policy_figure.axes if ax.get_visible()]
    policy_figure.canvas.draw()
    for ax in panels:
        assert ax.get_ylabel() == "recall" and ax.get_xlabel() == "trainings (budget)"
        assert {label.get_fontsize() for label in ax.get_xticklabels() + ax.get_yticklabels()} == {7}
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks)
    assert panels[2].get_legend() is not None
    assert [ax.get_legend() for ax in panels[:2]] == [None, None]


def test_a_simulation_without_a_recall_column_fails_and_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "policy.png"
    with pytest.raises(KeyError, match="recall_at_1"):
        plots.plot_policy_recall(_simulation().drop(columns="recall_at_1"), {}, out)
    assert not out.exists()
