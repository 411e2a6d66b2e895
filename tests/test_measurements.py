"""The measurements table: format, candidates, and one planted bad input per error."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from vislaw.measurements import MeasurementsError, check_enough_scored, load_measurements

GOOD = """setting,A,C,A.B2,B1,B2,notes
enc1,-2.0,15.0,0.8,60.5,40,first
enc2,-2.5,24.0,0.6,55.0,30,
new,-1.9,20.0,0.7,,,candidate
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "m.csv"
    path.write_text(text)
    return path


def test_reads_shared_and_per_benchmark_a_and_candidates(tmp_path: Path) -> None:
    m = load_measurements(write(tmp_path, GOOD), ["B1", "B2"])
    assert m.settings == ("enc1", "enc2", "new")
    np.testing.assert_array_equal(m.c, [15.0, 24.0, 20.0])
    np.testing.assert_array_equal(m.a["B1"], [-2.0, -2.5, -1.9])  # shared A
    np.testing.assert_array_equal(m.a["B2"], [0.8, 0.6, 0.7])  # A.B2 takes precedence
    assert m.a_columns == {"B1": "A", "B2": "A.B2"}
    np.testing.assert_array_equal(m.scored("B1"), [True, True, False])
    assert m.candidates() == ("new",)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("name,A,C,B1\nx,1,2,3\n", r"line 1: missing column 'setting'"),
        ("setting,A,B1\nx,1,3\n", r"line 1: missing column 'C'"),
        ("setting,A,C\nx,1,2\n", r"line 1: missing column 'B1' \(a benchmark named in config key 'benchmarks'\)"),
        ("setting,C,B1\nx,2,3\n", r"no A score for benchmark 'B1': add a column 'A' \(shared\) or 'A.B1'"),
        ("setting,A,C,B1\nx,1,2,3\ny,1,abc,4\n", r"line 3, column 'C': 'abc' is not a number"),
        ("setting,A,C,B1\nx,1,2,3\ny,1,2,n/a\n", r"line 3, column 'B1': 'n/a' is not a number"),
        ("setting,A,C,B1\nx,1,,3\n", r"line 2, column 'C': empty cell; a value is required"),
        ("setting,A,C,B1\nx,,2,3\n", r"line 2, column 'A': empty cell"),
        ("setting,A,C,B1\nx,1,2,3\nx,1,2,4\n", r"line 3: setting 'x' appears twice \(first on line 2\)"),
        ("setting,A,C,B1\n,1,2,3\n", r"line 2, column 'setting': empty setting name"),
        ("setting,A,C,B1\nx,1,inf,3\n", r"line 2, column 'C': 'inf' is not a finite number"),
        ("setting,A,C,B1,B1\nx,1,2,3,4\n", r"line 1: duplicate column"),
        ("setting,A,C,B1\n", r"no rows"),
        # every row one field longer than the header: pandas alone shifts each column onto its neighbour
        ("setting,A,C,B1\nx,1,2,3,9\ny,1,2,4,9\n", r"line 2: 5 fields but the header has 4"),
        ("setting,A,C,B1\nx,1,2,3\n\ny,1,2,4,\n", r"line 4: 5 fields but the header has 4 \(a trailing comma"),
    ],
)
def test_bad_tables_name_file_line_and_column(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(MeasurementsError, match=message) as err:
        load_measurements(path, ["B1"])
    assert str(path) in str(err.value)


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(MeasurementsError, match=r"measurements file '.*nope.csv' does not exist"):
        load_measurements(tmp_path / "nope.csv", ["B1"])


def test_fewer_scored_settings_than_needed(tmp_path: Path) -> None:
    m = load_measurements(write(tmp_path, GOOD), ["B1", "B2"])
    check_enough_scored(m, 2, "the fit")
    with pytest.raises(MeasurementsError, match=r"column 'B1': 2 scored setting\(s\) \['enc1', 'enc2'\]; the fit needs at least 3"):
        check_enough_scored(m, 3, "the fit")
