"""The paper's released numbers, turned into vislaw measurement tables.

Raw files (copied verbatim from the paper and its code release; provenance in resources/paper/README.md) live
in ``resources/paper/raw/``; ``measurements_v1.csv`` and ``measurements_v3.csv`` beside them are derived by
:func:`build_measurements`, and a test checks that the shipped tables equal a fresh derivation.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

# v1's 8 benchmarks: the lmms-eval task names of the code release, in its column order.
V1_BENCHMARKS = (
    "mmbench_en",
    "mme",
    "mmmu_val",
    "ok_vqa",
    "textvqa_val",
    "vizwiz_vqa_val",
    "scienceqa_img",
    "seed_image",
)


def _join(tables: Sequence[tuple[Path, pd.DataFrame]]) -> pd.DataFrame:
    """The tables joined on ``setting``; each file must list the same settings (an inner join would drop a
    setting missing from one of them without a word)."""
    first_path, joined = tables[0]
    for path, table in tables[1:]:
        missing, extra = set(joined["setting"]) - set(table["setting"]), set(table["setting"]) - set(joined["setting"])
        if missing or extra:
            raise ValueError(f"{path}: its settings differ from {first_path}'s: missing {sorted(missing)}, "
                             f"extra {sorted(extra)}")
        joined = joined.merge(table, on="setting", validate="1:1")
    return joined


def build_measurements(version: str, raw_dir: str | Path) -> pd.DataFrame:
    """The measurement table of paper version ``"v1"`` (13 settings, A per benchmark) or ``"v3"`` (15, one A)."""
    raw = Path(raw_dir)
    if version == "v3":
        scores = pd.read_csv(raw / "v3_ac_scores.csv", dtype=str)
        bench = pd.read_csv(raw / "v3_benchmarks.csv", dtype=str)
        table = _join([(raw / "v3_ac_scores.csv", scores.rename(columns={"C_PCK@0.10": "C", "A_loglik": "A"})),
                       (raw / "v3_benchmarks.csv", bench)])
        return table[["setting", "A", "C", *bench.columns[1:]]]
    if version == "v1":
        c = pd.read_csv(raw / "c_scores.csv", dtype=str).rename(columns={"model": "setting", "corres": "C"})
        a = pd.read_csv(raw / "v1_a_scores.csv", dtype=str).rename(columns={"model": "setting"})
        a = a.rename(columns={f"{b}_average": f"A.{b}" for b in V1_BENCHMARKS})
        bench = pd.read_csv(raw / "v1_benchmarks.csv", dtype=str).rename(columns={"model": "setting"})
        table = _join([(raw / "c_scores.csv", c[["setting", "C"]]), (raw / "v1_a_scores.csv", a),
                       (raw / "v1_benchmarks.csv", bench)])
        return table[["setting", "C", *(f"A.{b}" for b in V1_BENCHMARKS), *V1_BENCHMARKS]]
    raise ValueError(f"unknown paper version {version!r}: expected 'v1' or 'v3'")


def table2(raw_dir: str | Path) -> pd.DataFrame:
    """v3 Table 2: mean in-sample R^2 (%) over the vision and OCR benchmarks, per transformation and features."""
    return pd.read_csv(Path(raw_dir) / "v3_table2_r2.csv")


def table4(raw_dir: str | Path) -> pd.DataFrame:
    """v3 Table 4: the fitted A*C coefficient per benchmark (normalised space)."""
    return pd.read_csv(Path(raw_dir) / "v3_table4_alpha_ac.csv")
