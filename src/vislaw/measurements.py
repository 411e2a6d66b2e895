"""The measurements table: settings x (A, C, benchmark scores), read from CSV and checked.

Format (one row per vision-representation setting, header on line 1):

- ``setting``: a unique, non-empty name;
- ``C``: the correspondence score (required for every setting);
- ``A``: one alignment score shared by all benchmarks, and/or ``A.<benchmark>``: a per-benchmark A (v1 of
  the paper) which takes precedence over ``A`` for that benchmark;
- one column per benchmark named in the config, holding the measured score; an empty cell means "not
  measured": that setting is a *candidate* whose scores the fitted law predicts.

Other columns (protocol notes, ids) are kept out of the way and ignored. Every error names the file, and
the line and column where it applies.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd


class MeasurementsError(ValueError):
    """A measurements table that cannot be used, with the file, line and column named."""


@dataclass(frozen=True)
class Measurements:
    """A checked measurements table. Arrays are aligned with ``settings``; NaN marks an unmeasured score."""

    path: str
    settings: tuple[str, ...]
    c: np.ndarray
    a: dict[str, np.ndarray]  # benchmark -> A per setting (a shared A is repeated per benchmark)
    scores: dict[str, np.ndarray]  # benchmark -> measured score per setting, NaN where not measured
    a_columns: dict[str, str]  # benchmark -> the column its A came from ("A" or "A.<benchmark>")

    @property
    def benchmarks(self) -> tuple[str, ...]:
        return tuple(self.scores)

    def scored(self, benchmark: str) -> np.ndarray:
        """Boolean mask of the settings with a measured score on ``benchmark``."""
        return ~np.isnan(self.scores[benchmark])

    def candidates(self) -> tuple[str, ...]:
        """Settings with no measured score on any benchmark."""
        measured = np.zeros(len(self.settings), dtype=bool)
        for benchmark in self.benchmarks:
            measured |= self.scored(benchmark)
        return tuple(s for s, m in zip(self.settings, measured) if not m)


def _line(row: int) -> int:
    """1-based file line of 0-based data row ``row`` (line 1 is the header)."""
    return row + 2


def _parse_number(path: str, text: str, row: int, column: str, *, required: bool) -> float:
    text = text.strip()
    if text == "":
        if required:
            raise MeasurementsError(f"{path}, line {_line(row)}, column '{column}': empty cell; a value is required")
        return math.nan
    try:
        value = float(text)
    except ValueError:
        raise MeasurementsError(
            f"{path}, line {_line(row)}, column '{column}': {text!r} is not a number"
        ) from None
    if not math.isfinite(value):
        raise MeasurementsError(f"{path}, line {_line(row)}, column '{column}': {text!r} is not a finite number")
    return value


def load_measurements(path: str | Path, benchmarks: Sequence[str]) -> Measurements:
    """Read and check the table at ``path`` for the given benchmark columns.

    Raises :class:`MeasurementsError` for a missing file or column, a duplicate or empty setting name, a
    non-numeric cell, or a setting without C or without A for some benchmark.
    """
    path = str(path)
    if not Path(path).is_file():
        raise MeasurementsError(f"measurements file {path!r} does not exist")
    if not benchmarks:
        raise MeasurementsError(f"{path}: no benchmarks are configured (config key 'benchmarks')")
    # The raw lines first: pandas renames a repeated header ("B1" -> "B1.1"), and its error for a long row
    # does not say what is wrong
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            header = [c.strip() for c in next(reader, [])]
            for row in reader:
                if len(row) > len(header):  # a short row has empty trailing cells; a long one is an error
                    raise MeasurementsError(
                        f"{path}, line {reader.line_num}: {len(row)} fields but the header has {len(header)} "
                        f"(a trailing comma, or a column without a name?)"
                    )
    except (csv.Error, UnicodeDecodeError) as err:
        raise MeasurementsError(f"{path}: not a readable CSV table: {err}") from None
    try:
        # index_col=False: else pandas takes the first column as the index when every row has one field
        # more than the header, shifting every column by one without a word
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True, index_col=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise MeasurementsError(f"{path}: not a readable CSV table: {err}") from None
    frame.columns = [str(c).strip() for c in frame.columns]
    duplicated = sorted({c for c in header if header.count(c) > 1})
    if duplicated:
        raise MeasurementsError(f"{path}, line 1: duplicate column(s) {duplicated}")
    for column in ("setting", "C"):
        if column not in frame.columns:
            raise MeasurementsError(f"{path}, line 1: missing column '{column}'")
    for benchmark in benchmarks:
        if benchmark not in frame.columns:
            raise MeasurementsError(
                f"{path}, line 1: missing column '{benchmark}' (a benchmark named in config key 'benchmarks')"
            )
    a_columns: dict[str, str] = {}
    for benchmark in benchmarks:
        if f"A.{benchmark}" in frame.columns:
            a_columns[benchmark] = f"A.{benchmark}"
        elif "A" in frame.columns:
            a_columns[benchmark] = "A"
        else:
            raise MeasurementsError(
                f"{path}, line 1: no A score for benchmark '{benchmark}': add a column 'A' (shared) "
                f"or 'A.{benchmark}'"
            )
    if frame.empty:
        raise MeasurementsError(f"{path}: the table has no rows")

    settings = [s.strip() for s in frame["setting"]]
    first_line: dict[str, int] = {}
    for row, name in enumerate(settings):
        if not name:
            raise MeasurementsError(f"{path}, line {_line(row)}, column 'setting': empty setting name")
        if name in first_line:
            raise MeasurementsError(
                f"{path}, line {_line(row)}: setting {name!r} appears twice (first on line {first_line[name]})"
            )
        first_line[name] = _line(row)

    def column_values(column: str, required: bool) -> np.ndarray:
        return np.array(
            [_parse_number(path, text, row, column, required=required) for row, text in enumerate(frame[column])]
        )

    c = column_values("C", required=True)
    a_by_column = {column: column_values(column, required=True) for column in sorted(set(a_columns.values()))}
    scores = {benchmark: column_values(benchmark, required=False) for benchmark in benchmarks}
    return Measurements(
        path=path,
        settings=tuple(settings),
        c=c,
        a={benchmark: a_by_column[column] for benchmark, column in a_columns.items()},
        scores=scores,
        a_columns=a_columns,
    )


def check_enough_scored(measurements: Measurements, min_scored: int, why: str) -> None:
    """Raise unless every benchmark has at least ``min_scored`` scored settings (``why`` says who needs them)."""
    for benchmark in measurements.benchmarks:
        scored = measurements.scored(benchmark)
        n = int(scored.sum())
        if n < min_scored:
            names = [s for s, m in zip(measurements.settings, scored) if m]
            raise MeasurementsError(
                f"{measurements.path}, column '{benchmark}': {n} scored setting(s) {names}; {why} needs at "
                f"least {min_scored}"
            )
