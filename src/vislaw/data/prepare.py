"""Your own data as a data folder: rule ``prepare_data`` turns the config's ``data:`` block (SPair-71k, image-
caption pairs, optional benchmarks and instruction data) into ``results/<name>/data/`` in the mini-world's
layout, so that every downstream rule and `vislaw.data.datasets.image_set` read it as they read the world.

Nothing large is copied. ``spair`` and the image folders are symbolic links; the caption, QA and instruction
records vislaw itself reads are JSON index files whose ``image`` paths are relative to the data folder, as in
the world. The files you named stay reachable under ``source/`` for external commands (LLaVA's trainers).
Layout and record formats: ``README.md`` in this folder.

Checks come in two steps, each naming the config key and, for a record, the file and the record's index:

- ``check_source`` (at DAG time, from ``rules/common.smk``): every named file and folder exists and SPair-71k
  has its layout. It reads no records, so ``snakemake -n`` stays fast on LLaVA's 558K captions.
- ``prepare_data`` (the job): every record's fields, the images vislaw reads and the SPair-71k test pairs.
"""

from __future__ import annotations

import json
import os
import string
import sys
import time
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from vislaw.data import spair
from vislaw.data.datasets import CORPUS_FILE, conversation_turns, write_corpus
from vislaw.data.text import mc_prompt
from vislaw.data.world import file_sha256, fingerprint
from vislaw.io import atomic_dir
from vislaw.provenance import code_hash

CAPTION_IMAGES = "images/captions"
INSTRUCT_IMAGES = "images/instruct"
QA_IMAGES = "images/qa"
SOURCE = "source"
MANIFEST = "manifest.json"
# RNG streams of the seeded draws, np.random.default_rng([seed, stream]): changing n_train never moves the probe.
PROBE_DRAW, TRAIN_DRAW = 1, 2
CAPTION_DEFAULTS: dict[str, Any] = {"probe": None, "n_probe": 100, "n_train": None, "seed": 0}
INSTRUCT_DEFAULTS: dict[str, Any] = {"image_root": None}
MAX_OPTIONS = len(string.ascii_uppercase)


class DataSourceError(ValueError):
    """A problem with the data a config names; the message names the config key, the file and the record."""


def caption_settings(data: Mapping[str, Any]) -> dict[str, Any]:
    """``data.captions`` with the schema's defaults (the workflow's validate() fills them; direct callers may not)."""
    return {**CAPTION_DEFAULTS, **data["captions"]}


def instruct_settings(data: Mapping[str, Any]) -> dict[str, Any] | None:
    return {**INSTRUCT_DEFAULTS, **data["instruct"]} if data.get("instruct") else None


# ------------------------------------------------------------------------------------------ DAG-time checks


def source_paths(data: Mapping[str, Any]) -> dict[str, str]:
    """Every file and folder the block names, by config key: the rule's inputs, so a change reruns it."""
    captions = caption_settings(data)
    paths = {
        "data.spair": str(data["spair"]),
        "data.spair/PairAnnotation/test": str(Path(data["spair"]) / "PairAnnotation" / "test"),
        "data.captions.train": str(captions["train"]),
        "data.captions.image_root": str(captions["image_root"]),
    }
    if captions["probe"]:
        paths["data.captions.probe"] = str(captions["probe"])
    instruct = instruct_settings(data)
    if instruct:
        paths["data.instruct.train"] = str(instruct["train"])
        if instruct["image_root"]:
            paths["data.instruct.image_root"] = str(instruct["image_root"])
    for name, entry in (data.get("qa") or {}).items():
        paths[f"data.qa.{name}.test"] = str(entry["test"])
        paths[f"data.qa.{name}.image_root"] = str(entry["image_root"])
    return paths


def check_source(data: Mapping[str, Any]) -> None:
    """Everything the block names exists, and ``data.spair`` is an SPair-71k folder with a test split.

    Reads no records (that is the job's work), so it costs a few ``stat`` calls.
    """
    try:
        spair.check_root(data["spair"])
    except spair.SpairError as err:
        raise DataSourceError(f"config key 'data.spair': {err}") from None
    for key, path in source_paths(data).items():
        if key.startswith("data.spair"):
            if not Path(path).is_dir():
                raise DataSourceError(f"config key 'data.spair': not an SPair-71k folder: {path} does not exist")
        elif key.endswith("image_root"):
            if not Path(path).is_dir():
                raise DataSourceError(f"config key '{key}': folder {path} does not exist")
        elif not Path(path).is_file():
            raise DataSourceError(f"config key '{key}': file {path} does not exist")


