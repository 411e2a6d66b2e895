"""The GPU slot pool: concurrent jobs get distinct devices, a killed job frees its slot, no GPU means CPU.

Four fake GPUs come from ``CUDA_VISIBLE_DEVICES=0,1,2,3``; no test needs a real GPU. Workers are separate
processes (as Snakemake's jobs are) that report their device in a file and hold the slot until told to go,
so nothing depends on timing beyond generous timeouts.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from vislaw.gpu import (
    POOL_SIZE_ENV,
    cpu_share,
    gpu_job,
    gpu_slot,
    lock_path,
    parse_nvidia_smi_list,
    parse_visible_devices,
)
from vislaw.loader import default_workers

FAKE_GPUS = "0,1,2,3"
TIMEOUT_S = 30.0

# A job: take a slot, report the CUDA_VISIBLE_DEVICES it runs under, hold the slot until `go` exists.
WORKER = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    from vislaw.gpu import gpu_slot

    report, go = Path(sys.argv[1]), Path(sys.argv[2])
    with gpu_slot(poll_s=0.1) as device:
        tmp = report.with_suffix(".tmp")
        tmp.write_text(f"{device} {os.environ['CUDA_VISIBLE_DEVICES']}")
        os.replace(tmp, report)  # the test never reads a half-written report
        while not go.exists():
            time.sleep(0.05)
""")


