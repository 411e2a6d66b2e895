"""Code and weights versions for rerun triggers.

Snakemake tracks a rule's own text and its ``script:`` file, not the library code that the script imports.
Each rule therefore takes ``code_hash(<modules it runs>)`` as a param: editing ``vislaw/law.py`` reruns the
fit and what depends on it, and nothing else. A checkpoint folder given as an input is tracked by the
folder's own time, which saving files over old ones does not change; ``checkpoint_files`` lists the files
for the rules to take as inputs instead.
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


def checkpoint_files(path: str | Path) -> list[Path]:
    """The files a checkpoint loads from: the file itself, or every file under the folder, sorted, hidden ones
    (a download tool's metadata, a ``.snakemake_timestamp``) left out; none where nothing is there."""
    path = Path(path).expanduser()
    if path.is_file():
        return [path]
    if not path.is_dir():
        return []
    return sorted(p for p in path.rglob("*")
                  if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts))
