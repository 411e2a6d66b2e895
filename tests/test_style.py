"""The workflow passes Snakemake's linter and is snakefmt-formatted (the catalog's CI checks)."""

from __future__ import annotations

import subprocess
import sys

from .conftest import REPO, copy_workflow, snakemake


def test_snakemake_lint_reports_nothing(tmp_path) -> None:
    workdir = copy_workflow(tmp_path)
    proc = snakemake(workdir, "--lint", check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # Lints are printed with exit status 0; only this line means there were none.
    assert "Congratulations, your workflow is in a good condition!" in proc.stdout + proc.stderr


def test_snakefmt_check() -> None:
    files = ["Snakefile", *sorted(str(p.relative_to(REPO)) for p in (REPO / "rules").glob("*.smk"))]
    proc = subprocess.run([sys.executable, "-m", "snakefmt", "--check", *files], cwd=REPO, capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_conda_envs_pin_the_same_versions_as_requirements() -> None:
    """Each rule group's conda env (envs/*.yaml) pins what requirements.txt pins: one tested environment."""
    import re

    import yaml

    pins = {}
    for line in (REPO / "requirements.txt").read_text().splitlines():
        name, _, version = line.partition("==")
        pins[name.strip().lower().replace("_", "-")] = version.strip()
    used = {m for smk in (REPO / "rules").glob("*.smk") for m in re.findall(r'"\.\./(envs/[\w.-]+\.yaml)"', smk.read_text())}
    assert used == {"envs/analysis.yaml", "envs/data.yaml", "envs/torch.yaml"}
    for env in sorted(used):
        spec = yaml.safe_load((REPO / env).read_text())
        entries = [d for d in spec["dependencies"] if isinstance(d, str)]
        entries += [p for d in spec["dependencies"] if isinstance(d, dict) for p in d["pip"]]
        for entry in entries:
            match = re.fullmatch(r"([A-Za-z0-9_.-]+)(==?)([\w.]+)", entry)
            if match is None or match.group(1) == "python":
                continue
            name = match.group(1).lower().replace("_", "-")
            assert pins.get(name) == match.group(3), (env, entry, pins.get(name))
