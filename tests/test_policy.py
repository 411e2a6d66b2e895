"""The AC policy: grid sampling, minimum-norm refits, trainings needed, and Monte-Carlo recall."""

from __future__ import annotations

import numpy as np
import pytest

from vislaw.law import FEATURE_SETS, design_matrix
from vislaw.measurements import Measurements, load_measurements
from vislaw.policy import (
    best_candidates,
    grid_cells,
    grid_sampling_order,
    pessimistic_rank,
    predict_from_trained,
    simulate,
    simulate_measurements,
    top_k,
    trainings_needed,
)
from vislaw.report import build_summary

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
    # best: index 2 (0, 1) -> 3.0, unique ((1, 1) -> 2.0; with -AC instead of -2AC it would tie at 3.0)
    y = 1 + points[:, 0] + 2 * points[:, 1] - 2 * points[:, 0] * points[:, 1]
    assert int(np.argmax(y)) == 2 and np.sum(y == y.max()) == 1
    assert trainings_needed(points, y, [2, 0, 1, 3, 4, 5, 6, 7]) == {1: 1.0, 3: 1.0}
    # Best trained second: trained (0, 0) -> 0 and (0, 1) -> 1 (normalised). Both have A = 0, so the
    # min-norm fit is f = (C + C^2) / 2, which predicts (1, 1) at 1.0 too: a tie, counted against the best
    # (rank 1), so top-2 but not top-1. Third, (1, 0) -> 0.5 adds (A + A^2) / 4: (1, 1) at 1.5 is above it.
    # Fourth, (1, 1) -> 0.5 adds -AC: f = (A + A^2) / 4 + (C + C^2) / 2 - AC, maximal at (0, 1) alone.
    assert trainings_needed(points, y, [0, 2, 1, 3, 4, 5, 6, 7], ks=(1, 2)) == {1: 4.0, 2: 2.0}
    # a spike at the centre that the fits to the other (zero-valued) candidates cannot see: until it is
    # trained, last, every trained score is 0, so every prediction is exactly 0, a tie counted against it
    spike = np.zeros(8)
    spike[4] = 1.0
    assert trainings_needed(points, spike, [0, 1, 2, 3, 5, 6, 7, 4], ks=(1,)) == {1: 8.0}


def test_trainings_needed_counts_exact_ties_against_the_best() -> None:
    # The first three trained tie (0.5 each): the fit is all zeros, every candidate is predicted 0, and
    # the best (index 0) has pessimistic rank 3, outside the top-3; an index tie-break would put it first.
    # The fourth training is the best itself: four corners under six terms, the min-norm fit interpolates.
    points = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    assert trainings_needed(points, np.array([1.0, 0.5, 0.5, 0.5]), [1, 2, 3, 0]) == {1: 4.0, 3: 4.0}
    # Last trained 0.2 instead: at n = 3 the targets (1, 1, 0) give the min-norm fit 1 at (0, 0), (1, 0)
    # and (0, 1), and 0 at (1, 1): the best is at worst third, so in the top-3 at n = 3, not at n = 2.
    assert trainings_needed(points, np.array([1.0, 0.5, 0.5, 0.2]), [1, 2, 3, 0], ks=(3,)) == {3: 3.0}


def test_pessimistic_rank_counts_ties_above_except_peers() -> None:
    values = np.array([0.5, 0.9, 0.5, 0.5, 0.1])
    assert pessimistic_rank(values, 0) == 3  # 0.9 and the two other 0.5s
    assert pessimistic_rank(values, 0, peers=[2]) == 2  # a peer tied with it is not above it
    assert pessimistic_rank(values, 0, peers=[0, 1]) == 2  # itself listed among the peers changes nothing
    np.testing.assert_array_equal(best_candidates(np.array([3.0, 5.0, 1.0, 5.0])), [1, 3])


def test_trainings_needed_counts_any_of_the_tied_best_whatever_the_row_order() -> None:
    # Two candidates tie for the best score. Training either first is success at one training, and the
    # answer for every order must not change when the rows are permuted (the table's order means nothing).
    rng = np.random.default_rng(5)
    points, y = rng.uniform(size=(8, 2)), rng.uniform(size=8)
    y[[2, 5]] = y.max() + 0.1
    assert trainings_needed(points, y, [5, 0, 1, 2, 3, 4, 6, 7]) == {1: 1.0, 3: 1.0}
    assert trainings_needed(points, y, [2, 0, 1, 3, 4, 5, 6, 7]) == {1: 1.0, 3: 1.0}
    swap = np.array([0, 1, 5, 3, 4, 2, 6, 7])  # rows 2 and 5 exchanged (its own inverse)
    for trial in range(20):
        order = list(rng.permutation(8))
        assert trainings_needed(points, y, order) == trainings_needed(points[swap], y[swap], list(swap[order]))