# ------------------------------------------------------------------------------------------ record readers


def _load_list(path: str | os.PathLike[str], key: str) -> list[Any]:
    """A JSON list; a malformed file names the line and column (JSON has no record index before it parses)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataSourceError(f"config key '{key}': file {path} does not exist") from None
    except UnicodeDecodeError as err:
        raise DataSourceError(f"config key '{key}': {path} is not UTF-8 text ({err})") from None
    try:
        records = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataSourceError(
            f"config key '{key}': {path}, line {err.lineno}, column {err.colno}: malformed JSON: {err.msg}"
        ) from None
    if not isinstance(records, list):
        raise DataSourceError(f"config key '{key}': {path} should hold a JSON list of records, not a "
                              f"{type(records).__name__}")
    if not records:
        raise DataSourceError(f"config key '{key}': {path} holds no records")
    return records


class _Where:
    """Names a record in errors: config key, file and index (counting from 0, as a JSON list does)."""

    def __init__(self, key: str, path: str | os.PathLike[str]) -> None:
        self.key, self.path = key, str(path)

    def error(self, index: int, problem: str) -> DataSourceError:
        return DataSourceError(f"config key '{self.key}': {self.path}, record [{index}]: {problem}")

    def record(self, index: int, record: Any) -> dict[str, Any]:
        if not isinstance(record, dict):
            raise self.error(index, f"should be a JSON object, not {type(record).__name__}")
        return record


def _image_path(value: Any, where: _Where, index: int, root_key: str) -> str:
    """A record's ``image``: a path relative to its image folder that cannot leave it."""
    if not isinstance(value, str) or not value.strip():
        raise where.error(index, f"'image' should be a path relative to {root_key}, got {value!r}")
    path = PurePosixPath(value.strip())
    if path.is_absolute() or ".." in path.parts:
        raise where.error(index, f"'image' {value!r} must be relative to {root_key}, without '..'")
    return path.as_posix()


