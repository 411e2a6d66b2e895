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


def trainings_needed(points: np.ndarray, y: np.ndarray, order: Sequence[int], ks: Sequence[int] = (1, 3)) -> dict[int, float]:
    """For each k: the first number of trainings n (following ``order``) whose predicted top-k holds the
    best candidate (highest ``y``).

    With one trained candidate, success only if it is the best. ``inf`` where no prefix succeeds.
    """
    best = int(np.argmax(y))
    needed = {k: float("inf") for k in ks}
    if order[0] == best:
        return {k: 1.0 for k in ks}
    x_all = design_matrix(points[:, 0], points[:, 1], AC_TERMS)
    for n in range(2, len(order) + 1):
        ranking = top_k(_predict(x_all, y, order[:n]), max(ks))
        for k in ks:
            if needed[k] == float("inf") and best in ranking[:k]:
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
    best = int(np.argmax(y))
    for trial in range(trials):
        order = grid_sampling_order(points, np.random.default_rng([seed, key_id, trial, 0]))
        needed = trainings_needed(points, y, order, (1, 3))
        top1[trial], top3[trial] = needed[1], needed[3]
        random_order = np.random.default_rng([seed, key_id, trial, 1]).permutation(len(y))
        # random order succeeds once the best candidate itself is trained
        rand[trial] = float(np.flatnonzero(random_order == best)[0] + 1)
    return PolicySimulation(top1, top3, rand)


def normalised_points(a: np.ndarray, c: np.ndarray) -> np.ndarray:
    """(n, 2) candidates' (A, C), each min-max normalised over all candidates."""
    return np.column_stack([minmax(a), minmax(c)])


def simulate_measurements(measurements: Measurements, trials: int, seed: int, max_budget: int | None) -> pd.DataFrame:
    """Recall by budget per benchmark, over the settings scored on it (each is a candidate with a known score).

    Columns: benchmark, budget, recall_at_1, recall_at_3, random_recall_at_3, trials.
    """
    frames = []
    for benchmark in measurements.benchmarks:
        scored = measurements.scored(benchmark)
        points = normalised_points(measurements.a[benchmark][scored], measurements.c[scored])
        y = measurements.scores[benchmark][scored]
        n = len(y)
        budgets = range(1, min(n, max_budget or n) + 1)
        frame = simulate(points, y, trials, seed, benchmark).recall(budgets)
        frame.insert(0, "benchmark", benchmark)
        frame["trials"] = trials
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)
