"""The shipped paper tables are exactly what the raw release files give."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pandas as pd
import pytest

from vislaw.paper import build_measurements

from .conftest import REPO

PAPER = REPO / "resources" / "paper"


@pytest.mark.parametrize("version", ["v1", "v3"])
def test_shipped_measurements_equal_a_fresh_derivation(version: str) -> None:
    shipped = pd.read_csv(PAPER / f"measurements_{version}.csv", dtype=str, keep_default_na=False)
    pd.testing.assert_frame_equal(shipped, build_measurements(version, PAPER / "raw"))


def test_v1_and_v3_agree_on_shared_settings() -> None:
    # paper/README.md: v1 and v3 benchmark rows agree for the 13 shared settings up to rounding
    settings = pd.read_csv(PAPER / "raw" / "settings.csv").query("in_v1_13 == 'yes'")
    names = dict(zip(settings["repo_name"], settings["v3_name"]))
    v1 = pd.read_csv(PAPER / "measurements_v1.csv").set_index("setting")
    v3 = pd.read_csv(PAPER / "measurements_v3.csv").set_index("setting")
    for v1_name, v3_name in names.items():
        assert v1.loc[v1_name, "mmbench_en"] == pytest.approx(v3.loc[v3_name, "MMBench"], abs=0.006)
        assert v1.loc[v1_name, "C"] == pytest.approx(v3.loc[v3_name, "C"], abs=1e-9)


def test_unknown_version_is_refused() -> None:
    with pytest.raises(ValueError, match="v2"):
        build_measurements("v2", PAPER / "raw")


def test_a_setting_missing_from_one_raw_file_is_named(tmp_path: Path) -> None:
    # an inner join would silently drop it, and the law would be fitted on one setting fewer
    raw = tmp_path / "raw"
    shutil.copytree(PAPER / "raw", raw)
    lines = (raw / "v3_benchmarks.csv").read_text().splitlines()
    dropped = lines[3].split(",")[0]
    (raw / "v3_benchmarks.csv").write_text("\n".join(lines[:3] + lines[4:]) + "\n")
    with pytest.raises(ValueError, match=rf"v3_benchmarks.csv: its settings differ from .*v3_ac_scores.csv's: "
                                         rf"missing \['{re.escape(dropped)}'\], extra \[\]"):
        build_measurements("v3", raw)
