"""Planning the workflow imports no torch: the Snakefile's imports stay light (every SLURM job re-plans)."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from .conftest import REPO


def test_the_modules_the_snakefile_imports_do_not_import_torch() -> None:
    common = (REPO / "rules" / "common.smk").read_text()
    modules = sorted(set(re.findall(r"^from (vislaw[\w.]*) import", common, re.M)))
    assert "vislaw.encoders" in modules and "vislaw.zoo" in modules
    code = ("import sys\n" + "".join(f"import {m}\n" for m in modules)
            + "heavy = sorted(m for m in ('torch', 'transformers', 'timm', 'statsmodels', 'h5py') if m in sys.modules)\n"
            + "print(','.join(heavy))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "", f"planning imports {proc.stdout.strip()}"


def test_lazy_names_resolve_on_first_use_and_unknown_names_raise() -> None:
    import vislaw.encoders
    import vislaw.zoo

    assert vislaw.zoo.train_encoder.__module__ == "vislaw.zoo.train"
    assert vislaw.encoders.frame_image.__module__ == "vislaw.encoders.frame"
    with pytest.raises(AttributeError, match="'vislaw.zoo' has no attribute 'nope'"):
        vislaw.zoo.nope  # noqa: B018
