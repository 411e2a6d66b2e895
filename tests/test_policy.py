"""The AC policy: grid sampling, minimum-norm refits, trainings needed, and Monte-Carlo recall."""

from __future__ import annotations

import numpy as np
import pytest

from vislaw.law import FEATURE_SETS, design_matrix
from vislaw.measurements import load_measurements
from vislaw.policy import (
    grid_cells,
    grid_sampling_order,
    predict_from_trained,
    simulate,
    simulate_measurements,
    top_k,
    trainings_needed,
)

from .conftest import REPO


def test_grid_cells_by_hand() -> None:
    points = np.array([[0.0, 0.0], [0.49, 0.51], [0.5, 0.5], [1.0, 1.0], [1.0, 0.0], [0.25, 0.75]])
    # level 1: 2x2 cells, id = i * 2 + j with i from A, j from C; 1.0 falls in the last cell
    np.testing.assert_array_equal(grid_cells(points, 1), [0, 1, 3, 3, 2, 1])
    # level 2: 4x4 cells
    np.testing.assert_array_equal(grid_cells(points, 2), [0, 6, 10, 15, 12, 7])


def test_order_is_a_permutation_and_level_one_takes_one_per_quadrant() -> None:
    quadrants = [(0.1, 0.1), (0.1, 0.9), (0.9, 0.1), (0.9, 0.9)]
    points = np.array([(x + d, y + d) for x, y in quadrants for d in (0.0, 0.02, 0.04)])
    for seed in range(20):
        order = grid_sampling_order(points, np.random.default_rng(seed))
        assert sorted(order.tolist()) == list(range(len(points)))  # every candidate once, no repeats
        first_cells = grid_cells(points[order[:4]], 1)
        assert sorted(first_cells.tolist()) == [0, 1, 2, 3]


def test_cells_holding_a_trained_candidate_are_dropped() -> None:
    # Two candidates share a level-2 cell with the level-1 pick; the third sits alone in its level-2 cell.
    points = np.array([[0.05, 0.05], [0.06, 0.06], [0.3, 0.3]])
    for seed in range(30):
        order = grid_sampling_order(points, np.random.default_rng(seed)).tolist()
        if order[0] in (0, 1):
            # level 2: cell 0 (holding the first pick) is dropped, so candidate 2 must come next
            assert order[1] == 2
        else:
            assert order[0] == 2


def test_identical_points_terminate() -> None:
    points = np.array([[0.2, 0.2], [0.2, 0.2], [0.2, 0.2], [0.9, 0.9]])
    order = grid_sampling_order(points, np.random.default_rng(1))
    assert sorted(order.tolist()) == [0, 1, 2, 3]


def test_order_is_reproducible_from_the_seed() -> None:
    points = np.random.default_rng(5).uniform(size=(12, 2))
    first = grid_sampling_order(points, np.random.default_rng(9))
    np.testing.assert_array_equal(first, grid_sampling_order(points, np.random.default_rng(9)))
    orders = {tuple(grid_sampling_order(points, np.random.default_rng(s))) for s in range(10)}
    assert len(orders) > 1


def test_prediction_with_fewer_points_than_parameters_is_the_minimum_norm_fit() -> None:
    points = np.array([[0.0, 0.0], [1.0, 1.0], [0.5, 0.2], [0.8, 0.4]])
    y = np.array([10.0, 20.0, 0.0, 0.0])
    predicted = predict_from_trained(points, y, [0, 1])
    x = design_matrix(points[:, 0], points[:, 1], FEATURE_SETS["AC_poly"])
    beta = np.linalg.pinv(x[[0, 1]]) @ np.array([0.0, 1.0])  # y min-max normalised over the trained
    np.testing.assert_allclose(predicted, x @ beta, atol=1e-12)
    np.testing.assert_allclose(predicted[[0, 1]], [0.0, 1.0], atol=1e-12)


def test_top_k_breaks_ties_by_index() -> None:
    np.testing.assert_array_equal(top_k(np.array([1.0, 3.0, 3.0, 2.0]), 3), [1, 2, 3])


def test_trainings_needed_by_hand() -> None:
    # y is an exact quadratic of the points: once six well-spread candidates are trained the fit is exact.
    points = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.5, 0.5], [0.2, 0.7], [0.6, 0.1],
                       [0.9, 0.6]])
    y = 1 + points[:, 0] + 2 * points[:, 1] - points[:, 0] * points[:, 1]  # best: index 2 (0, 1) -> 3.0
    assert int(np.argmax(y)) == 2
    assert trainings_needed(points, y, [2, 0, 1, 3, 4, 5, 6, 7]) == {1: 1.0, 3: 1.0}
    # best trained second: with two points the fit interpolates them, so the best is predicted top-1
    assert trainings_needed(points, y, [0, 2, 1, 3, 4, 5, 6, 7], ks=(1,)) == {1: 2.0}
    # a spike at the centre that the fits to the other (zero-valued) candidates cannot see: the best is
    # predicted top-1 only once it is trained itself, last
    spike = np.zeros(8)
    spike[4] = 1.0
    assert trainings_needed(points, spike, [0, 1, 2, 3, 5, 6, 7, 4], ks=(1,)) == {1: 8.0}


