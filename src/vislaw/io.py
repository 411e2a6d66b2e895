"""Atomic writes: every output is written to a temporary sibling and renamed into place.

An interrupted job therefore leaves either the old file or none, never a truncated one, and a rerun starts
cleanly (Snakemake also deletes outputs of failed jobs, but a killed process gets no chance to clean up).
The temporary files and folders are created owner-only (``mkstemp``, ``mkdtemp``); before the rename they get
the mode a plain ``open`` or ``mkdir`` would have given them under the process's umask, so results stay
readable to the group and others as the user's umask allows (a shared cluster folder, a report server).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # only the annotation: pandas costs every job 0.17 s to import, and most write no CSV
    import pandas as pd


def _umask() -> int:
    """The process's umask: from /proc where Linux shows it (reading it with os.umask means setting it, which
    another thread creating a file at that moment would see)."""
    with contextlib.suppress(OSError, ValueError, StopIteration):
        status = Path("/proc/self/status").read_text().splitlines()
        return int(next(line for line in status if line.startswith("Umask:")).split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _public(path: Path, mode: int) -> None:
    """Give ``path`` the ``mode`` (0o666 files, 0o777 folders) less the umask, as open/mkdir would."""
    os.chmod(path, mode & ~_umask())


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` only if the block succeeds.

    The temporary name keeps the final suffix so that writers choosing a format by suffix (matplotlib,
    h5py users) behave as for the final file.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=f".tmp{final.suffix}", dir=final.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        _public(tmp, 0o666)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text(path: str | os.PathLike[str], text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n")


def write_csv(path: str | os.PathLike[str], frame: pd.DataFrame, float_format: str = "%.10g") -> None:
    """Write a frame without its index; floats with 10 significant digits (stable across reruns)."""
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False, float_format=float_format)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield an empty temporary folder next to ``path``; it replaces ``path`` only if the block succeeds.

    An existing ``path`` is moved aside before the new folder is renamed in, so at no moment is a
    half-written folder visible under the final name.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    try:
        yield tmp
        _public(tmp, 0o777)
        if final.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".old", dir=final.parent))
            os.replace(final, old / final.name)
            os.replace(tmp, final)
            shutil.rmtree(old)
        else:
            os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
