"""The workflow passes Snakemake's linter and is snakefmt-formatted (the catalog's CI checks)."""

from __future__ import annotations

import subprocess
import sys

from .conftest import REPO, copy_workflow, snakemake


def test_snakemake_lint_reports_nothing(tmp_path) -> None:
    workdir = copy_workflow(tmp_path)
    proc = snakemake(workdir, "--lint", check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_snakefmt_check() -> None:
    files = ["Snakefile", *sorted(str(p.relative_to(REPO)) for p in (REPO / "rules").glob("*.smk"))]
    proc = subprocess.run([sys.executable, "-m", "snakefmt", "--check", *files], cwd=REPO, capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
