"""The SLURM profile on a real single-node SLURM cluster started by the test (tests/slurm/cluster.sh).

Skipped, with the reason printed, only where SLURM cannot be installed or started on the machine.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from .conftest import REPO, copy_workflow, snakemake

CLUSTER = REPO / "tests" / "slurm" / "cluster.sh"
PRESET = "presets/paper-v3.yaml"
# Settings of this throw-away cluster, on top of the user-facing profile: no accounting (poll with squeue),
# no account, the debug partition, and short polling intervals for a quick test.
TEST_CLUSTER_FLAGS = (
    "--slurm-status-command", "squeue",
    "--slurm-no-account",
    "--slurm-init-seconds-before-status-checks", "2",
    "--slurm-keep-successful-logs",
    "--latency-wait", "5",
    "--jobs", "2",
    "--default-resources", "slurm_partition=debug", "runtime=10", "mem_mb=1000",
)


@pytest.fixture(scope="module")
def slurm_cluster():
    if shutil.which("slurmctld") is None:
        reason = "SLURM is not installed (tests/slurm/cluster.sh install needs root and Debian's packages)"
        print(f"SKIP: {reason}")
        pytest.skip(reason)
    started = subprocess.run([str(CLUSTER), "start"], capture_output=True, text=True, timeout=120)
    if started.returncode != 0:
        reason = f"the test SLURM cluster did not start: {started.stderr.strip()[-500:]}"
        print(f"SKIP: {reason}")
        pytest.skip(reason)
    try:
        yield started.stdout
    finally:
        subprocess.run([str(CLUSTER), "stop"], capture_output=True, text=True, timeout=120)


def test_profile_runs_the_workflow_on_slurm_with_local_results(slurm_cluster, tmp_path: Path) -> None:
    local = copy_workflow(tmp_path / "local")
    snakemake(local, "--configfile", PRESET)
    cluster = copy_workflow(tmp_path / "cluster")
    proc = snakemake(cluster, "--profile", "profiles/slurm", "--configfile", PRESET, *TEST_CLUSTER_FLAGS,
                     timeout=900)
    log = proc.stdout + proc.stderr
    job_ids = sorted(set(re.findall(r"SLURM (?:run )?ID:? ?(\d+)|jobid (\d+)", log)), key=str)
    job_ids = sorted({int(a or b) for a, b in job_ids})
    print(f"SLURM job ids seen: {job_ids}")
    assert len(job_ids) == 6, log  # fit_law, simulate_policy, 3 plots, summary
    out = Path("results") / "paper-v3"
    for rel in ("law/r2.csv", "law/summary.csv", "law/coefficients.csv", "law/predictions.csv",
                "policy/simulation.csv", "summary.md"):
        assert (cluster / out / rel).read_bytes() == (local / out / rel).read_bytes(), rel
    slurm_logs = list((cluster / ".snakemake" / "slurm_logs").rglob("*.log"))
    assert len(slurm_logs) >= 6
