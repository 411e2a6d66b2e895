"""The AC law: known quadratics, minimum-norm solutions, leave-one-out, and the paper's published fits."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm

from vislaw.law import (
    FEATURE_SETS,
    design_matrix,
    fit_features,
    fit_law,
    loo_predictions,
    min_norm_lstsq,
    minmax,
    random_features,
    summarize,
)
from vislaw.measurements import Measurements, MeasurementsError, load_measurements
from vislaw.paper import table2, table4

from .conftest import REPO

RAW = REPO / "resources" / "paper" / "raw"
V3_BENCHMARKS = ["MMBench", "MME", "MMMU", "OKVQA", "TextVQA", "VizWiz", "ScienceQA", "SEED-Bench"]
V3_GROUPS = {"MMBench": "vision", "MME": "vision", "OKVQA": "vision", "SEED-Bench": "vision",
             "MMMU": "ocr", "TextVQA": "ocr", "VizWiz": "ocr", "ScienceQA": "ocr"}


def _table(a: np.ndarray, c: np.ndarray, scores: dict[str, np.ndarray]) -> Measurements:
    settings = tuple(f"s{i}" for i in range(len(a)))
    return Measurements(path="<memory>", settings=settings, c=np.asarray(c, float),
                        a={b: np.asarray(a, float) for b in scores}, scores=dict(scores),
                        a_columns={b: "A" for b in scores})


def test_minmax_maps_reference_range_to_unit_interval() -> None:
    np.testing.assert_allclose(minmax(np.array([2.0, 4.0, 3.0])), [0.0, 1.0, 0.5])
    np.testing.assert_allclose(minmax(np.array([5.0]), reference=np.array([3.0, 4.0])), [2.0])
    with pytest.raises(ValueError, match="constant"):
        minmax(np.array([1.0, 1.0]))


def test_design_matrix_terms() -> None:
    x = design_matrix(np.array([2.0]), np.array([3.0]), FEATURE_SETS["AC_poly"])
    np.testing.assert_array_equal(x, [[1, 2, 3, 4, 6, 9]])
    with pytest.raises(KeyError, match="B2"):
        design_matrix(np.array([1.0]), np.array([1.0]), ["const", "B2"])


def test_known_quadratic_gives_r2_one_and_its_coefficients() -> None:
    rng = np.random.default_rng(7)
    a_raw, c_raw = rng.uniform(-3, -1.8, 12), rng.uniform(2, 26, 12)
    a, c = minmax(a_raw), minmax(c_raw)
    beta = np.array([0.3, 1.5, -0.7, 0.4, 2.0, -1.1])  # const, A, C, A2, AC, C2 in normalised space
    y_raw = 40 + 25 * (design_matrix(a, c, FEATURE_SETS["AC_poly"]) @ beta)
    result = fit_law(_table(a_raw, c_raw, {"bench": y_raw}), ["AC_poly", "A_linear"], "AC_poly", seed=0)

    row = result.r2.set_index("features").loc["AC_poly"]
    assert row["r2"] == pytest.approx(1.0, abs=1e-12)
    assert row["q2_loo"] == pytest.approx(1.0, abs=1e-10)
    assert row["spearman_loo"] == pytest.approx(1.0)
    # y is min-max normalised too: the fit recovers beta mapped by that affine map
    fitted = result.coefficients.query("features == 'AC_poly'").set_index("term")["value"]
    y_fit = design_matrix(a, c, FEATURE_SETS["AC_poly"]) @ beta
    lo, span = y_fit.min(), np.ptp(y_fit)
    expected = beta / span
    expected[0] = (beta[0] - lo) / span
    np.testing.assert_allclose(fitted.loc[list(FEATURE_SETS["AC_poly"])].to_numpy(), expected, atol=1e-9)
    # predictions come back in the benchmark's own units
    np.testing.assert_allclose(result.predictions["predicted"], y_raw, atol=1e-8)
    assert result.r2.set_index("features").loc["A_linear", "r2"] < 1.0


def test_statsmodels_fit_matches_numpy_and_reports_stderr() -> None:
    rng = np.random.default_rng(3)
    a, c = rng.uniform(size=10), rng.uniform(size=10)
    y = rng.uniform(size=10)
    fit = fit_features("b", "AC_poly", a, c, y)
    x = design_matrix(a, c, FEATURE_SETS["AC_poly"])
    np.testing.assert_allclose(fit.params, min_norm_lstsq(x, y), atol=1e-10)
    np.testing.assert_allclose(fit.stderr, sm.OLS(y, x).fit().bse, rtol=1e-8)
    assert fit.n == 10 and np.all(fit.stderr > 0)


@pytest.mark.filterwarnings("ignore:The design matrix is rank-deficient")
def test_minimum_norm_solution_with_fewer_points_than_parameters() -> None:
    a, c = np.array([0.0, 0.5, 1.0]), np.array([1.0, 0.2, 0.7])
    y = np.array([0.1, 0.9, 0.4])
    x = design_matrix(a, c, FEATURE_SETS["AC_poly"])  # 3 points, 6 parameters
    beta = min_norm_lstsq(x, y)
    np.testing.assert_allclose(x @ beta, y, atol=1e-12)  # interpolates
    np.testing.assert_allclose(beta, np.linalg.pinv(x) @ y, atol=1e-12)
    # any other interpolating solution (beta + a null-space vector) is longer
    null = np.linalg.svd(x)[2][-1]
    assert np.linalg.norm(beta + 0.1 * null) > np.linalg.norm(beta)
    fit = fit_features("b", "AC_poly", a, c, y)  # statsmodels' pinv: the same solution, no stderr
    np.testing.assert_allclose(fit.params, beta, atol=1e-10)
    assert np.all(np.isnan(fit.stderr))


def test_loo_predictions_match_the_hat_matrix_identity() -> None:
    # For OLS, the left-out residual is e_i / (1 - h_ii): an independent closed form.
    rng = np.random.default_rng(11)
    x = design_matrix(rng.uniform(size=9), rng.uniform(size=9), FEATURE_SETS["AC_linear"])
    y = rng.normal(size=9)
    hat = x @ np.linalg.inv(x.T @ x) @ x.T
    residual = y - hat @ y
    np.testing.assert_allclose(y - loo_predictions(x, y), residual / (1 - np.diag(hat)), atol=1e-10)


def test_random_features_are_seeded_per_benchmark() -> None:
    first = random_features(0, "MME", 5)
    np.testing.assert_array_equal(first[0], random_features(0, "MME", 5)[0])
    assert not np.array_equal(first[0], random_features(1, "MME", 5)[0])
    assert not np.array_equal(first[0], random_features(0, "MMMU", 5)[0])


def test_summarize_means_per_group_and_all() -> None:
    r2 = pd.DataFrame({"benchmark": ["a", "b", "c"], "features": ["AC_poly"] * 3,
                       "r2": [0.9, 0.7, 0.2], "q2_loo": [0.5, 0.3, -0.1], "spearman_loo": [1, 1, 1]})
    out = summarize(r2, {"a": "vision", "b": "vision", "c": "ocr"}).set_index("group")
    assert list(out.index) == ["vision", "ocr", "all"]
    assert out.loc["vision", "mean_r2"] == pytest.approx(0.8)
    assert out.loc["ocr", "mean_q2_loo"] == pytest.approx(-0.1)
    assert out.loc["all", "mean_r2"] == pytest.approx(0.6)


def test_too_few_scored_settings_names_benchmark_and_need() -> None:
    a = np.linspace(0, 1, 9)
    scores = {"bench": np.r_[np.linspace(1, 2, 7), np.nan, np.nan]}
    with pytest.raises(MeasurementsError, match=r"column 'bench': 7 scored setting\(s\).*at least 8"):
        fit_law(_table(a, a[::-1], scores), ["AC_poly"], "AC_poly", seed=0)


def test_unknown_or_random_predict_with_is_refused() -> None:
    table = _table(np.linspace(0, 1, 9), np.linspace(1, 0, 9) ** 2, {"b": np.linspace(0, 1, 9) ** 3})
    with pytest.raises(KeyError, match="AC_cubic"):
        fit_law(table, ["AC_poly"], "AC_cubic", seed=0)
    with pytest.raises(ValueError, match="random baseline"):
        fit_law(table, ["AC_poly"], "random_poly", seed=0)


@pytest.fixture(scope="module")
def v3_fit():
    measurements = load_measurements(REPO / "resources/paper/measurements_v3.csv", V3_BENCHMARKS)
    sets = ["AC_poly", "AC_linear", "A_poly", "A_linear", "C_poly", "C_linear"]
    return fit_law(measurements, sets, "AC_poly", seed=0)


@pytest.mark.parametrize(
    ("transformation", "fitting_data", "features"),
    [("none", "A Score", "A_linear"), ("none", "C Score", "C_linear"), ("none", "AC Score", "AC_linear"),
     ("polynomial", "A Score", "A_poly"), ("polynomial", "C Score", "C_poly"),
     ("polynomial", "AC Score", "AC_poly")],
)
def test_reproduces_v3_table2_within_0_15_points(v3_fit, transformation, fitting_data, features) -> None:
    published = table2(RAW).set_index(["transformation", "fitting_data"]).loc[(transformation, fitting_data)]
    summary = summarize(v3_fit.r2, V3_GROUPS).set_index(["features", "group"])
    assert 100 * summary.loc[(features, "vision"), "mean_r2"] == pytest.approx(published["R2_vision_percent"], abs=0.15)
    assert 100 * summary.loc[(features, "ocr"), "mean_r2"] == pytest.approx(published["R2_ocr_percent"], abs=0.15)


def test_reproduces_v3_table4_alpha_ac_within_0_15(v3_fit) -> None:
    published = table4(RAW).replace({"benchmark": {"SeedBench": "SEED-Bench"}}).set_index("benchmark")["alpha_AC"]
    fitted = v3_fit.coefficients.query("features == 'AC_poly' and term == 'AC'").set_index("benchmark")["value"]
    assert set(fitted.index) == set(published.index)
    for benchmark, value in published.items():
        assert fitted[benchmark] == pytest.approx(value, abs=0.15), benchmark


def test_candidates_are_predicted_and_do_not_change_the_fit() -> None:
    # "How would my new encoder do?": a setting with A and C but no score gets the law's prediction.
    rng = np.random.default_rng(4)
    a, c = rng.uniform(size=10), rng.uniform(size=10)
    truth = 50 + 10 * a - 4 * c + 6 * a * c
    y = truth.copy()
    y[-1] = np.nan  # the candidate
    with_candidate = fit_law(_table(a, c, {"b": y}), ["AC_poly"], "AC_poly", seed=0)
    without = fit_law(_table(a[:-1], c[:-1], {"b": y[:-1]}), ["AC_poly"], "AC_poly", seed=0)
    pd.testing.assert_frame_equal(with_candidate.coefficients, without.coefficients)
    candidate = with_candidate.predictions.iloc[-1]
    assert candidate["setting"] == "s9" and np.isnan(candidate["measured"])
    assert candidate["predicted"] == pytest.approx(truth[-1], abs=1e-8)


def test_a_benchmark_where_every_setting_scored_the_same_has_no_fit_but_does_not_stop_the_others(capsys) -> None:
    a, c = np.linspace(0, 1, 9), np.linspace(1, 0, 9) ** 2
    table = _table(a, c, {"flat": np.full(9, 37.5), "varied": 1 + a + c})
    result = fit_law(table, ["AC_linear"], "AC_linear", seed=0)
    rows = result.r2.set_index("benchmark")
    assert np.isnan(rows.loc["flat", "r2"]) and rows.loc["varied", "r2"] == pytest.approx(1.0)
    assert result.predictions.query("benchmark == 'flat'")["predicted"].eq(37.5).all()
    assert "benchmark 'flat': every scored setting has 37.5; nothing to fit" in capsys.readouterr().err
    summary = summarize(result.r2, {"flat": "vision", "varied": "vision"}).set_index("group")
    assert summary.loc["vision", "mean_r2"] == pytest.approx(1.0)  # over the one benchmark fitted
    assert (summary.loc["vision", "fitted"], summary.loc["vision", "benchmarks"]) == (1, 2)


def test_the_predicting_law_is_in_the_tables_even_when_not_listed() -> None:
    # law.predict_with outside law.feature_sets: the plots and the report read its R^2 and coefficients
    a, c = np.linspace(0, 1, 9), np.linspace(1, 0, 9) ** 2
    result = fit_law(_table(a, c, {"b": 1 + a + c + a * c}), ["AC_linear"], "AC_poly", seed=0)
    assert list(dict.fromkeys(result.r2["features"])) == ["AC_linear", "AC_poly"]
    assert result.r2.set_index("features").loc["AC_poly", "r2"] == pytest.approx(1.0)
    assert set(result.coefficients.query("features == 'AC_poly'")["term"]) == {"const", "A", "C", "A2", "AC", "C2"}