def wait_for(condition: Callable[[], bool], what: str, timeout_s: float = TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(0.05)


class Workers:
    """Worker processes of one test, each with its report file and its `go` file; all stopped at the end."""

    def __init__(self, root: Path, env: dict[str, str]) -> None:
        self.root, self.env = root, env
        self.procs: dict[str, subprocess.Popen[str]] = {}

    def start(self, name: str) -> None:
        self.procs[name] = subprocess.Popen(
            [sys.executable, "-c", WORKER, str(self.report(name)), str(self.root / f"{name}.go")],
            env=self.env, stderr=subprocess.PIPE, text=True)

    def report(self, name: str) -> Path:
        return self.root / f"{name}.device"

    def device(self, name: str) -> str:
        """The device the worker took, once it has one (its CUDA_VISIBLE_DEVICES must say the same)."""
        wait_for(lambda: self.report(name).exists() or self.procs[name].poll() is not None, f"{name}'s device")
        assert self.report(name).exists(), f"{name} exited {self.procs[name].returncode}: {self.stderr(name)}"
        device, visible = self.report(name).read_text().split()
        assert visible == device, f"{name} took {device} but sees CUDA_VISIBLE_DEVICES={visible}"
        return device

    def finish(self, name: str) -> str:
        """Let the worker leave its slot; its log (stderr)."""
        (self.root / f"{name}.go").touch()
        self.procs[name].wait(timeout=TIMEOUT_S)
        assert self.procs[name].returncode == 0, self.stderr(name)
        return self.stderr(name)

    def kill(self, name: str) -> None:
        self.procs[name].send_signal(signal.SIGKILL)
        self.procs[name].wait(timeout=TIMEOUT_S)

    def stderr(self, name: str) -> str:
        proc = self.procs[name]
        return proc.stderr.read() if proc.poll() is not None and proc.stderr else "<still running>"

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            if proc.stderr:
                proc.stderr.close()


@pytest.fixture
def job_env(tmp_path: Path) -> dict[str, str]:
    """A job's environment on a box with 4 fake GPUs, outside SLURM, with this test's own lock dir."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    return {**env, "CUDA_VISIBLE_DEVICES": FAKE_GPUS, "VISLAW_GPU_LOCK_DIR": str(tmp_path / "locks")}


@pytest.fixture
def workers(tmp_path: Path, job_env: dict[str, str]) -> Iterator[Workers]:
    pool = Workers(tmp_path, job_env)
    yield pool
    pool.stop_all()


def test_four_concurrent_jobs_get_four_distinct_devices_and_a_fifth_waits(workers: Workers) -> None:
    for name in ("a", "b", "c", "d"):
        workers.start(name)
    devices = {name: workers.device(name) for name in ("a", "b", "c", "d")}
    assert sorted(devices.values()) == ["0", "1", "2", "3"], devices

    workers.start("e")
    time.sleep(1.5)  # ample for a free slot to be taken; none is free, so e must still be waiting
    assert not workers.report("e").exists(), "a 5th job got a device while 4 jobs held all 4"
    log_b = workers.finish("b")
    assert workers.device("e") == devices["b"]
    assert f"took GPU {devices['b']}" in log_b and f"released GPU {devices['b']}" in log_b
    assert "all 4 GPU slots busy" in workers.finish("e")


def test_a_killed_job_frees_its_slot(workers: Workers) -> None:
    for name in ("a", "b", "c", "d"):
        workers.start(name)
    devices = {name: workers.device(name) for name in ("a", "b", "c", "d")}
    workers.kill("c")  # SIGKILL: no cleanup code runs; only the OS can release the lock
    workers.start("e")
    assert workers.device("e") == devices["c"]


def test_the_slot_sets_and_restores_cuda_visible_devices(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-aaaa,GPU-bbbb")  # UUIDs are tokens like ids
    with gpu_slot(lock_dir=tmp_path) as first:
        assert first == "GPU-aaaa" and os.environ["CUDA_VISIBLE_DEVICES"] == "GPU-aaaa"
        assert lock_path(tmp_path, "GPU-aaaa").exists()
        # Another job (a lock belongs to an open file, so a second open here competes like one); the devices
        # are passed because inside the slot CUDA_VISIBLE_DEVICES names only the first job's.
        with gpu_slot(devices=["GPU-aaaa", "GPU-bbbb"], lock_dir=tmp_path, wait_s=5) as second:
            assert second == "GPU-bbbb"
        with pytest.raises(TimeoutError, match="no free GPU among GPU-aaaa"):
            with gpu_slot(devices=["GPU-aaaa"], lock_dir=tmp_path, wait_s=0.3, poll_s=0.1):
                pass
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "GPU-aaaa,GPU-bbbb"


def test_a_slots_job_gets_its_devices_share_of_the_cpus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    monkeypatch.delenv(POOL_SIZE_ENV, raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)))
    assert cpu_share() == 1 and default_workers(cpu_share()) == 14  # one GPU job feeds its device alone
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", FAKE_GPUS)
    with gpu_slot(lock_dir=tmp_path):
        # four extractions may run at once: 16 CPUs / 4 less the GPU-driving and writer threads
        assert cpu_share() == 4 and default_workers(cpu_share()) == 2
    assert POOL_SIZE_ENV not in os.environ
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    assert default_workers(8) == 1  # never fewer than one worker


@pytest.mark.parametrize("visible", ["", "-1"])
def test_no_gpu_runs_on_the_cpu_and_says_so(visible: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    with gpu_slot(lock_dir=tmp_path / "locks") as device:
        assert device is None
    assert "running on the CPU" in capsys.readouterr().err
    assert not (tmp_path / "locks").exists()


def test_a_machine_without_gpus_is_discovered_as_such(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    with gpu_slot(lock_dir=tmp_path, discover=lambda: []) as device:
        assert device is None
    assert "running on the CPU" in capsys.readouterr().err
    with gpu_slot(lock_dir=tmp_path, wait_s=5, discover=lambda: ["0", "1"]) as device:
        assert device == "0" and os.environ["CUDA_VISIBLE_DEVICES"] == "0"
    assert "CUDA_VISIBLE_DEVICES" not in os.environ


def test_under_slurm_the_job_keeps_what_slurm_gave_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    with gpu_slot(lock_dir=tmp_path / "locks") as device:
        assert device == "3" and os.environ["CUDA_VISIBLE_DEVICES"] == "3"
    assert not (tmp_path / "locks").exists(), "a SLURM job took a lock of its own"
    assert "SLURM job 42" in capsys.readouterr().err
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    with gpu_slot(lock_dir=tmp_path / "locks", discover=lambda: ["0"]) as device:
        assert device is None, "a SLURM job without a GPU allocation took a node GPU"


def test_gpu_job_holds_a_slot_for_the_call(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5,6")
    monkeypatch.setenv("VISLAW_GPU_LOCK_DIR", str(tmp_path))
    monkeypatch.setenv("VISLAW_GPU_WAIT_S", "5")  # a test must fail, not hang

    @gpu_job
    def job(x: int) -> tuple[int, str]:
        return x, os.environ["CUDA_VISIBLE_DEVICES"]

    assert job(1) == (1, "5")
    assert job.__name__ == "job"


def test_no_slot_once_cuda_is_initialised(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", FAKE_GPUS)
    started = SimpleNamespace(cuda=SimpleNamespace(is_initialized=lambda: True))  # torch after a CUDA call
    monkeypatch.setitem(sys.modules, "torch", started)
    with gpu_slot(lock_dir=tmp_path / "locks") as device:
        assert device == FAKE_GPUS and os.environ["CUDA_VISIBLE_DEVICES"] == FAKE_GPUS
    assert not (tmp_path / "locks").exists()
    assert "CUDA was initialised in this process before the slot" in capsys.readouterr().err


def test_parsing() -> None:
    assert parse_visible_devices("0, 2,3") == ["0", "2", "3"]
    assert parse_visible_devices("1,-1,2") == ["1"]  # CUDA stops at the first invalid entry
    assert parse_visible_devices("") == []
    smi = ("GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-11111111-2222)\n"
           "GPU 1: NVIDIA A100-SXM4-40GB (UUID: GPU-33333333-4444)\n"
           "  MIG 3g.20gb     Device  0: (UUID: MIG-aaaa-bbbb)\n"
           "  MIG 3g.20gb     Device  1: (UUID: MIG-cccc-dddd)\n")
    assert parse_nvidia_smi_list(smi) == ["0", "MIG-aaaa-bbbb", "MIG-cccc-dddd"]


SNAKEFILE = """
rule all:
    input:
        expand("done/{{job}}.txt", job=range(4)),


rule gpu_job:
    output:
        "done/{{job}}.txt",
    resources:
        gpu=1,
    shell:
        "{python} {worker} {{output}}"
"""

# A job of the Snakefile: take a slot, record it, and wait for all 4 jobs to hold theirs at once (a barrier:
# if Snakemake ran the jobs one by one, this would time out and fail the job).
SNAKEMAKE_JOB = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    from vislaw.gpu import gpu_slot

    with gpu_slot(poll_s=0.1) as device:
        slots = Path("slots")
        slots.mkdir(exist_ok=True)
        (slots / f"{os.getpid()}.tmp").write_text(os.environ["CUDA_VISIBLE_DEVICES"])
        os.replace(slots / f"{os.getpid()}.tmp", slots / f"{os.getpid()}.txt")
        deadline = time.monotonic() + 60
        while len(list(slots.glob("*.txt"))) < 4:
            if time.monotonic() > deadline:
                sys.exit("the 4 GPU jobs did not run concurrently")
            time.sleep(0.05)
        Path(sys.argv[1]).parent.mkdir(exist_ok=True)
        Path(sys.argv[1]).write_text(device)
""")


