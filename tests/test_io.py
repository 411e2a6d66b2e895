"""vislaw.io: outputs appear whole or not at all, with the modes the user's umask gives plain files."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from vislaw.io import atomic_dir, atomic_path, write_text


@pytest.fixture(params=[0o022, 0o027, 0o077])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    previous = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_files_get_the_mode_open_would_give_them(tmp_path: Path, umask: int) -> None:
    # mkstemp makes the temporary file 0600; under umask 022 the result must be 0644, as after open()
    write_text(tmp_path / "summary.md", "x\n")
    assert mode(tmp_path / "summary.md") == 0o666 & ~umask
    assert {0o022: 0o644, 0o027: 0o640, 0o077: 0o600}[umask] == mode(tmp_path / "summary.md")


def test_folders_get_the_mode_mkdir_would_give_them(tmp_path: Path, umask: int) -> None:
    with atomic_dir(tmp_path / "zoo" / "enc") as tmp:
        (tmp / "zoo.json").write_text("{}")
    assert mode(tmp_path / "zoo" / "enc") == 0o777 & ~umask
    assert {0o022: 0o755, 0o027: 0o750, 0o077: 0o700}[umask] == mode(tmp_path / "zoo" / "enc")


def test_a_failed_write_leaves_neither_output_nor_temporary(tmp_path: Path) -> None:
    final = tmp_path / "scores.json"
    with pytest.raises(RuntimeError), atomic_path(final) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_a_failed_folder_keeps_the_previous_one(tmp_path: Path) -> None:
    final = tmp_path / "llm"
    with atomic_dir(final) as tmp:
        (tmp / "weights").write_text("old")
    with pytest.raises(RuntimeError), atomic_dir(final) as tmp:
        (tmp / "weights").write_text("half")
        raise RuntimeError("killed")
    assert (final / "weights").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["llm"]
