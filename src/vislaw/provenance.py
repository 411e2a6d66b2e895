"""Code versions for rerun triggers.

Snakemake tracks a rule's own text and its ``script:`` file, not the library code that the script imports.
Each rule therefore takes ``code_hash(<modules it runs>)`` as a param: editing ``vislaw/law.py`` reruns the
fit and what depends on it, and nothing else.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

_PACKAGE_ROOT = Path(__file__).resolve().parent


def code_hash(*modules: str) -> str:
    """Short SHA-256 over the source of the named ``vislaw`` modules (``"law"``, ``"data.world"``, ...).

    A package name (a folder) hashes every ``.py`` file under it. Unknown names raise, so a rule cannot
    silently depend on nothing.
    """
    digest = hashlib.sha256()
    for module in sorted(set(modules)):
        for file in module_files(module):
            digest.update(file.relative_to(_PACKAGE_ROOT).as_posix().encode())
            digest.update(b"\0")
            digest.update(file.read_bytes())
            digest.update(b"\0")
    return digest.hexdigest()[:16]


def module_files(module: str) -> list[Path]:
    """The source files of ``vislaw.<module>``: its ``.py`` file, or every ``.py`` under a package folder.

    Unknown names raise KeyError."""
    base = _PACKAGE_ROOT.joinpath(*module.split("."))
    if base.with_suffix(".py").is_file():
        return [base.with_suffix(".py")]
    if base.is_dir():
        return sorted(base.rglob("*.py"))
    raise KeyError(f"code_hash: no module 'vislaw.{module}' under {_PACKAGE_ROOT}")