def _text(value: Any, where: _Where, index: int, field: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise where.error(index, f"{field} should be a non-empty string, got {value!r}")
    return value.strip()


def _turns(record: dict[str, Any], where: _Where, index: int) -> list[dict[str, Any]]:
    """LLaVA's ``conversations``: objects with ``from`` (human or gpt) and a string ``value``."""
    turns = record.get("conversations")
    if not isinstance(turns, list) or not turns:
        raise where.error(index, f"'conversations' should be a list of turns, got {turns!r}")
    for t, turn in enumerate(turns):
        if not isinstance(turn, dict) or turn.get("from") not in ("human", "gpt") or not isinstance(
                turn.get("value"), str):
            raise where.error(index, f"conversations[{t}] should be {{'from': 'human' | 'gpt', 'value': <text>}}, "
                                     f"got {turn!r}")
    return turns


def read_captions(path: str | os.PathLike[str], key: str) -> list[dict[str, Any]]:
    """Image-caption records: LLaVA's pretraining format (``{"id", "image", "conversations": [human, gpt]}``,
    the caption being the first ``gpt`` turn, as in blip_laion_cc_sbu_558k.json) or ``{"image", "caption"}``.

    Returns ``{"index", "id", "image", "caption"}`` per record, ``image`` relative to the image folder.
    """
    where = _Where(key, path)
    root_key = f"{key.rsplit('.', 1)[0]}.image_root"
    out = []
    for index, raw in enumerate(_load_list(path, key)):
        record = where.record(index, raw)
        if "caption" in record:
            caption = _text(record["caption"], where, index, "'caption'")
        elif "conversations" in record:
            answers = [t["value"] for t in _turns(record, where, index) if t["from"] == "gpt"]
            if not answers:
                raise where.error(index, "'conversations' has no 'gpt' turn (the caption)")
            caption = _text(answers[0], where, index, "the caption (first 'gpt' turn)")
        else:
            raise where.error(index, "needs 'caption', or 'conversations' in LLaVA's format")
        out.append({"index": index, "id": str(record.get("id", index)),
                    "image": _image_path(record.get("image"), where, index, root_key), "caption": caption})
    return out


def read_conversations(path: str | os.PathLike[str], key: str, need_image: bool) -> list[dict[str, Any]]:
    """Instruction records in LLaVA's format (llava_v1_5_mix665k.json): ``{"id", "image"?, "conversations"}``
    whose turns alternate human, gpt (one or more question-answer turns; stage 2 learns every answer).
    ``need_image``: every record must have an image, for the built-in stage 2. Without it the data is for an
    external trainer, and the turns are not checked: LLaVA's own preprocessing drops a leading ``gpt`` turn,
    which some of its mix's text-only conversations have."""
    where = _Where(key, path)
    root_key = f"{key.rsplit('.', 1)[0]}.image_root"
    out = []
    for index, raw in enumerate(_load_list(path, key)):
        record = where.record(index, raw)
        turns = _turns(record, where, index)
        if need_image:
            try:
                conversation_turns(turns)
            except ValueError as err:
                raise where.error(index, str(err)) from None
        if "image" in record or need_image:
            image = _image_path(record.get("image"), where, index, root_key)
        else:
            image = None  # a text-only conversation (LLaVA's mix has some)
        out.append({"index": index, "id": str(record.get("id", index)), "image": image, "conversations": turns})
    return out


def read_multiple_choice(path: str | os.PathLike[str], key: str, benchmark: str) -> list[dict[str, Any]]:
    """Test records of a multiple-choice benchmark: ``{"id"?, "image", "question", "options": [...], "answer"}``,
    the answer an option index or its letter. Returns the world's test format (``qa/<skill>/test.json``) plus
    ``index``, with ``image`` still relative to the benchmark's image folder."""
    where = _Where(key, path)
    root_key = f"{key.rsplit('.', 1)[0]}.image_root"
    out = []
    for index, raw in enumerate(_load_list(path, key)):
        record = where.record(index, raw)
        question = _text(record.get("question"), where, index, "'question'")
        options = record.get("options")
        if (not isinstance(options, list) or not 2 <= len(options) <= MAX_OPTIONS
                or not all(isinstance(o, str) and o.strip() for o in options)):
            raise where.error(index, f"'options' should be a list of 2 to {MAX_OPTIONS} non-empty strings, "
                                     f"got {options!r}")
        options = [o.strip() for o in options]
        letters = string.ascii_uppercase[: len(options)]
        answer = record.get("answer")
        if isinstance(answer, int) and not isinstance(answer, bool) and 0 <= answer < len(options):
            answer_index = answer
        elif isinstance(answer, str) and len(answer.strip()) == 1 and answer.strip().upper() in letters:
            answer_index = letters.index(answer.strip().upper())
        else:
            raise where.error(index, f"'answer' should be an option index 0-{len(options) - 1} or a letter "
                                     f"{'/'.join(letters)}, got {answer!r}")
        out.append({"id": str(record.get("id", index)), "image": _image_path(record.get("image"), where, index,
                                                                            root_key),
                    "skill": benchmark, "question": question, "options": options, "answer": answer_index,
                    "answer_letter": letters[answer_index], "prompt": mc_prompt(question, options),
                    "index": index})
    return out


# ------------------------------------------------------------------------------------------ selection


def _draw(n_total: int, n: int, seed: int, stream: int, file_order: bool = True) -> list[int]:
    """``n`` distinct record indices, seeded (the same for every encoder and every rerun), in file order or in
    the order drawn (so that any first k of them are a random draw too)."""
    drawn = [int(i) for i in np.random.default_rng([seed, stream]).choice(n_total, size=n, replace=False)]
    return sorted(drawn) if file_order else drawn


def _check_unique_images(records: list[dict[str, Any]], where: _Where, what: str) -> None:
    # Feature caches key tokens by image path, so one image can carry one caption per set.
    seen: dict[str, int] = {}
    for record in records:
        first = seen.setdefault(record["image"], record["index"])
        if first != record["index"]:
            raise where.error(record["index"], f"repeats the image {record['image']!r} of record [{first}] in the "
                                               f"{what} set; vislaw keys features by image, one caption per image")


def _check_images_exist(records: list[dict[str, Any]], root: str | os.PathLike[str], where: _Where,
                        root_key: str) -> None:
    for record in records:
        path = Path(root) / record["image"]
        if not path.is_file():
            raise where.error(record["index"], f"image {path} does not exist ({root_key} + 'image')")


def caption_sets(data: Mapping[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]], int]:
    """vislaw's ``caption_train`` and ``caption_probe`` records (images checked) and the source's record count.

    caption_train: every record of ``data.captions.train``, or a seeded draw of ``n_train`` of them.
    caption_probe: the records of ``data.captions.probe``, or, as in the paper (100 random pairs of the stage-1
    caption data, the same for every encoder), a seeded draw of ``n_probe`` records of the training file.
    """
    captions = caption_settings(data)
    train_where = _Where("data.captions.train", captions["train"])
    source = read_captions(captions["train"], "data.captions.train")
    n_train = captions["n_train"]
    if n_train is not None and n_train > len(source):
        raise DataSourceError(f"config key 'data.captions.n_train': {n_train} records asked, but "
                              f"{captions['train']} holds {len(source)}")
    train = source if n_train is None else [source[i] for i in _draw(len(source), n_train, captions["seed"],
                                                                     TRAIN_DRAW)]
    if captions["probe"]:
        probe_where = _Where("data.captions.probe", captions["probe"])
        probe = read_captions(captions["probe"], "data.captions.probe")
    else:
        probe_where = train_where
        if captions["n_probe"] > len(source):
            raise DataSourceError(f"config key 'data.captions.n_probe': {captions['n_probe']} probe pairs asked, "
                                  f"but {captions['train']} holds {len(source)} records")
        # in the order drawn: A reads the probe's first a_score.n_probe pairs, which in file order would come
        # from the file's start whenever fewer are read than drawn
        probe = [source[i] for i in _draw(len(source), captions["n_probe"], captions["seed"], PROBE_DRAW,
                                          file_order=False)]
    for records, where, what in ((train, train_where, "caption_train"), (probe, probe_where, "caption_probe")):
        _check_unique_images(records, where, what)
        _check_images_exist(records, captions["image_root"], where, "data.captions.image_root")
    return train, probe, len(source)


