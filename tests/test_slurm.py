"""The SLURM profile on a real single-node SLURM cluster started by the test (tests/slurm/cluster.sh).

Skipped, with the reason printed, only where SLURM cannot be installed or started on the machine.
"""

from __future__ import annotations

import re
from collections import Counter
import shutil
import subprocess
from pathlib import Path

import pytest

from .conftest import REPO, SMOKE, copy_workflow, snakemake

CLUSTER = REPO / "tests" / "slurm" / "cluster.sh"
OUT = Path("results/smoke")
# Settings of this throw-away cluster, on top of the user-facing profile: no accounting (poll with squeue),
# no account, the debug partition, and short polling intervals for a quick test.
TEST_CLUSTER_FLAGS = (
    "--slurm-status-command", "squeue",
    "--slurm-no-account",
    "--slurm-init-seconds-before-status-checks", "2",
    "--slurm-keep-successful-logs",
    "--latency-wait", "5",
    "--jobs", "3",
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


# The Snakefile's localrules: table-sized steps that run beside Snakemake, never submitted.
LOCAL_RULES = {"ac_table", "policy_round", "measurements", "policy_report", "summary"}
GPU_RULES = {"pretrain_encoder", "pretrain_llm", "extract_features", "train_projector", "a_score", "c_score", "train_mllm",
             "evaluate"}


def submitted_jobs(log: str) -> dict[int, str]:
    """SLURM job id -> rule, from the executor's submission lines (its log path names the rule)."""
    found = re.findall(r"submitted with SLURM jobid (\d+) \(log: \S*?/rule_([A-Za-z0-9_]+)/", log)
    return {int(job_id): rule for job_id, rule in found}


def requested_gpus(job_id: int) -> int:
    """GPUs SLURM allocated to a job (its TRES), read back from slurmctld."""
    shown = subprocess.run(["scontrol", "-o", "show", "job", str(job_id)], capture_output=True, text=True,
                           check=True).stdout
    match = re.search(r"TresPer\w+=\S*?gres[:/]gpu(?::[^:,\s]+)?[:=](\d+)", shown)  # gres:gpu:1 or gres/gpu=1
    return int(match.group(1)) if match else 0


def test_smoke_preset_on_slurm_requests_gpus_and_matches_the_local_run(slurm_cluster, smoke_run: Path,
                                                                      tmp_path: Path) -> None:
    cluster = copy_workflow(tmp_path / "cluster")
    proc = snakemake(cluster, "--profile", "profiles/slurm", "--configfile", SMOKE, *TEST_CLUSTER_FLAGS,
                     timeout=1500)
    log = proc.stdout + proc.stderr
    jobs = submitted_jobs(log)
    print(f"SLURM job ids seen: {sorted(jobs)}")
    # One log per job of the local run: every job of a non-local rule must have gone through SLURM.
    local_logs = [p.relative_to(smoke_run / OUT / "logs") for p in (smoke_run / OUT / "logs").rglob("*.log")]
    expected = Counter(p.parts[0].removesuffix(".log") for p in local_logs)
    expected = {rule: n for rule, n in expected.items() if rule not in LOCAL_RULES}
    assert dict(Counter(jobs.values())) == expected, log
    for job_id, rule in sorted(jobs.items()):
        gpus = requested_gpus(job_id)
        print(f"  job {job_id}: {rule}, gpus {gpus}")
        assert gpus == (1 if rule in GPU_RULES else 0), (job_id, rule)
    # Same code, same seeds, one thread per job: the cluster's results equal the local run's.
    for rel in ("scores/ac.csv", "policy/rounds.csv", "measurements.csv"):
        assert (cluster / OUT / rel).read_bytes() == (smoke_run / OUT / rel).read_bytes(), rel
    slurm_logs = list((cluster / ".snakemake" / "slurm_logs").rglob("*.log"))
    assert len(slurm_logs) == len(jobs)
