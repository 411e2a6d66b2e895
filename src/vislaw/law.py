"""The AC law: per benchmark, ordinary least squares of the min-max normalised score on polynomial
features of the min-max normalised A and C scores (METHOD.md, "AC score and the fit").

Beyond the paper's in-sample R^2 this module reports the leave-one-setting-out predictive R^2 (Q^2) and
the Spearman correlation of the left-out predictions: six parameters on 13-15 points make in-sample R^2
optimistic.

Normalisation: A and C are min-max normalised over the settings that have a measured score on the
benchmark (the points of the fit), so that adding an unscored candidate to the table changes neither the
coefficients nor R^2; candidates may then fall outside [0, 1] and their predictions are extrapolations.
The fits are invariant to this choice up to the coefficients' scale, since the polynomial spaces are closed
under affine maps of A and C.
"""

from __future__ import annotations

import sys
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from vislaw.measurements import Measurements, check_enough_scored

TERMS = ("const", "A", "C", "A2", "AC", "C2")

# Feature set -> the terms it uses. The random_* sets replace A and C by uniform random draws (seeded),
# keeping the term names: they are the paper's "random features" baseline.
FEATURE_SETS: dict[str, tuple[str, ...]] = {
    "AC_poly": ("const", "A", "C", "A2", "AC", "C2"),
    "AC_linear": ("const", "A", "C"),
    "A_poly": ("const", "A", "A2"),
    "A_linear": ("const", "A"),
    "C_poly": ("const", "C", "C2"),
    "C_linear": ("const", "C"),
    "random_poly": ("const", "A", "C", "A2", "AC", "C2"),
    "random_linear": ("const", "A", "C"),
}


def minmax(values: np.ndarray, reference: np.ndarray | None = None) -> np.ndarray:
    """Map ``values`` affinely so that ``reference`` (default: ``values``) spans [0, 1].

    Raises ValueError when the reference is constant: a constant score carries no information to fit.
    """
    ref = values if reference is None else reference
    lo, hi = float(np.min(ref)), float(np.max(ref))
    if not hi > lo:
        raise ValueError(f"cannot min-max normalise a constant score (all values {lo})")
    return (np.asarray(values, dtype=float) - lo) / (hi - lo)


def design_matrix(a: np.ndarray, c: np.ndarray, terms: Sequence[str]) -> np.ndarray:
    """Columns of ``terms`` (names from :data:`TERMS`) evaluated at the points (a, c)."""
    a = np.asarray(a, dtype=float)
    c = np.asarray(c, dtype=float)
    columns = {
        "const": lambda: np.ones_like(a),
        "A": lambda: a,
        "C": lambda: c,
        "A2": lambda: a * a,
        "AC": lambda: a * c,
        "C2": lambda: c * c,
    }
    unknown = [t for t in terms if t not in columns]
    if unknown:
        raise KeyError(f"unknown term(s) {unknown}; terms are {TERMS}")
    return np.column_stack([columns[t]() for t in terms])