@pytest.mark.workflow
def test_snakemake_gpu_jobs_get_distinct_devices(tmp_path: Path, job_env: dict[str, str]) -> None:
    (tmp_path / "job.py").write_text(SNAKEMAKE_JOB)
    (tmp_path / "Snakefile").write_text(SNAKEFILE.format(python=sys.executable, worker="job.py"))
    env = {k: v for k, v in job_env.items() if k != "VISLAW_GPU_LOCK_DIR"}  # the default lock dir, as in a run
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--cores", "4", "--resources", "gpu=4"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    devices = sorted((tmp_path / "done" / f"{i}.txt").read_text() for i in range(4))
    assert devices == ["0", "1", "2", "3"]
    assert sorted(p.read_text() for p in (tmp_path / "slots").glob("*.txt")) == devices
    assert len(list((tmp_path / ".snakemake" / "gpu-slots").glob("*.lock"))) == 4


def test_every_gpu_rules_job_holds_a_slot() -> None:
    """A rule with ``gpu=1`` runs a ``vislaw.jobs`` function through its adapter; that function must be a
    ``gpu_job``, or parallel jobs all land on GPU 0."""
    import re

    from vislaw import jobs

    from .conftest import REPO

    rules = re.split(r"^rule ", "\n".join(p.read_text() for p in sorted((REPO / "rules").glob("*.smk"))),
                     flags=re.M)[1:]
    checked = []
    for rule in rules:
        if not re.search(r"^\s+gpu=1,", rule, flags=re.M):
            continue
        script = re.search(r"^\s+script:\s*\n\s+\"([^\"]+)\"", rule, flags=re.M)
        assert script, rule.split(":")[0]
        adapter = (REPO / "rules" / script.group(1)).resolve().read_text()
        name = re.search(r"^from vislaw\.jobs import (\w+)", adapter, flags=re.M).group(1)
        assert hasattr(getattr(jobs, name), "__wrapped__"), f"vislaw.jobs.{name} (rule {rule.split(':')[0]})"
        checked.append(name)
    assert len(checked) == 8, checked