# ------------------------------------------------------------------------------------------ the folder


def _link(link: Path, target: str | os.PathLike[str]) -> str:
    """A symbolic link to ``target``, made absolute: the link then works from any working directory (a SLURM
    node, a copy of the workflow). Moving the data means rerunning this rule, which is cheap."""
    resolved = Path(target).resolve()
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(resolved, target_is_directory=resolved.is_dir())
    return str(resolved)


def _dump_json(path: Path, obj: Any) -> None:
    # Inside the temporary build folder: the folder's rename is what makes the output atomic.
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1, sort_keys=True, allow_nan=False) + "\n", encoding="utf-8")


def _corpus(train: list[dict[str, Any]], instruct: list[dict[str, Any]]) -> list[str]:
    """Language-model text, one line each: the training captions, then every instruction turn."""
    lines = [" ".join(r["caption"].split()) for r in train]
    for record in instruct:
        for turn in record["conversations"]:
            text = " ".join(turn["value"].replace("<image>", " ").split())
            if text:
                lines.append(text)
    return lines


def _written_files(root: Path) -> list[Path]:
    """The regular files under ``root``, never descending into or hashing the links (SPair-71k, image folders)."""
    found = []
    for folder, _, names in os.walk(root):  # os.walk does not follow links to folders
        found += [Path(folder) / n for n in names if not (Path(folder) / n).is_symlink()]
    return sorted(found)


