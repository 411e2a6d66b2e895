"""One GPU per running job: a slot pool of per-device file locks that sets ``CUDA_VISIBLE_DEVICES``.

Snakemake's ``gpu`` resource (``resources: gpu=1``, ``snakemake --resources gpu=4``) is only a counter: it
bounds how many GPU jobs run at once but assigns no device, so every job would land on GPU 0. Inside a job,
``gpu_slot()`` picks a free device instead:

- the candidates are the run's ``CUDA_VISIBLE_DEVICES`` (ids or UUIDs, as set for the whole run), else the
  GPUs ``nvidia-smi -L`` lists, else ``torch.cuda.device_count()`` (NVML-based, so CUDA stays uninitialised);
- a device is taken with an exclusive non-blocking ``fcntl.flock`` on its lock file in a directory shared by
  the run's jobs (``VISLAW_GPU_LOCK_DIR``, default ``.snakemake/gpu-slots`` under the working directory);
  the OS drops the lock when the process exits, so a killed job frees its slot (a PID file would not);
- the job then sees only that device (``CUDA_VISIBLE_DEVICES=<it>``, restored on exit), as ``cuda:0``;
- with no GPU the job runs on the CPU, and under SLURM the job keeps the devices SLURM gave it.

Each decision is written to stderr, which the workflow's adapters point at the job's log.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, ParamSpec, TypeVar

LOCK_DIR_ENV = "VISLAW_GPU_LOCK_DIR"
# Set by gpu_slot while a job holds a device: how many devices the run's jobs share the machine's CPUs with.
POOL_SIZE_ENV = "VISLAW_GPU_POOL_SIZE"
WAIT_ENV = "VISLAW_GPU_WAIT_S"
DEFAULT_LOCK_DIR = Path(".snakemake") / "gpu-slots"  # relative: Snakemake runs every job in the workdir
DEFAULT_WAIT_S = 6 * 3600.0  # a job queued behind a long training run may wait hours; it still must not hang
DEFAULT_POLL_S = 5.0

P = ParamSpec("P")
R = TypeVar("R")


def parse_visible_devices(value: str) -> list[str]:
    """The device tokens of a ``CUDA_VISIBLE_DEVICES`` value: ids (``"0"``) or UUIDs (``"GPU-…"``, ``"MIG-…"``).

    CUDA ignores everything from the first invalid entry on, and ``-1`` is the usual way to hide all GPUs,
    so parsing stops at a negative id; ``""`` means no GPU.
    """
    tokens: list[str] = []
    for raw in value.split(","):
        token = raw.strip()
        if not token or token.startswith("-"):
            break
        tokens.append(token)
    return tokens


def parse_nvidia_smi_list(text: str) -> list[str]:
    """Device tokens from ``nvidia-smi -L``: a GPU's index, or its MIG instances' UUIDs when it is partitioned.

    CUDA enumerates MIG instances only by UUID, so an index would not select one.
    """
    devices: list[str] = []
    for line in text.splitlines():
        gpu = re.match(r"\s*GPU (\d+):", line)
        mig = re.match(r"\s*MIG .*\(UUID: (MIG-[^)\s]+)\)", line)
        if gpu:
            devices.append(gpu.group(1))
        elif mig:
            if devices and not devices[-1].startswith("MIG-"):
                devices.pop()  # the partitioned GPU itself is not usable as a whole
            devices.append(mig.group(1))
    return devices


def gpus_on_machine() -> list[str]:
    """The machine's GPUs, found without initialising CUDA in this process (so a later device choice holds)."""
    if shutil.which("nvidia-smi"):
        proc = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=60)
        if proc.returncode == 0:
            return parse_nvidia_smi_list(proc.stdout)
    import torch  # imported late: the pool itself must not need torch

    # NVML-based in torch >= 2.1: counts the GPUs without creating a CUDA context.
    return [str(i) for i in range(torch.cuda.device_count())]


def candidate_devices(env: Mapping[str, str], discover: Callable[[], list[str]] = gpus_on_machine) -> list[str]:
    """The devices this run may use: its ``CUDA_VISIBLE_DEVICES`` if set, else what ``discover`` finds."""
    if "CUDA_VISIBLE_DEVICES" in env:
        return parse_visible_devices(env["CUDA_VISIBLE_DEVICES"])
    return discover()


def lock_path(lock_dir: Path, device: str) -> Path:
    """The lock file of ``device`` on this host.

    The host is in the name because the default lock dir may sit on a file system shared by cluster nodes,
    where GPU 0 of one node is not GPU 0 of another.
    """
    host = re.sub(r"[^A-Za-z0-9._-]", "_", socket.gethostname())
    return lock_dir / f"{host}.gpu-{re.sub(r'[^A-Za-z0-9._-]', '_', device)}.lock"


def try_lock(path: Path) -> IO[str] | None:
    """The open, exclusively locked ``path``, or None if another process holds it (never blocks)."""
    handle = open(path, "a+")  # "a+": create if missing, never truncate a holder's note before we own it
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
    handle.flush()
    return handle


def holder_of(path: Path) -> str:
    """Who holds the lock at ``path``, as its holder wrote it (for the waiting message)."""
    with contextlib.suppress(OSError):
        return path.read_text().strip() or "unknown holder"
    return "unknown holder"


