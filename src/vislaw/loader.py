"""Decoding and framing images in worker processes, into shared memory: extraction's loader on a GPU.

Threads cannot feed a GPU that runs a ViT-L at ~1,300 img/s: framing holds the GIL between PIL's C calls,
and with 16 framing threads beside them the thread that launches the model's kernels and the HDF5 writer
wait for the GIL too (run 1 on an H200: framing alone 1,159 img/s in 16 threads, end to end 620 img/s;
on a 2-core CPU one spinning Python thread makes framing 3x slower). Here each worker is its own
process, so framing contends for nothing in the process that drives the GPU.

- Workers are plain ``python -c`` subprocesses (not ``multiprocessing``: its spawn and forkserver start
  methods re-run the parent's ``__main__``, which for a Snakemake ``script:`` is the job itself). They
  import numpy, PIL and `vislaw.encoders.frame` only, so they start in a fraction of a second.
- Pixels go through one ``memfd`` (anonymous shared memory passed as a file descriptor; not ``/dev/shm``,
  which containers often cap at 64 MB), mapped by every worker: a ring of ``slots`` batch slots of
  (batch, 3, size, size) uint8. It grows when a call needs more, never shrinks.
- Each image is one task, a JSON line on a worker's stdin (images go round-robin over the workers); the
  worker frames it (`framed_pixels`, the same function as everywhere) into its place in the ring and
  answers one line on stdout: empty for done, ``E<error>`` otherwise. Workers run their tasks in order,
  so the parent reads each worker's answers in the order it sent the tasks: no dispatcher thread.
- `FramingPool.batches` keeps ``slots`` batches in flight; a batch's slot is refilled once its consumer
  asks for the next batch (the consumer copies the pixels out first).
- `framing_pool` keeps one pool per worker count alive for the process (extraction runs per image set
  and per encoder: workers start once); a pool whose call ended early (an error, an abandoned generator)
  still has answers in flight and is closed rather than reused.

Linux only (``os.memfd_create``); `available` says whether this host can run it.
"""

from __future__ import annotations

import atexit
import json
import mmap
import os
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

_WORKER = "from vislaw.loader import _worker_main; _worker_main()"


def available() -> bool:
    return hasattr(os, "memfd_create") and sys.platform.startswith("linux")


