"""The AC policy (METHOD.md, "AC policy"): which candidates to train fully, and how well that works.

Sampling refines grids over the unit square of normalised (A, C): at level j the square is split into
2^j x 2^j cells; cells that are empty or already hold a trained candidate are dropped, the rest are visited
in random order and one random candidate of each is trained; then level j+1. After each training (from the
second on) the quadratic AC regression is fitted on the trained candidates (minimum-norm least squares
when there are fewer points than parameters) and every candidate is predicted.

The grid order depends only on the candidates' positions and the random stream, never on measured scores,
so a whole sampling order can be drawn up front: live use trains its prefix.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from vislaw.law import FEATURE_SETS, design_matrix, min_norm_lstsq, minmax
from vislaw.measurements import Measurements

AC_TERMS = FEATURE_SETS["AC_poly"]
# Beyond 2^52 cells per side float64 coordinates cannot be told apart: the remaining untrained candidates
# sit exactly on trained ones (duplicate points), and are appended in random order.
_MAX_LEVEL = 53


def grid_cells(points: np.ndarray, level: int) -> np.ndarray:
    """Cell id of each normalised point (n, 2) at ``level`` (2^level cells per side; 1.0 falls in the last)."""
    side = 2**level
    ij = np.clip(np.floor(np.asarray(points, dtype=float) * side).astype(np.int64), 0, side - 1)
    return ij[:, 0] * side + ij[:, 1]


def grid_sampling_order(points: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The order in which the policy trains the candidates at ``points`` (n, 2) in [0, 1]^2."""
    n = len(points)
    trained: list[int] = []
    is_trained = np.zeros(n, dtype=bool)
    level = 1
    while len(trained) < n and level <= _MAX_LEVEL:
        cells = grid_cells(points, level)
        blocked = set(cells[is_trained].tolist())
        open_cells = sorted(set(cells[~is_trained].tolist()) - blocked)
        for cell in rng.permutation(np.array(open_cells, dtype=np.int64)):
            members = np.flatnonzero((cells == cell) & ~is_trained)
            pick = int(rng.choice(members))
            trained.append(pick)
            is_trained[pick] = True
        level += 1
    if len(trained) < n:
        trained.extend(int(i) for i in rng.permutation(np.flatnonzero(~is_trained)))
    return np.array(trained, dtype=np.int64)


def predict_from_trained(points: np.ndarray, y: np.ndarray, trained: Sequence[int]) -> np.ndarray:
    """Quadratic AC fit on the trained candidates (y min-max normalised over them), predicted for all."""
    return _predict(design_matrix(points[:, 0], points[:, 1], AC_TERMS), y, trained)


def _predict(x_all: np.ndarray, y: np.ndarray, trained: Sequence[int]) -> np.ndarray:
    trained = np.asarray(trained, dtype=np.int64)
    y_trained = np.asarray(y, dtype=float)[trained]
    # y's scale is the trained candidates' own: in live use nothing else is known
    y_fit = minmax(y_trained) if np.ptp(y_trained) > 0 else np.zeros_like(y_trained)
    return x_all @ min_norm_lstsq(x_all[trained], y_fit)


