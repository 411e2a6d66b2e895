"""vislaw.provenance: the code hashes that make Snakemake rerun a rule when the library code it runs changes."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from vislaw.provenance import checkpoint_files, code_hash, module_files

RULES = Path(__file__).resolve().parents[1] / "rules"
# Writing helpers and job scheduling: editing them cannot change a result, so no rule reruns for them.
RESULT_NEUTRAL = {"io", "provenance", "gpu", "lazy"}
# One function per job: each rule names the modules its own function runs, not everything jobs.py imports.
HUB = "jobs"


def hashed_modules() -> dict[str, set[str]]:
    """rule name -> the modules named in its ``code_hash(...)`` param."""
    found: dict[str, set[str]] = {}
    for smk in sorted(RULES.glob("*.smk")):
        for block in re.split(r"^(?:rule|checkpoint) ", smk.read_text(), flags=re.M)[1:]:
            name = block.split(":", 1)[0].strip()
            call = re.search(r"code_hash\(([^)]*)\)", block)
            if call:
                found[name] = set(re.findall(r'"([\w.]+)"', call.group(1)))
    return found


def vislaw_imports(module: str) -> set[str]:
    """Every ``vislaw.X`` a module (or package) imports, function-local imports included."""
    out: set[str] = set()
    for file in module_files(module):
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("vislaw"):
                parts = node.module.split(".")[1:]
                if parts:
                    out.add(".".join(parts))
                else:  # from vislaw import X
                    out.update(alias.name for alias in node.names)
            elif isinstance(node, ast.Import):
                out.update(a.name.split(".", 1)[1] for a in node.names if a.name.startswith("vislaw."))
    return out


def covered(module: str, named: set[str]) -> bool:
    """A named package covers its submodules; a named submodule covers its package's ``__init__`` not."""
    return any(module == n or module.startswith(n + ".") for n in named)


def import_closure(named: set[str]) -> set[str]:
    seen, todo = set(), [m for m in named if m != HUB]
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        for imported in vislaw_imports(module):
            if imported not in RESULT_NEUTRAL and _exists(imported):
                todo.append(imported)
    return seen


def _exists(module: str) -> bool:
    """``from vislaw.x import name`` also names functions (``name``), not only modules."""
    try:
        module_files(module)
    except KeyError:
        return False
    return True


def test_the_rules_hash_some_code() -> None:
    rules = hashed_modules()
    assert {"train_projector", "a_score", "train_mllm", "evaluate", "policy_round", "fit_law"} <= set(rules)


@pytest.mark.parametrize("rule", sorted(hashed_modules()))
def test_each_rule_hashes_every_module_its_modules_import(rule: str) -> None:
    # e.g. stage 2 runs vislaw.train, which loads the LM through vislaw.llm, which runs vislaw.tinyllama:
    # an edit to the attention there must rerun stage 2, so tinyllama has to be in stage 2's hash
    named = hashed_modules()[rule]
    missing = sorted(m for m in import_closure(named) if not covered(m, named))
    assert not missing, f"rule {rule}: code_hash{tuple(sorted(named))} misses {missing}"


def test_code_hash_changes_with_the_source_and_rejects_unknown_modules() -> None:
    assert code_hash("law") != code_hash("policy")
    assert code_hash("law", "policy") == code_hash("policy", "law", "law")
    with pytest.raises(KeyError, match="vislaw.no_such_module"):
        code_hash("no_such_module")


def test_checkpoint_files_are_the_files_a_load_reads(tmp_path: Path) -> None:
    folder = tmp_path / "vicuna"
    for name in ("config.json", "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
                 "tokenizer/tokenizer.model", ".snakemake_timestamp", ".cache/huggingface/download/x.lock"):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(name)
    assert checkpoint_files(folder) == [folder / "config.json", folder / "model-00001-of-00002.safetensors",
                                        folder / "model-00002-of-00002.safetensors",
                                        folder / "tokenizer" / "tokenizer.model"]
    assert checkpoint_files(folder / "config.json") == [folder / "config.json"]
    assert checkpoint_files(tmp_path / "missing") == []  # the rule's own input check names the path
