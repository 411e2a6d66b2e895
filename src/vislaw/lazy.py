"""Package attributes imported on first use (PEP 562).

The Snakefile imports ``vislaw.encoders`` and ``vislaw.zoo`` to plan the DAG, and every SLURM job plans it
again: their torch-dependent names are resolved only when something uses them, so planning needs no torch.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_getattr(package: str, sources: Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` that imports ``sources[name]`` (a module path) and returns its ``name``."""

    def __getattr__(name: str) -> Any:
        if name in sources:
            return getattr(importlib.import_module(sources[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