def test_trainings_needed_hand_computed_two_point_case() -> None:
    # Trained: candidates 0 (A=C=0) and 1 (A=C=1), y 0 and 1. The min-norm quadratic through them rises
    # along the diagonal, so candidate 2 at (0.9, 0.9) is predicted above candidate 3 at (0.1, 0.1).
    points = np.array([[0.0, 0.0], [1.0, 1.0], [0.9, 0.9], [0.1, 0.1]])
    y = np.array([0.0, 0.5, 1.0, 0.2])
    assert trainings_needed(points, y, [0, 1, 3, 2], ks=(1, 3)) == {1: 3.0, 3: 2.0}


def test_random_order_recall_is_budget_over_candidates() -> None:
    rng = np.random.default_rng(2)
    points, y = rng.uniform(size=(10, 2)), rng.uniform(size=10)
    recall = simulate(points, y, trials=3000, seed=0, key="b").recall(range(1, 11))
    expected = np.arange(1, 11) / 10
    # binomial standard error at p = 0.5 with 3000 runs is 0.009: 0.04 is > 4 sigma
    np.testing.assert_allclose(recall["random_recall_at_3"], expected, atol=0.04)
    assert recall["recall_at_3"].iloc[-1] >= recall["recall_at_1"].iloc[-1]
    assert (np.diff(recall["recall_at_3"]) >= 0).all()


def test_paper_v3_policy_beats_random_order_at_budget_four() -> None:
    # METHOD.md: ~88-90 % Recall@3 at 4 trainings vs ~27-31 % for random order (MME and MMMU are outliers).
    benchmarks = ["MMBench", "OKVQA", "TextVQA", "SEED-Bench"]
    m = load_measurements(REPO / "resources/paper/measurements_v3.csv", benchmarks)
    table = simulate_measurements(m, trials=300, seed=0, max_budget=4).query("budget == 4").set_index("benchmark")
    assert (table["recall_at_3"] > 0.8).all(), table
    assert table["random_recall_at_3"].mean() == pytest.approx(4 / 15, abs=0.05)
    assert list(table["trials"].unique()) == [300]


# --- live use ------------------------------------------------------------------------------------------

from vislaw.policy import LivePolicy, next_round, replay, target_scores  # noqa: E402

NAMES = [f"e{i}" for i in range(8)]
POINTS = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.5, 0.5], [0.2, 0.7], [0.6, 0.1],
                   [0.9, 0.6]])
TRUTH = 1 + POINTS[:, 0] + 2 * POINTS[:, 1] - POINTS[:, 0] * POINTS[:, 1]  # best: e2 (0, 1) -> 3.0


def live(**overrides) -> LivePolicy:
    settings = dict(budget=5, initial=3, per_round=2, top_k=3, seed=0, train_all=False)
    return LivePolicy(**{**settings, **overrides})


def test_target_scores_average_normalised_benchmarks() -> None:
    scores = {"b1": {"x": 10.0, "y": 20.0, "z": 15.0}, "b2": {"x": 1.0, "y": 0.0, "z": 0.5}}
    assert target_scores(scores, ["x", "y", "z"]) == {"x": 0.5, "y": 0.5, "z": 0.5}


def test_first_round_grid_samples_initial_picks() -> None:
    first = next_round(NAMES, POINTS, {}, 1, live())
    assert len(first.picks) == 3 and len(set(first.picks)) == 3
    quadrants = grid_cells(POINTS[[NAMES.index(p) for p in first.picks]], 1)
    assert len(set(quadrants.tolist())) == 3  # level one: one pick per quadrant
    assert not first.done and first.predictions == {}


def test_later_rounds_train_the_predicted_top_k_within_budget() -> None:
    trained = ["e0", "e1", "e3", "e4", "e6", "e7"]  # six points: the quadratic fit is exact
    targets = {s: float(TRUTH[NAMES.index(s)]) for s in trained}
    decided = next_round(NAMES, POINTS, targets, 2, live(budget=8, per_round=1))
    assert decided.picks == ("e2",)  # the predicted best, not yet trained
    assert decided.predictions["e2"] == max(decided.predictions.values())
    assert not decided.done
    capped = next_round(NAMES, POINTS, targets, 2, live(budget=6))
    assert capped.picks == () and capped.done and capped.reason == "budget reached"


def test_policy_stops_when_the_predicted_top_k_is_trained() -> None:
    trained = ["e0", "e1", "e2", "e3", "e7", "e4"]
    targets = {s: float(TRUTH[NAMES.index(s)]) for s in trained}
    decided = next_round(NAMES, POINTS, targets, 3, live(budget=8))
    assert decided.picks == () and decided.done and "top-3 is trained" in decided.reason


def test_train_all_picks_everything_in_one_round() -> None:
    decided = next_round(NAMES, POINTS, {}, 1, live(train_all=True))
    assert decided.picks == tuple(NAMES) and decided.done


def test_replay_on_an_exact_law_finds_the_best() -> None:
    scores = {"b": {s: float(t) for s, t in zip(NAMES, TRUTH)}}
    rounds = replay(NAMES, POINTS, scores, live(budget=7))
    trained = [s for r in rounds for s in r.picks]
    assert len(trained) == len(set(trained)) <= 7
    last = rounds[-1]
    assert "e2" in sorted(last.predictions, key=last.predictions.get, reverse=True)[:3]
    assert rounds[0].round == 1 and [r.round for r in rounds] == list(range(1, len(rounds) + 1))
