"""Shared fixtures: the repository root, an isolated copy of the workflow, and a snakemake runner."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# What a fresh clone needs to run the workflow (results/ and .snakemake/ stay behind).
WORKFLOW_PARTS = ("Snakefile", "config.yaml", "rules", "schemas", "workflow", "resources", "presets", "report",
                  "envs", "profiles")


SMOKE = "presets/smoke.yaml"


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The smoke preset run end to end once per test session, in a fresh copy (the pipeline tests read it;
    the SLURM test compares its own run with it)."""
    workdir = copy_workflow(tmp_path_factory.mktemp("smoke"))
    start = time.perf_counter()
    snakemake(workdir, "--configfile", SMOKE)
    print(f"smoke preset end to end: {time.perf_counter() - start:.0f} s")
    return workdir


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    # No network at run time: a missing checkpoint must fail at once, not after ~50 s of retries.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def copy_workflow(dest: Path) -> Path:
    """A copy of the workflow's files in ``dest``, as in a fresh clone."""
    dest.mkdir(parents=True, exist_ok=True)
    for part in WORKFLOW_PARTS:
        src = REPO / part
        if src.is_dir():
            shutil.copytree(src, dest / part, ignore=shutil.ignore_patterns("__pycache__"))
        elif src.exists():
            shutil.copy2(src, dest / part)
    return dest


def snakemake(workdir: Path, *args: str, check: bool = True, timeout: int = 1200) -> subprocess.CompletedProcess[str]:
    """Run snakemake (this interpreter's) in ``workdir``; output captured, failures shown in full.

    ``timeout`` (seconds) is enforced by coreutils' timeout with a KILL 30 s later: a Snakemake waiting on
    a cluster can ignore SIGTERM.
    """
    cmd = ["timeout", "-k", "30", str(timeout), sys.executable, "-m", "snakemake", "--cores", "2", *args]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def planned_rules(workdir: Path, *args: str) -> dict[str, int]:
    """Rules a dry run would execute, with job counts (from the 'Job stats' table), ``all`` excluded.

    Targets go first in ``args``: ``--configfile`` takes every value after it.
    """
    proc = snakemake(workdir, "-n", *args, "--quiet", "rules")
    text = proc.stdout + proc.stderr
    counts: dict[str, int] = {}
    if "Job stats:" not in text:
        return counts
    table = text.split("Job stats:", 1)[1].splitlines()
    for line in table[3:]:
        parts = line.split()
        if len(parts) != 2 or not parts[1].isdigit() or parts[0] == "total":
            break
        if parts[0] != "all":
            counts[parts[0]] = int(parts[1])
    return counts
