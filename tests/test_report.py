"""The summary's tables: markdown rendering and the test against chance."""

from __future__ import annotations

import pandas as pd
import pytest

from vislaw.report import beats_chance, build_summary, markdown_table


def test_markdown_table_rounds_and_blanks_nan() -> None:
    frame = pd.DataFrame({"setting": ["a", "b"], "score": [1.23456, float("nan")]})
    assert markdown_table(frame, digits=2) == "| setting | score |\n| --- | --- |\n| a | 1.23 |\n| b |  |"


def test_binomial_test_against_chance_by_hand() -> None:
    evaluations = pd.DataFrame([
        {"setting": "good", "benchmark": "colour", "score": 100.0, "chance": 25.0, "n": 4},
        {"setting": "good", "benchmark": "count", "score": 50.0, "chance": 25.0, "n": 4},
        {"setting": "external", "benchmark": "colour", "score": 61.0},  # no chance: an lmms-eval score
    ])
    table = beats_chance(evaluations, ["colour", "count"]).set_index(["setting", "benchmark"])
    assert list(table.index) == [("good", "colour"), ("good", "count")]
    assert table.loc[("good", "colour"), "p_value"] == pytest.approx(0.25 ** 4)  # all 4 right by luck
    # P(X >= 2) for X ~ Binomial(4, 1/4) = 1 - 0.75^4 - 4 * 0.25 * 0.75^3
    assert table.loc[("good", "count"), "p_value"] == pytest.approx(1 - 0.75 ** 4 - 4 * 0.25 * 0.75 ** 3)
    assert table["beats_chance"].tolist() == [True, False]
    text = build_summary("t", "m.csv", {"colour": "vision", "count": "vision"}, "AC_poly", ".",
                         evaluations=evaluations)
    assert "| good | 75.0 | 1 of 2 | count |" in text
    assert "colour 25.0, count 25.0" in text


def test_summary_says_the_predicted_top_k_is_unavailable_with_fewer_than_two_trainings() -> None:
    ac = pd.DataFrame({"setting": ["a", "b"], "A": [-1.0, -2.0], "C": [0.5, 0.4]})
    policy = {"train_all": True, "budget": 1, "trainings": 2, "candidates": 2, "recommended": "a",
              "predicted_top_k": ["a", "b"],
              "shadow": {"trainings": 1, "predicted_top_k": None, "recommended": "b", "true_best": "a",
                         "true_best_in_top_k": None}}
    text = build_summary("t", "m.csv", {"colour": "vision"}, "AC_poly", ".", ac=ac, policy=policy)
    assert "- predicted top-2 by the AC fit on all trained: a, b" in text
    assert "1 trainings, predicted top-k not available: fewer than two trainings; recommends **b**" in text
    assert "in the replay's predicted top-k: **not available**" in text
    assert "- truly best setting (all trained): **a**;" in text
    tied = {**policy, "shadow": {**policy["shadow"], "true_best_tied": ["a", "b"]}}
    text = build_summary("t", "m.csv", {"colour": "vision"}, "AC_poly", ".", ac=ac, policy=tied)
    assert "- truly best setting (all trained): **a**, **b** (tied);" in text
    text = build_summary("t", "m.csv", {"colour": "vision"}, "AC_poly", ".", ac=ac,
                         policy={**policy, "train_all": False, "predicted_top_k": None, "shadow": None})
    assert "- predicted top-k by the AC fit on all trained: not available: fewer than two trainings" in text


def test_the_normalised_mean_is_not_swamped_by_a_benchmark_on_another_scale() -> None:
    # mme in points (~1500), mmbench in %: the plain mean ranks by mme alone, the normalised one weighs both
    measurements = pd.DataFrame({"setting": ["clip", "dino", "sd"], "mmbench": [64.0, 58.0, 28.0],
                                 "mme": [1400.0, 1500.0, 900.0]})
    text = build_summary("t", "m.csv", {"mmbench": "vision", "mme": "vision"}, "AC_poly", ".",
                         ac=pd.DataFrame({"setting": ["clip"], "A": [-1.0], "C": [10.0]}), measurements=measurements)
    # clip: (1 + 5/6) / 2 = 91.7; dino: (30/36 + 1) / 2 = 91.7; sd: 0; plain means 732.0, 779.0, 464.0
    assert "| clip | 64.0 | 1400.0 | 732.0 | 91.7 |" in text
    assert "| dino | 58.0 | 1500.0 | 779.0 | 91.7 |" in text
    assert "| sd | 28.0 | 900.0 | 464.0 | 0.0 |" in text


def test_the_law_section_names_benchmarks_left_out_of_the_means() -> None:
    import numpy as np

    from vislaw.law import fit_law, summarize
    from vislaw.measurements import Measurements

    a, c = np.linspace(0, 1, 6), np.linspace(1, 0, 6) ** 2
    scores = {"flat": np.full(6, 50.0), "varied": 1 + a + c}
    table = Measurements(path="m.csv", settings=tuple(f"s{i}" for i in range(6)), c=c, a={b: a for b in scores},
                         scores=scores, a_columns={b: "A" for b in scores})
    result = fit_law(table, ["AC_linear"], "AC_linear", seed=0)
    groups = {"flat": "vision", "varied": "vision"}
    law = {"r2": result.r2, "summary": summarize(result.r2, groups), "coefficients": result.coefficients,
           "predictions": result.predictions}
    text = build_summary("t", "m.csv", groups, "AC_linear", ".", law=law)
    assert "| AC_linear | 1.000 |" in text  # the mean over the one benchmark fitted
    assert "Not fitted, and left out of the means: flat (every scored setting has the same score)." in text


def test_the_normalised_mean_is_the_policys_target_when_a_benchmark_is_constant() -> None:
    from vislaw.policy import target_scores

    measurements = pd.DataFrame({"setting": ["a", "b", "c", "d"], "b1": [10.0, 20.0, 30.0, None],
                                 "b2": [50.0, 50.0, 50.0, None]})
    targets = target_scores({"b1": {"a": 10.0, "b": 20.0, "c": 30.0}, "b2": {"a": 50.0, "b": 50.0, "c": 50.0}},
                            ["a", "b", "c"])
    assert [round(100 * targets[s], 1) for s in "abc"] == [0.0, 25.0, 50.0]  # b2 counts 0 for every setting
    text = build_summary("t", "m.csv", {"b1": "vision", "b2": "vision"}, "AC_poly", ".",
                         ac=pd.DataFrame({"setting": ["a"], "A": [-1.0], "C": [10.0]}), measurements=measurements)
    assert "| a | 10.0 | 50.0 | 30.0 | 0.0 |" in text
    assert "| b | 20.0 | 50.0 | 35.0 | 25.0 |" in text
    assert "| c | 30.0 | 50.0 | 40.0 | 50.0 |" in text
    assert "| d |  |  |  |  |" in text  # not trained: blank, not 0
