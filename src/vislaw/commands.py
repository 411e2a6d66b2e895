"""External commands (``stage1.command``, ``stage2.command``, ``evaluation.command``): the placeholders each may
use, checked when the workflow is planned, and filled in by the jobs.

A typo such as ``$llava_projetor`` in a 7B stage-2 command would otherwise surface only when stage 2 starts,
after extraction, stage 1, A, C and the policy have run, as a bare ``KeyError``. No torch here: the Snakefile
imports this module to check the config.
"""

from __future__ import annotations

import string

_ENCODER = ("encoder", "vision_tower")  # vislaw.jobs.command_fields
PLACEHOLDERS: dict[str, tuple[str, ...]] = {
    "stage1.command": ("weights", "image_size", "output_dir", "data_dir", "llm", *_ENCODER),
    "stage2.command": ("weights", "image_size", "output_dir", "data_dir", "llm", "projector", "llava_projector",
                       *_ENCODER),
    "evaluation.command": ("model", "task", "output_dir", "encoder"),
}


def check_command(key: str, command: str) -> None:
    """Raise ValueError naming config key ``key`` if ``command`` uses a placeholder its job does not fill."""
    template = string.Template(command)
    known = PLACEHOLDERS[key]
    if not template.is_valid():
        raise ValueError(f"config key '{key}': a '$' in {command!r} starts no placeholder (write $$ for a "
                         f"literal '$'); placeholders: {', '.join('$' + name for name in known)}")
    unknown = [name for name in template.get_identifiers() if name not in known]
    if unknown:
        raise ValueError(f"config key '{key}': unknown placeholder(s) {', '.join('$' + n for n in unknown)} in "
                         f"{command!r}; placeholders: {', '.join('$' + name for name in known)}")


def fill(key: str, command: str, **fields: object) -> str:
    """``command`` with its placeholders replaced; ``fields`` must be exactly ``key``'s placeholders."""
    if sorted(fields) != sorted(PLACEHOLDERS[key]):  # the job and PLACEHOLDERS must not drift apart
        raise TypeError(f"fill({key!r}): got fields {sorted(fields)}, expected {sorted(PLACEHOLDERS[key])}")
    check_command(key, command)
    return string.Template(command).substitute({name: str(value) for name, value in fields.items()})
