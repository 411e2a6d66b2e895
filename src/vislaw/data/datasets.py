"""The image sets the workflow extracts features for, by name, and the records that go with them.

Every per-encoder job reads one of these sets from the feature cache, so their ids are fixed here once:
- ``spair_test``: the unique images of the SPair-format ``test`` split, id ``<category>/<imname>``;
- ``caption_train``: stage-1 image-caption pairs (their images also carry the stage-2 QA training split);
- ``caption_probe``: the held-out pairs of the A score;
- ``qa_test``: the images of every QA benchmark's test split.
Caption and QA images are identified by their path relative to the data folder (the records' ``image``
field), so a stage-2 conversation finds its image's features in the ``caption_train`` cache.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vislaw.data import spair

DATASETS = ("spair_test", "caption_train", "caption_probe", "qa_test")


@dataclass(frozen=True)
class ImageSet:
    name: str
    ids: tuple[str, ...]
    paths: tuple[Path, ...]


def read_records(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """A JSON list of records, with a clear error naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file does not exist")
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: malformed JSON: {err}") from None
    if not isinstance(records, list):
        raise ValueError(f"{path}: expected a JSON list of records")
    return records


CORPUS_FILE = "corpus.jsonl"  # the LM's pretraining text in a data folder: one JSON {"text": ...} per line


def write_corpus(path: str | os.PathLike[str], documents: list[str]) -> None:
    """Documents as JSON lines (a document may span lines: a multiple-choice turn does)."""
    Path(path).write_text("".join(json.dumps({"text": d}) + "\n" for d in documents), encoding="utf-8")


def read_corpus(path: str | os.PathLike[str]) -> list[str]:
    """The documents of a corpus file, with an error naming the file and line of a bad one."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: corpus file does not exist")
    documents = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            text = json.loads(line)["text"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise ValueError(f"{path}, line {number}: not a JSON object with a 'text' string") from None
        if not isinstance(text, str):
            raise ValueError(f"{path}, line {number}: 'text' is not a string")
        if text:
            documents.append(text)
    return documents


def caption_records(data_dir: str | os.PathLike[str], which: str) -> list[dict[str, Any]]:
    """``captions/<which>.json`` of a mini-world folder (which: ``train`` or ``probe``)."""
    return read_records(Path(data_dir) / "captions" / f"{which}.json")


def conversation_turns(turns: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """(prompt, answer) pairs of LLaVA ``conversations`` (``{"from", "value"}`` objects), in order, with the
    ``<image>`` placeholder taken out of the prompts (the visual tokens are already right after ``<s>``).
    Raises ValueError unless the turns alternate human, gpt."""
    roles = [t["from"] for t in turns]
    if len(roles) % 2 or roles != ["human", "gpt"] * (len(roles) // 2):
        raise ValueError(f"'conversations' should alternate 'human' and 'gpt' turns, starting with 'human' and "
                         f"ending with 'gpt'; got {roles}")
    return [(turns[i]["value"].replace("<image>\n", "").replace("<image>", "").strip(), turns[i + 1]["value"].strip())
            for i in range(0, len(turns), 2)]


def qa_test_records(data_dir: str | os.PathLike[str], skill: str) -> list[dict[str, Any]]:
    return read_records(Path(data_dir) / "qa" / skill / "test.json")


def qa_skills(data_dir: str | os.PathLike[str]) -> list[str]:
    """The QA benchmarks present in a mini-world folder (one folder per skill with a test split)."""
    return sorted(p.parent.name for p in (Path(data_dir) / "qa").glob("*/test.json"))


def image_set(data_dir: str | os.PathLike[str], dataset: str) -> ImageSet:
    """Ids and paths of ``dataset`` (one of :data:`DATASETS`) in a mini-world folder."""
    data_dir = Path(data_dir)
    if dataset == "spair_test":
        images = spair.split_images(data_dir / "spair", "test")
        return ImageSet(dataset, tuple(i.key for i in images), tuple(i.path for i in images))
    if dataset in ("caption_train", "caption_probe"):
        records = caption_records(data_dir, dataset.split("_")[1])
        return ImageSet(dataset, tuple(r["image"] for r in records), tuple(data_dir / r["image"] for r in records))
    if dataset == "qa_test":
        seen: dict[str, Path] = {}
        for skill in qa_skills(data_dir):
            for record in qa_test_records(data_dir, skill):
                seen.setdefault(record["image"], data_dir / record["image"])
        return ImageSet(dataset, tuple(seen), tuple(seen.values()))
    raise KeyError(f"unknown dataset {dataset!r}; known: {DATASETS}")