def prepare_data(outdir: str | os.PathLike[str], data: Mapping[str, Any]) -> dict[str, Any]:
    """Write the data folder of a ``data:`` block into ``outdir`` (replaced atomically); returns the manifest.

    Everything is read and checked before the folder is written, so a bad record fails the job with nothing
    left behind; errors are `DataSourceError` naming the config key, the file and the record index.
    """
    start = time.perf_counter()

    def progress(step: str) -> None:
        print(f"prepare_data: {step} after {time.perf_counter() - start:.1f} s", file=sys.stderr)

    check_source(data)
    captions = caption_settings(data)
    train, probe, n_source = caption_sets(data)
    progress(f"captions checked ({n_source} records; caption_train {len(train)}, caption_probe {len(probe)})")

    instruct = instruct_settings(data)
    instruct_records: list[dict[str, Any]] = []
    if instruct:
        with_caption_images = not instruct["image_root"]
        instruct_records = read_conversations(instruct["train"], "data.instruct.train", need_image=with_caption_images)
        if with_caption_images:
            # The built-in stage 2 reads each conversation's image from the caption_train feature cache.
            known = {r["image"] for r in train}
            where = _Where("data.instruct.train", instruct["train"])
            for record in instruct_records:
                if record["image"] not in known:
                    raise where.error(record["index"], f"image {record['image']!r} is not in the caption_train "
                                                       "set; without 'data.instruct.image_root' the conversations "
                                                       "must use the caption images, whose features stage 2 reads")
        progress(f"instruction data checked ({len(instruct_records)} conversations)")

    qa: dict[str, list[dict[str, Any]]] = {}
    for name, entry in (data.get("qa") or {}).items():
        key = f"data.qa.{name}.test"
        qa[name] = read_multiple_choice(entry["test"], key, name)
        _check_images_exist(qa[name], entry["image_root"], _Where(key, entry["test"]), f"data.qa.{name}.image_root")
    if qa:
        progress(f"benchmarks checked ({', '.join(f'{k}: {len(v)}' for k, v in qa.items())})")

    try:
        pairs = spair.load_pairs(data["spair"], "test")
    except spair.SpairError as err:
        raise DataSourceError(f"config key 'data.spair': {err}") from None
    if not pairs:
        raise DataSourceError(f"config key 'data.spair': {Path(data['spair']) / 'PairAnnotation' / 'test'} holds "
                              "no pair files")
    progress(f"SPair-71k test split checked ({len(pairs)} pairs)")

    with atomic_dir(outdir) as out:
        links = {"spair": _link(out / "spair", data["spair"]),
                 CAPTION_IMAGES: _link(out / CAPTION_IMAGES, captions["image_root"]),
                 f"{SOURCE}/captions_train.json": _link(out / SOURCE / "captions_train.json", captions["train"])}
        if captions["probe"]:
            links[f"{SOURCE}/captions_probe.json"] = _link(out / SOURCE / "captions_probe.json", captions["probe"])
        for which, records in (("train", train), ("probe", probe)):
            _dump_json(out / "captions" / f"{which}.json",
                       [{"id": r["id"], "image": f"{CAPTION_IMAGES}/{r['image']}", "caption": r["caption"],
                         "source_index": r["index"]} for r in records])
        counts: dict[str, Any] = {"caption_source": n_source, "caption_train": len(train), "caption_probe": len(probe),
                                  "qa": {}, "instruct": len(instruct_records)}

        if instruct:
            links[f"{SOURCE}/instruct_train.json"] = _link(out / SOURCE / "instruct_train.json", instruct["train"])
            if instruct["image_root"]:
                links[INSTRUCT_IMAGES] = _link(out / INSTRUCT_IMAGES, instruct["image_root"])
            else:
                _dump_json(out / "qa" / "instruct_train.json",
                           [{"id": r["id"], "image": f"{CAPTION_IMAGES}/{r['image']}",
                             "conversations": r["conversations"], "source_index": r["index"]}
                            for r in instruct_records])

        for name, records in qa.items():
            links[f"{QA_IMAGES}/{name}"] = _link(out / QA_IMAGES / name, data["qa"][name]["image_root"])
            _dump_json(out / "qa" / name / "test.json",
                       [{**{k: v for k, v in r.items() if k != "index"}, "image": f"{QA_IMAGES}/{name}/{r['image']}",
                         "source_index": r["index"]} for r in records])
            counts["qa"][name] = {"test": len(records)}

        corpus = _corpus(train, instruct_records if instruct and not instruct["image_root"] else [])
        write_corpus(out / CORPUS_FILE, corpus)
        counts["corpus_lines"] = len(corpus)
        counts["spair"] = {"test": {"pairs": len(pairs),
                                    "images": len({key for p in pairs for key in (p.src_key, p.trg_key)}),
                                    "categories": len({p.category for p in pairs})}}

        files = {path.relative_to(out).as_posix(): file_sha256(path) for path in _written_files(out)}
        entries = {**files, **{rel: f"-> {target}" for rel, target in links.items()}}
        manifest = {
            "generator": "vislaw.data.prepare",
            "code_hash": code_hash("data"),
            "params": json.loads(json.dumps(dict(data))),
            "counts": counts,
            "files": files,  # the index files written here, with their SHA-256
            "links": links,  # link -> the absolute path it points to
            "fingerprint": fingerprint(entries),
            "fingerprints": {part: fingerprint(entries, part + "/") for part in ("captions", "qa")},
        }
        _dump_json(out / MANIFEST, manifest)
        progress("data folder written")
    return manifest