def top_k(values: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest values; ties broken by index (stable), so results are reproducible."""
    return np.argsort(-np.asarray(values, dtype=float), kind="stable")[:k]


def pessimistic_rank(values: np.ndarray, index: int, peers: Sequence[int] = ()) -> int:
    """0-based rank of ``values[index]`` with every exact tie placed before it, except ``peers`` (candidates
    that would do as well as it: another best, tied on the measured score), which never count above it."""
    values = np.asarray(values, dtype=float)
    above = values >= values[index]
    above[[index, *peers]] = False
    return int(np.sum(above))


def best_candidates(y: np.ndarray) -> np.ndarray:
    """Indices of every candidate with the highest score: a tie for the best has no first (the table's row
    order would otherwise decide which of them counts as found)."""
    y = np.asarray(y, dtype=float)
    return np.flatnonzero(y == y.max())


def trainings_needed(points: np.ndarray, y: np.ndarray, order: Sequence[int], ks: Sequence[int] = (1, 3)) -> dict[int, float]:
    """For each k: the first number of trainings n (following ``order``) whose predicted top-k holds a
    best candidate (highest ``y``; any of them where several tie), ranked pessimistically: other candidates
    predicted exactly equal to it count as above it (tied trained scores fit all-zero predictions, and an
    index tie-break would be luck).

    With one trained candidate, success only if it is a best. ``inf`` where no prefix succeeds.
    """
    best = best_candidates(y)
    needed = {k: float("inf") for k in ks}
    if order[0] in best:
        return {k: 1.0 for k in ks}
    x_all = design_matrix(points[:, 0], points[:, 1], AC_TERMS)
    for n in range(2, len(order) + 1):
        predicted = _predict(x_all, y, order[:n])
        rank = min(pessimistic_rank(predicted, int(b), best) for b in best)
        for k in ks:
            if needed[k] == float("inf") and rank < k:
                needed[k] = float(n)
        if all(v < float("inf") for v in needed.values()):
            break
    return needed


@dataclass(frozen=True)
class PolicySimulation:
    """Trainings needed per Monte-Carlo run: AC policy (top-1 and top-3) and random order."""

    needed_top1: np.ndarray
    needed_top3: np.ndarray
    needed_random: np.ndarray

    def recall(self, budgets: Sequence[int]) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "budget": list(budgets),
                "recall_at_1": [float(np.mean(self.needed_top1 <= b)) for b in budgets],
                "recall_at_3": [float(np.mean(self.needed_top3 <= b)) for b in budgets],
                "random_recall_at_3": [float(np.mean(self.needed_random <= b)) for b in budgets],
            }
        )


def simulate(points: np.ndarray, y: np.ndarray, trials: int, seed: int, key: str) -> PolicySimulation:
    """Monte-Carlo runs of the policy and of random order; streams depend on (seed, key, trial) only."""
    key_id = zlib.crc32(key.encode())
    top1, top3, rand = np.empty(trials), np.empty(trials), np.empty(trials)
    best = best_candidates(y)
    for trial in range(trials):
        order = grid_sampling_order(points, np.random.default_rng([seed, key_id, trial, 0]))
        needed = trainings_needed(points, y, order, (1, 3))
        top1[trial], top3[trial] = needed[1], needed[3]
        random_order = np.random.default_rng([seed, key_id, trial, 1]).permutation(len(y))
        # random order succeeds once a best candidate itself is trained
        rand[trial] = float(np.flatnonzero(np.isin(random_order, best))[0] + 1)
    return PolicySimulation(top1, top3, rand)


def normalised_points(a: np.ndarray, c: np.ndarray) -> np.ndarray:
    """(n, 2) candidates' (A, C), each min-max normalised over all candidates."""
    return np.column_stack([minmax(a), minmax(c)])


def simulate_measurements(measurements: Measurements, trials: int, seed: int, max_budget: int | None) -> pd.DataFrame:
    """Recall by budget per benchmark, over the settings scored on it (each is a candidate with a known score).

    Every benchmark gets the same budgets, up to ``max_budget`` (default: the most scored settings of any
    benchmark), so the tables line up; above a benchmark's own count all its candidates are trained.
    Columns: benchmark, budget, recall_at_1, recall_at_3, random_recall_at_3, trials.
    """
    most_scored = max(int(measurements.scored(b).sum()) for b in measurements.benchmarks)
    budgets = range(1, (max_budget or most_scored) + 1)
    frames = []
    for benchmark in measurements.benchmarks:
        scored = measurements.scored(benchmark)
        points = normalised_points(measurements.a[benchmark][scored], measurements.c[scored])
        y = measurements.scores[benchmark][scored]
        frame = simulate(points, y, trials, seed, benchmark).recall(budgets)
        frame.insert(0, "benchmark", benchmark)
        frame["trials"] = trials
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


# ---------------------------------------------------------------------------------------------------------
# Live use in the workflow: rounds of picks, each after the previous picks' measured scores have arrived.


@dataclass(frozen=True)
class PolicyRound:
    """One round of the live policy: what was known, what it predicts, and which candidates to train now."""

    round: int
    trained: tuple[str, ...]  # before this round's picks
    predictions: dict[str, float]  # setting -> predicted target (normalised); empty before two trainings
    picks: tuple[str, ...]
    done: bool  # no round follows this one
    reason: str

    def to_dict(self) -> dict:
        return {"round": self.round, "trained": list(self.trained), "predictions": self.predictions,
                "picks": list(self.picks), "done": self.done, "reason": self.reason}

    @classmethod
    def from_dict(cls, data: dict) -> PolicyRound:
        return cls(round=int(data["round"]), trained=tuple(data["trained"]), predictions=dict(data["predictions"]),
                   picks=tuple(data["picks"]), done=bool(data["done"]), reason=str(data["reason"]))


@dataclass(frozen=True)
class LivePolicy:
    """Settings of the live policy (config key ``policy``)."""

    budget: int  # most full trainings in all
    initial: int  # trainings sampled from the refining grids before the first fit
    per_round: int  # most trainings per later round
    top_k: int  # train every candidate the fit predicts in its top k
    seed: int
    train_all: bool  # train every candidate (to measure the law itself) in one round


def target_scores(scores: dict[str, dict[str, float]], trained: Sequence[str]) -> dict[str, float]:
    """The policy's one target per trained setting: the mean over benchmarks of each benchmark's score
    min-max normalised over the trained settings (so no benchmark's scale dominates).

    Raises ValueError naming the benchmark and settings whose score is missing or not finite (one NaN
    would make the benchmark's span NaN and its scores silently zero)."""
    out = {s: 0.0 for s in trained}
    for benchmark, per_setting in scores.items():
        unusable = [s for s in trained if not np.isfinite(per_setting.get(s, np.nan))]
        if unusable:
            raise ValueError(f"benchmark {benchmark!r}: score missing or not finite for setting(s) {unusable}")
        values = np.array([per_setting[s] for s in trained], dtype=float)
        span = np.ptp(values)
        normalised = (values - values.min()) / span if span > 0 else np.zeros_like(values)
        for s, v in zip(trained, normalised):
            out[s] += float(v) / len(scores)
    return out


def next_round(
    settings: Sequence[str],
    points: np.ndarray,
    targets: dict[str, float],
    round_number: int,
    policy: LivePolicy,
) -> PolicyRound:
    """The policy's next round given the targets of the settings trained so far (``targets``)."""
    trained = tuple(s for s in settings if s in targets)
    n = len(settings)
    budget = min(policy.budget, n)
    if policy.train_all:
        picks = tuple(s for s in settings if s not in targets)
        return PolicyRound(round_number, trained, {}, picks, True, "train_all: every candidate is trained")
    if len(trained) < 2:
        # nothing to fit yet (one point's predictions are all equal): keep following the first round's grid order
        order = grid_sampling_order(points, np.random.default_rng([policy.seed, 0]))
        room = budget - len(trained)
        if room <= 0:
            return PolicyRound(round_number, trained, {}, (), True, "budget reached")
        untrained = [settings[i] for i in order if settings[i] not in targets]
        picks_now = policy.per_round if trained else policy.initial
        picks = tuple(untrained[: min(picks_now, room)])
        done = len(trained) + len(picks) >= budget
        reason = "grid sampling over normalised (A, C)" + (
            ", continued: fewer than two trained, nothing to fit" if trained else "")
        return PolicyRound(round_number, trained, {}, picks, done, reason + ("; budget reached" if done else ""))
    index = {s: i for i, s in enumerate(settings)}
    y = np.full(n, np.nan)
    for s in trained:
        y[index[s]] = targets[s]
    trained_index = [index[s] for s in trained]
    predicted = predict_from_trained(points, np.nan_to_num(y), trained_index)
    predictions = {s: float(predicted[index[s]]) for s in settings}
    ranking = [settings[i] for i in top_k(predicted, policy.top_k)]
    room = budget - len(trained)
    picks = tuple(s for s in ranking if s not in targets)[: max(0, min(policy.per_round, room))]
    if not picks:
        reason = ("the predicted top-%d is trained" % policy.top_k) if room > 0 else "budget reached"
        return PolicyRound(round_number, trained, predictions, (), True, reason)
    done = len(trained) + len(picks) >= budget
    return PolicyRound(round_number, trained, predictions, picks, done,
                       "predicted top-%d not yet trained" % policy.top_k + ("; budget reached" if done else ""))


def replay(settings: Sequence[str], points: np.ndarray, scores: dict[str, dict[str, float]],
           policy: LivePolicy) -> list[PolicyRound]:
    """The rounds the live policy would have run, given every setting's measured scores (a shadow run,
    for reporting what the policy recommends when everything was trained anyway)."""
    rounds: list[PolicyRound] = []
    trained: list[str] = []
    while True:
        current = next_round(settings, points, target_scores(scores, trained) if trained else {},
                             len(rounds) + 1, policy)
        rounds.append(current)
        trained += list(current.picks)
        if current.done:
            if current.picks:  # the last picks were trained: the final fit sees them too
                final = target_scores(scores, trained)
                rounds.append(next_round(settings, points, final, len(rounds) + 1,
                                         LivePolicy(**{**policy.__dict__, "budget": len(trained)})))
            return rounds