def default_workers(share: int = 1) -> int:
    """The CPUs this process may use, divided among ``share`` jobs that run beside it (one per GPU of the
    machine), less two (the thread driving the GPU and the HDF5 writer); 1 to 16."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    return max(1, min(16, cpus // max(1, share) - 2))


class FramingPool:
    """``workers`` framing processes sharing one ring of pixel slots (see the module's docstring)."""

    def __init__(self, workers: int) -> None:
        if not available():
            raise RuntimeError("framing worker processes need Linux (os.memfd_create)")
        self.fd = os.memfd_create("vislaw-frames")
        self.mapped = 0
        self.mm: mmap.mmap | None = None
        self.lock = threading.Lock()
        self.broken = False
        self._next = 0
        src = str(Path(__file__).resolve().parents[1])  # the directory holding the vislaw package
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            env[var] = "1"
        self.procs: list[subprocess.Popen[bytes]] = []
        try:
            for _ in range(max(1, workers)):
                self.procs.append(subprocess.Popen([sys.executable, "-c", _WORKER, str(self.fd)], stdin=subprocess.PIPE,
                                                   stdout=subprocess.PIPE, pass_fds=(self.fd,), env=env))
        except BaseException:
            self.close()
            raise

    @property
    def workers(self) -> int:
        return len(self.procs)

    def alive(self) -> bool:
        return not self.broken and bool(self.procs) and all(p.poll() is None for p in self.procs)

    def close(self) -> None:
        for proc in self.procs:
            try:
                if proc.stdin is not None:
                    proc.stdin.close()  # end of tasks: the worker exits
            except OSError:
                pass
        for proc in self.procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
        self.procs = []
        self.broken = True
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def _ring(self, nbytes: int) -> np.ndarray:
        if nbytes > self.mapped:
            os.ftruncate(self.fd, nbytes)
            self.mm = mmap.mmap(self.fd, nbytes)  # the old mapping goes when its last view does
            self.mapped = nbytes
        assert self.mm is not None
        return np.frombuffer(self.mm, dtype=np.uint8, count=nbytes)

    def batches(self, paths: Sequence[Path], batch_size: int, size: int, mode: str,
                slots: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
        """(first row, uint8 (n, 3, size, size) view of its slot) per batch, in order.

        A view is valid until the next batch is asked for: copy it out first. Raises RuntimeError naming the
        image when a worker cannot decode or frame one (or a worker died).
        """
        if slots is None:  # enough images in flight for every worker three times over
            slots = max(3, -(-3 * self.workers // batch_size))
        image_bytes = 3 * size * size
        ring = self._ring(slots * batch_size * image_bytes).reshape(slots, batch_size, 3, size, size)
        total = self.mapped
        starts = list(range(0, len(paths), batch_size))
        pending: deque[tuple[int, int, list[tuple[int, Path]]]] = deque()

        def submit(k: int) -> None:
            start, slot = starts[k], k % slots
            lines: dict[int, list[str]] = {}
            assigned = []
            for i, path in enumerate(paths[start : start + batch_size]):
                worker = self._next
                self._next = (worker + 1) % self.workers
                offset = (slot * batch_size + i) * image_bytes
                lines.setdefault(worker, []).append(json.dumps([total, offset, size, mode, str(path)]))
                assigned.append((worker, path))
            for worker, chunk in lines.items():
                stdin = self.procs[worker].stdin
                assert stdin is not None
                stdin.write(("\n".join(chunk) + "\n").encode())
                stdin.flush()
            pending.append((start, slot, assigned))

        submitted = 0
        try:
            while submitted < min(slots, len(starts)):
                submit(submitted)
                submitted += 1
            while pending:
                start, slot, assigned = pending[0]
                errors = []
                for worker, path in assigned:
                    stdout = self.procs[worker].stdout
                    assert stdout is not None
                    answer = stdout.readline()
                    if not answer:
                        code = self.procs[worker].poll()
                        raise RuntimeError(f"framing worker {self.procs[worker].pid} exited (code {code}) "
                                           f"while framing {path}")
                    if answer != b"\n":
                        errors.append(f"{path}: {answer[1:].decode(errors='replace').strip()}")
                pending.popleft()
                if errors:
                    raise RuntimeError(f"could not load/frame {len(errors)} image(s): " + "; ".join(errors[:3]))
                yield start, ring[slot, : len(assigned)]
                if submitted < len(starts):  # the slot just consumed takes the next batch
                    submit(submitted)
                    submitted += 1
        finally:
            if pending:  # answers still in flight would be read by the next call
                self.broken = True


_POOLS: dict[int, FramingPool] = {}
_POOLS_LOCK = threading.Lock()


class _Lease:
    def __init__(self, pool: FramingPool, shared: bool) -> None:
        self.pool, self.shared = pool, shared

    def __enter__(self) -> FramingPool:
        return self.pool

    def __exit__(self, *_: object) -> None:
        if self.shared:
            self.pool.lock.release()
            if self.pool.broken:
                self.pool.close()
        else:
            self.pool.close()


def framing_pool(workers: int) -> _Lease:
    """A pool of ``workers`` processes for one extraction (``with framing_pool(n) as pool``): the process's
    shared one, started on first use; a private one (closed after) if another thread holds the shared one."""
    with _POOLS_LOCK:
        pool = _POOLS.get(workers)
        if pool is None or not pool.alive():
            if pool is not None and not pool.lock.locked():
                pool.close()
            pool = _POOLS[workers] = FramingPool(workers)
        if pool.lock.acquire(blocking=False):
            return _Lease(pool, shared=True)
    return _Lease(FramingPool(workers), shared=False)


def start_pool(workers: int) -> None:
    """Start the shared pool of ``workers`` now (so that its start-up is not inside a timed call)."""
    with framing_pool(workers):
        pass


@atexit.register
def close_pools() -> None:
    """Close every shared pool (at exit; also callable, e.g. between tests)."""
    with _POOLS_LOCK:
        for pool in _POOLS.values():
            pool.close()
        _POOLS.clear()


def _worker_main() -> None:
    """A framing worker: tasks ``[ring bytes, offset, size, mode, path]`` on stdin, one answer line each."""
    from vislaw.encoders.frame import framed_pixels

    fd = int(sys.argv[1])
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    mm: mmap.mmap | None = None
    mapped = 0
    for line in stdin:
        try:
            total, offset, size, mode, path = json.loads(line)
            if total > mapped:
                mm, mapped = mmap.mmap(fd, total), total
            pixels = framed_pixels(path, size, mode)
            target = np.frombuffer(mm, dtype=np.uint8, count=3 * size * size, offset=offset)  # type: ignore[arg-type]
            np.copyto(target.reshape(3, size, size), pixels.transpose(2, 0, 1))
            stdout.write(b"\n")
        except Exception as err:  # noqa: BLE001 (the parent raises it, naming the image)
            stdout.write(b"E" + f"{type(err).__name__}: {err}".replace("\n", " ")[:500].encode() + b"\n")
        stdout.flush()


if __name__ == "__main__":
    _worker_main()
