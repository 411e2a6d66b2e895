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


def test_conda_envs_install_this_checkout_from_the_copy_conda_makes(tmp_path) -> None:
    """Conda runs an env's pip section from a copy of the env file under .snakemake/conda: vislaw must be named by
    ``${VISLAW_ROOT}`` (set by the Snakefile to its folder), which pip expands, not by a relative path."""
    import os

    import yaml

    assert "os.environ.update(VISLAW_ROOT=workflow.basedir)" in (REPO / "Snakefile").read_text()
    conda_dir = tmp_path / ".snakemake" / "conda"
    conda_dir.mkdir(parents=True)
    lines = []
    for env in sorted((REPO / "envs").glob("*.yaml")):
        pip = [p for d in yaml.safe_load(env.read_text())["dependencies"] if isinstance(d, dict) for p in d["pip"]]
        own = [p for p in pip if p.startswith("-e")]
        assert own and all(p.split()[1].startswith("${VISLAW_ROOT}") for p in own), (env.name, own)
        lines += own
    (conda_dir / "requirements.txt").write_text("\n".join(lines) + "\n")
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--no-deps", "--no-index",
                           "--no-build-isolation", "-r", "requirements.txt"], cwd=conda_dir, capture_output=True,
                          text=True, env={**os.environ, "VISLAW_ROOT": str(REPO)})
    assert proc.returncode == 0 and "Would install vislaw" in proc.stdout, proc.stdout + proc.stderr