def test_every_candidate_tied_for_best_is_found_at_the_first_training() -> None:
    points = np.random.default_rng(0).uniform(size=(6, 2))
    recall = simulate(points, np.full(6, 0.5), trials=50, seed=0, key="flat").recall([1])
    assert recall.iloc[0][["recall_at_1", "recall_at_3", "random_recall_at_3"]].tolist() == [1.0, 1.0, 1.0]


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


def test_simulate_measurements_gives_every_benchmark_the_same_budgets() -> None:
    # "full" scores four settings, "short" three: both get budgets 1..4, and the summary table renders.
    # With three candidates any top-3 holds the best, and random order has trained it by budget 3.
    m = Measurements(path="m.csv", settings=("p", "q", "r", "s"), c=np.array([0.0, 1.0, 2.0, 3.0]),
                     a={b: np.array([0.0, 3.0, 1.0, 2.0]) for b in ("full", "short")},
                     scores={"full": np.array([1.0, 2.0, 3.0, 4.0]), "short": np.array([1.0, 2.0, 3.0, np.nan])},
                     a_columns={"full": "A", "short": "A"})
    table = simulate_measurements(m, trials=20, seed=0, max_budget=None)
    assert table.groupby("benchmark")["budget"].apply(list).to_dict() == {"full": [1, 2, 3, 4],
                                                                           "short": [1, 2, 3, 4]}
    short = table[table["benchmark"] == "short"].set_index("budget")
    assert short.loc[[3, 4], ["recall_at_3", "random_recall_at_3"]].eq(1.0).all().all()
    text = build_summary("t", "m.csv", {"full": "vision", "short": "vision"}, "AC_poly", ".", simulation=table)
    short_row = next(line for line in text.splitlines() if line.startswith("| short |"))
    assert short_row.split(" | ")[-2:] == ["1.000 (1.000)", "1.000 (1.000) |"]  # budgets 3 and 4


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


def test_target_scores_refuse_missing_or_non_finite_scores() -> None:
    with pytest.raises(ValueError, match=r"benchmark 'b2': score missing or not finite for setting\(s\) \['y'\]"):
        target_scores({"b1": {"x": 1.0, "y": 2.0}, "b2": {"x": 1.0, "y": float("nan")}}, ["x", "y"])
    with pytest.raises(ValueError, match=r"benchmark 'b1': .* \['x', 'z'\]"):
        target_scores({"b1": {"y": 2.0}, "b2": {"x": 1.0, "y": 0.0, "z": 3.0}}, ["x", "y", "z"])


def test_first_round_grid_samples_initial_picks() -> None:
    first = next_round(NAMES, POINTS, {}, 1, live())
    assert len(first.picks) == 3 and len(set(first.picks)) == 3
    quadrants = grid_cells(POINTS[[NAMES.index(p) for p in first.picks]], 1)
    assert len(set(quadrants.tolist())) == 3  # level one: one pick per quadrant
    assert not first.done and first.predictions == {}


def test_one_training_continues_the_grid_order() -> None:
    # One trained setting fits nothing (every prediction would be equal, so a top-k would be config order):
    # the second round takes the next untrained setting of the first round's grid order, e3 then e1 here.
    policy = live(budget=3, initial=1, per_round=1, seed=2)
    order = [NAMES[i] for i in grid_sampling_order(POINTS, np.random.default_rng([2, 0]))]
    assert order[:2] == ["e3", "e1"]
    first = next_round(NAMES, POINTS, {}, 1, policy)
    second = next_round(NAMES, POINTS, {"e3": 0.0}, 2, policy)
    assert first.picks == ("e3",) and second.picks == ("e1",) and not second.done
    assert second.predictions == {} and "fewer than two trained" in second.reason
    # replay follows the same rounds; the round after the budget fits on the two trained
    rounds = replay(NAMES, POINTS, {"b": {s: float(t) for s, t in zip(NAMES, TRUTH)}}, live(budget=2, initial=1,
                                                                                          per_round=1, seed=2))
    assert [r.picks for r in rounds] == [("e3",), ("e1",), ()]
    assert rounds[1].done and rounds[1].predictions == {} and len(rounds[2].predictions) == len(NAMES)


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