def min_norm_lstsq(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Least-squares coefficients; the minimum-norm solution when ``x`` has fewer rows than columns or is
    rank-deficient (what the AC policy uses with fewer trained candidates than parameters)."""
    beta, *_ = np.linalg.lstsq(x, y, rcond=None)
    return beta


def r_squared(y: np.ndarray, prediction: np.ndarray) -> float:
    """1 - SS_res / SS_tot around the mean of ``y``."""
    y = np.asarray(y, dtype=float)
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    return 1.0 - float(np.sum((y - prediction) ** 2)) / ss_tot


def loo_predictions(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Prediction of each point from a least-squares fit to all the other points."""
    n = len(y)
    out = np.empty(n)
    for i in range(n):
        keep = np.arange(n) != i
        out[i] = x[i] @ min_norm_lstsq(x[keep], y[keep])
    return out


@dataclass(frozen=True)
class BenchmarkFit:
    """One feature set fitted on one benchmark, in normalised space."""

    benchmark: str
    features: str
    terms: tuple[str, ...]
    params: np.ndarray
    stderr: np.ndarray
    r2: float
    q2_loo: float
    spearman_loo: float
    n: int


def random_features(seed: int, benchmark: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Uniform random stand-ins for (A, C); the stream depends only on the seed and the benchmark name."""
    rng = np.random.default_rng([seed, zlib.crc32(benchmark.encode())])
    draws = rng.uniform(size=(2, n))
    return draws[0], draws[1]


def fit_features(benchmark: str, features: str, a: np.ndarray, c: np.ndarray, y: np.ndarray) -> BenchmarkFit:
    """Fit ``features`` (a :data:`FEATURE_SETS` name) to normalised points with statsmodels OLS.

    With fewer points than parameters statsmodels' pinv gives the minimum-norm solution; the standard
    errors are then NaN (no residual degrees of freedom).
    """
    terms = FEATURE_SETS[features]
    x = design_matrix(a, c, terms)
    # Imported here: the Snakefile imports this module to plan the DAG, and statsmodels costs seconds.
    import statsmodels.api as sm
    from scipy.stats import spearmanr

    result = sm.OLS(y, x).fit(method="pinv")
    params = np.asarray(result.params, dtype=float)
    if result.df_resid > 0:
        stderr = np.asarray(result.bse, dtype=float)
    else:
        stderr = np.full(len(terms), np.nan)
    loo = loo_predictions(x, y)
    rho = spearmanr(y, loo).statistic if np.ptp(loo) > 0 else np.nan
    return BenchmarkFit(
        benchmark=benchmark,
        features=features,
        terms=terms,
        params=params,
        stderr=stderr,
        r2=r_squared(y, x @ params),
        q2_loo=r_squared(y, loo),
        spearman_loo=float(rho),
        n=len(y),
    )


def min_points(feature_sets: Sequence[str]) -> int:
    """Scored settings needed per benchmark: leave-one-out fits must still have a residual degree of freedom."""
    return max(len(FEATURE_SETS[f]) for f in feature_sets) + 2


@dataclass(frozen=True)
class LawResult:
    r2: pd.DataFrame  # benchmark, features, r2, q2_loo, spearman_loo
    coefficients: pd.DataFrame  # benchmark, features, term, value, stderr
    predictions: pd.DataFrame  # setting, benchmark, predicted, measured
    normalisation: pd.DataFrame  # benchmark, quantity, min, max (the affine maps of the fits)


def fit_law(
    measurements: Measurements,
    feature_sets: Sequence[str],
    predict_with: str,
    seed: int,
) -> LawResult:
    """Fit every feature set on every benchmark, and predict every setting's scores with ``predict_with``.

    The tables hold ``feature_sets`` and ``predict_with`` (listed or not: the plots and the report show the
    law that makes the predictions)."""
    unknown = [f for f in [*feature_sets, predict_with] if f not in FEATURE_SETS]
    if unknown:
        raise KeyError(f"law: unknown feature set(s) {unknown}; known: {sorted(FEATURE_SETS)}")
    if predict_with.startswith("random_"):
        raise ValueError(f"law.predict_with: {predict_with!r} is a random baseline and predicts nothing")
    feature_sets = list(dict.fromkeys([*feature_sets, predict_with]))
    check_enough_scored(measurements, min_points(feature_sets), f"the law's feature sets {feature_sets}")

    r2_rows, coef_rows, pred_rows, norm_rows = [], [], [], []
    for benchmark in measurements.benchmarks:
        scored = measurements.scored(benchmark)
        a_all, c_all, y_all = measurements.a[benchmark], measurements.c, measurements.scores[benchmark]
        if np.ptp(y_all[scored]) == 0:
            # Every setting scored the same (a saturated or untrained benchmark): there is no law to fit.
            # Reported as NaN fits and said in the log, so the other benchmarks' fits still stand.
            value = float(y_all[scored][0])
            print(f"law: benchmark '{benchmark}': every scored setting has {value}; nothing to fit (NaN R^2)",
                  file=sys.stderr)
            r2_rows.extend((benchmark, f, np.nan, np.nan, np.nan) for f in feature_sets)
            coef_rows.extend((benchmark, f, t, np.nan, np.nan) for f in feature_sets for t in FEATURE_SETS[f])
            pred_rows.extend((st, benchmark, value, float(m)) for st, m in zip(measurements.settings, y_all))
            norm_rows.extend((benchmark, q, float(v.min()), float(v.max()))
                             for q, v in (("A", a_all[scored]), ("C", c_all[scored]), ("score", y_all[scored])))
            continue
        try:
            a, c, y = minmax(a_all[scored]), minmax(c_all[scored]), minmax(y_all[scored])
        except ValueError as err:
            raise ValueError(f"{measurements.path}, benchmark '{benchmark}': {err}") from None
        for quantity, values in (("A", a_all[scored]), ("C", c_all[scored]), ("score", y_all[scored])):
            norm_rows.append((benchmark, quantity, float(values.min()), float(values.max())))
        fits = {}
        for features in feature_sets:
            if features.startswith("random_"):
                fa, fc = random_features(seed, benchmark, len(y))
            else:
                fa, fc = a, c
            fit = fit_features(benchmark, features, fa, fc, y)
            fits[features] = fit
            r2_rows.append((benchmark, features, fit.r2, fit.q2_loo, fit.spearman_loo))
            coef_rows.extend(
                (benchmark, features, term, value, err) for term, value, err in zip(fit.terms, fit.params, fit.stderr)
            )
        best = fits[predict_with]
        x_all = design_matrix(minmax(a_all, a_all[scored]), minmax(c_all, c_all[scored]), best.terms)
        lo, hi = float(y_all[scored].min()), float(y_all[scored].max())
        predicted = lo + (x_all @ best.params) * (hi - lo)
        pred_rows.extend(
            (setting, benchmark, float(p), float(m)) for setting, p, m in zip(measurements.settings, predicted, y_all)
        )

    return LawResult(
        r2=pd.DataFrame(r2_rows, columns=["benchmark", "features", "r2", "q2_loo", "spearman_loo"]),
        coefficients=pd.DataFrame(coef_rows, columns=["benchmark", "features", "term", "value", "stderr"]),
        predictions=pd.DataFrame(pred_rows, columns=["setting", "benchmark", "predicted", "measured"]),
        normalisation=pd.DataFrame(norm_rows, columns=["benchmark", "quantity", "min", "max"]),
    )


def summarize(r2: pd.DataFrame, groups: Mapping[str, str]) -> pd.DataFrame:
    """Mean R^2 and Q^2 per feature set over each benchmark group, and over all benchmarks (group ``all``).

    ``groups`` maps benchmark -> group name (``vision``, ``ocr``, ...). Groups keep the order they first
    appear in; ``all`` comes last. A benchmark with no fit (every scored setting equal: NaN R^2) is left out
    of the means; ``fitted`` of ``benchmarks`` says how many a mean is over.
    """
    rows = []
    group_names = list(dict.fromkeys(groups.values()))
    for features in dict.fromkeys(r2["features"]):
        sub = r2[r2["features"] == features]
        for group in [*group_names, "all"]:
            members = [b for b, g in groups.items() if group == "all" or g == group]
            chosen = sub[sub["benchmark"].isin(members)]
            if chosen.empty:
                continue
            rows.append((features, group, chosen["r2"].mean(), chosen["q2_loo"].mean(),
                         int(chosen["r2"].notna().sum()), len(chosen)))
    return pd.DataFrame(rows, columns=["features", "group", "mean_r2", "mean_q2_loo", "fitted", "benchmarks"])