def acquire_device(devices: Sequence[str], lock_dir: Path, wait_s: float, poll_s: float) -> tuple[str, IO[str]]:
    """The first free device of ``devices`` and its held lock, polling every ``poll_s`` while all are busy."""
    lock_dir.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + wait_s
    said_waiting = False
    while True:
        for device in devices:
            handle = try_lock(lock_path(lock_dir, device))
            if handle is not None:
                return device, handle
        if time.monotonic() >= deadline:
            raise TimeoutError(
                f"gpu: no free GPU among {','.join(devices)} after {wait_s:g} s (locks in {lock_dir}). "
                "More GPU jobs run than there are devices: lower `--resources gpu=` to the number of GPUs, "
                f"or raise {WAIT_ENV}.")
        if not said_waiting:
            busy = "; ".join(f"{d}: {holder_of(lock_path(lock_dir, d))}" for d in devices)
            print(f"gpu: all {len(devices)} GPU slots busy ({busy}); waiting up to {wait_s:g} s", file=sys.stderr)
            said_waiting = True
        time.sleep(poll_s)


def release(handle: IO[str]) -> None:
    """Unlock explicitly: a forked child (e.g. a DataLoader worker) sharing the file would keep it locked."""
    fcntl.flock(handle, fcntl.LOCK_UN)
    handle.close()


@contextlib.contextmanager
def environment(name: str, value: str) -> Iterator[None]:
    """``name=value`` in the environment inside the block, the previous value (or none) after it."""
    previous = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = previous


def visible_devices(value: str) -> contextlib.AbstractContextManager[None]:
    """``CUDA_VISIBLE_DEVICES=value`` inside the block, the previous value (or none) after it."""
    return environment("CUDA_VISIBLE_DEVICES", value)


def cpu_share() -> int:
    """How many GPU jobs may share this machine's CPUs: the slot pool's size inside ``gpu_slot`` (each device
    can run one job at a time), else 1 (a CPU job, or a SLURM job, whose CPUs are its own allocation)."""
    try:
        return max(1, int(os.environ.get(POOL_SIZE_ENV, "1")))
    except ValueError:
        return 1


def cuda_started() -> bool:
    """Whether torch already initialised CUDA here; it then ignores any new ``CUDA_VISIBLE_DEVICES``."""
    torch = sys.modules.get("torch")  # not imported means not initialised; importing it here would be slow
    return torch is not None and bool(torch.cuda.is_initialized())


def slurm_devices(env: Mapping[str, str]) -> str | None:
    """The GPUs SLURM gave this job (its ``CUDA_VISIBLE_DEVICES``, comma-joined), or None if it gave none."""
    given = parse_visible_devices(env.get("CUDA_VISIBLE_DEVICES", ""))
    if not given:
        print(f"gpu: SLURM job {env['SLURM_JOB_ID']} has no GPU allocated: running on the CPU", file=sys.stderr)
        return None
    print(f"gpu: SLURM job {env['SLURM_JOB_ID']}: using the GPUs SLURM gave it, CUDA_VISIBLE_DEVICES="
          f"{','.join(given)}", file=sys.stderr)
    return ",".join(given)


@contextlib.contextmanager
def gpu_slot(devices: Sequence[str] | None = None, lock_dir: str | os.PathLike[str] | None = None,
             wait_s: float | None = None, poll_s: float = DEFAULT_POLL_S,
             discover: Callable[[], list[str]] = gpus_on_machine) -> Iterator[str | None]:
    """Hold one GPU for the block and yield its id/UUID, or None (run on the CPU).

    Under SLURM (``SLURM_JOB_ID`` set) nothing is locked: it yields what SLURM gave the job, as is.

    ``devices``: the candidates (default: ``candidate_devices``; ``discover`` is injectable for tests).
    ``lock_dir``: shared by all jobs of the run (default ``$VISLAW_GPU_LOCK_DIR``, else ``.snakemake/gpu-slots``).
    ``wait_s``: how long to wait while every device is busy (default ``$VISLAW_GPU_WAIT_S``, else 6 h).
    """
    if os.environ.get("SLURM_JOB_ID"):
        # SLURM already bound the job to its GPUs (or gave it none): a second allocator would only fight it.
        yield slurm_devices(os.environ)
        return
    pool = list(devices) if devices is not None else candidate_devices(os.environ, discover)
    if not pool:
        print("gpu: no GPU on this machine (or CUDA_VISIBLE_DEVICES hides them all): running on the CPU",
              file=sys.stderr)
        yield None
        return
    if cuda_started():
        # A slot could not steer this process any more (e.g. a second job called in-process, as tests do):
        # keep its devices, and say so, since in a workflow job it means CUDA was touched before the slot.
        print(f"gpu: CUDA was initialised in this process before the slot, which cannot change its device "
              f"now: no slot taken, running on the GPU(s) it already uses (of {','.join(pool)})", file=sys.stderr)
        yield ",".join(pool)
        return
    locks = Path(lock_dir if lock_dir is not None else os.environ.get(LOCK_DIR_ENV, DEFAULT_LOCK_DIR))
    wait = wait_s if wait_s is not None else float(os.environ.get(WAIT_ENV, DEFAULT_WAIT_S))
    device, handle = acquire_device(pool, locks, wait, poll_s)
    try:
        print(f"gpu: took GPU {device} of {','.join(pool)} (CUDA_VISIBLE_DEVICES={device}, "
              f"lock {lock_path(locks, device)})", file=sys.stderr)
        with visible_devices(device), environment(POOL_SIZE_ENV, str(len(pool))):
            yield device
    finally:
        release(handle)
        print(f"gpu: released GPU {device}", file=sys.stderr)


def gpu_job(job: Callable[P, R]) -> Callable[P, R]:
    """Run ``job`` holding a GPU slot (see ``gpu_slot``); put it on every job function of a ``gpu=1`` rule."""

    @functools.wraps(job)
    def holding_a_slot(*args: P.args, **kwargs: P.kwargs) -> R:
        with gpu_slot():
            return job(*args, **kwargs)

    return holding_a_slot
