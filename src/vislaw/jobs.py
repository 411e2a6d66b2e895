"""One function per workflow job: each composes the library's pieces and writes its outputs atomically.

The Snakemake adapters in ``workflow/scripts/`` only unpack ``snakemake.input/params/output`` and call one
of these, so every job can also be run (and tested) from Python.
"""

from __future__ import annotations

import contextlib
import os
import platform
import sys
from collections.abc import Iterator, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

import vislaw
from vislaw.commands import fill
from vislaw.data import spair
from vislaw.data.datasets import conversation_turns, image_set
from vislaw.encoders.spec import EncoderSpec, spec_for_dataset
from vislaw.features import CachedRows, extract_to_h5, extraction_protocol, fingerprint_files, open_cache
from vislaw.gpu import cpu_share, gpu_job
from vislaw.io import write_json
from vislaw.loader import default_workers
from vislaw.scores.correspondence import CorrespondenceProtocol, score_spair

if TYPE_CHECKING:
    from vislaw.train import TrainConfig


def device_for_job() -> torch.device:
    """CUDA when the job sees a GPU, else the CPU; said in the log either way."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "<unset>")
    if device.type == "cuda":
        print(f"device: cuda ({torch.cuda.get_device_name(0)}), CUDA_VISIBLE_DEVICES={visible}", file=sys.stderr)
    else:
        print(f"device: cpu (no GPU visible; CUDA_VISIBLE_DEVICES={visible})", file=sys.stderr)
    return device


def versions() -> dict[str, str]:
    return {"vislaw": vislaw.__version__, "torch": str(torch.__version__), "python": platform.python_version()}


@gpu_job
def extract_features(spec: Mapping[str, Any], data_dir: str, outputs: Mapping[str, str], batch_size: int) -> None:
    """Rule extract_features: one encoder's caches, ``outputs`` mapping image-set name -> HDF5 path."""
    from vislaw.encoders import create_encoder

    device = device_for_job()
    encoder_spec = EncoderSpec.from_dict(spec)
    encoder = create_encoder(encoder_spec)  # built once, reused for every image set
    for dataset, out_h5 in outputs.items():
        images = image_set(data_dir, dataset)
        print(f"{dataset}: {len(images.ids)} images", file=sys.stderr)
        # decoding threads beside the model: as many as the job's torch threads, so a CPU job stays in
        # its share of the cores; on a GPU, worker processes on its share of the usable CPUs (divided among
        # the machine's GPU slots, as several extractions may run at once) less two. VISLAW_COMPILE:
        # torch.compile mode on a GPU ("auto": from features.COMPILE_MIN_IMAGES images on; "off": never).
        # VISLAW_DECODER: "pil" (default) or "device" (JPEGs decoded on the GPU by nvJPEG: other rounding,
        # see features.extract_to_h5).
        loaders = max(1, torch.get_num_threads()) if device.type == "cpu" else default_workers(cpu_share())
        compile_mode = os.environ.get("VISLAW_COMPILE", "auto")
        extract_to_h5(spec_for_dataset(encoder_spec, dataset), images.paths, out_h5, image_ids=images.ids,
                      batch_size=batch_size, device=device, encoder=encoder, loader_threads=loaders,
                      compile_mode=None if compile_mode in ("", "off", "none", "0") else compile_mode,
                      decoder=os.environ.get("VISLAW_DECODER", "pil"))


def expected_protocol(spec: Mapping[str, Any], data_dir: str, dataset: str) -> dict[str, Any]:
    """The extraction protocol a reader of (encoder, dataset) must find in the cache."""
    images = image_set(data_dir, dataset)
    return extraction_protocol(spec_for_dataset(EncoderSpec.from_dict(spec), dataset),
                               fingerprint_files(images.paths, images.ids))


@gpu_job
def c_score(spec: Mapping[str, Any], data_dir: str, features_h5: str, protocol: Mapping[str, Any],
            out_json: str) -> None:
    """Rule c_score: PCK on the SPair-format test pairs from the cached features."""
    c_protocol = CorrespondenceProtocol(**{k: tuple(v) if k == "alphas" else v for k, v in protocol.items()})
    pairs = spair.load_pairs(Path(data_dir) / "spair", "test")
    with open_cache(features_h5, expected_protocol(spec, data_dir, "spair_test")) as cache:
        features = cache.read(cache.image_ids)
        extraction, grid, ids = cache.protocol, cache.grid, cache.image_ids
    record = score_spair(features, ids, grid, pairs, c_protocol, device=device_for_job())
    record["protocol"] = {
        "c_score": {**asdict(c_protocol), "keypoint_frame": "pad", "split": "test",
                    "averaging": "per-image PCK, mean per category, pairs-weighted over categories"},
        "extraction": extraction,
    }
    record["versions"] = versions()
    print(f"C = PCK@{c_protocol.alphas[0]:g} = {record['C']:.2f} over {record['n_pairs']} pairs", file=sys.stderr)
    write_json(out_json, record)


@gpu_job
def pretrain_encoder(objective: str, world_dir: str, settings: Mapping[str, Any], out_dir: str) -> None:
    """Rule pretrain_encoder: one mini-zoo encoder trained on the world (or its seeded random init)."""
    from vislaw.zoo import train_encoder

    record = train_encoder(objective, world_dir, out_dir, settings)
    curve = record["loss_curve"]
    loss = f"loss {curve[0][1]:.3f} -> {curve[-1][1]:.3f}, " if curve else ""
    print(f"pretrain_encoder: {objective}, {loss}{record['train_seconds']:.1f} s", file=sys.stderr)


@gpu_job
def pretrain_llm(data_dir: str, settings: Mapping[str, Any], out_dir: str) -> None:
    """Rule pretrain_llm: tokenizer + tiny Llama on the world's corpus, saved as a Hugging Face folder."""
    from vislaw.llm import PretrainConfig, TinyLlamaConfig
    from vislaw.llm import pretrain_llm as train

    model_keys = set(TinyLlamaConfig.__dataclass_fields__)
    model = TinyLlamaConfig(**{k: v for k, v in settings.items() if k in model_keys})
    schedule = PretrainConfig(**{k: v for k, v in settings.items() if k not in model_keys})
    from vislaw.data.datasets import CORPUS_FILE, read_corpus

    corpus = read_corpus(Path(data_dir) / CORPUS_FILE)
    losses = train(corpus, out_dir, model, schedule)
    print(f"pretrain_llm: {len(corpus)} documents, loss {losses[0]:.3f} -> {losses[-1]:.3f}", file=sys.stderr)


def _cached_tokens(spec: Mapping[str, Any], data_dir: str, dataset: str, features_h5: str,
                   image_ids: list[str]) -> torch.Tensor:
    from vislaw.features import read_features

    return torch.from_numpy(read_features(features_h5, image_ids, expected_protocol(spec, data_dir, dataset)))


@contextlib.contextmanager
def _cached_rows(spec: Mapping[str, Any], data_dir: str, dataset: str, features_h5: str,
                 image_ids: list[str]) -> Iterator[CachedRows]:
    """The cache's rows for ``image_ids`` while the file is open (stage 1 and 2; `CachedRows` says when it reads)."""
    with open_cache(features_h5, expected_protocol(spec, data_dir, dataset)) as cache:
        yield CachedRows(cache, image_ids)


def command_fields(spec: Mapping[str, Any]) -> dict[str, str]:
    """Template fields that name the encoder in external commands: ``$encoder`` (its config key) and
    ``$vision_tower`` (its weights; for a concatenation its parts' weights joined by '+', since a
    concatenation has no weights of its own)."""
    parts = spec.get("parts") or []
    tower = spec.get("weights") or "+".join(str(part.get("weights") or "") for part in parts)
    return {"encoder": str(spec.get("name") or ""), "vision_tower": tower}


def run_external(command: str) -> None:
    """Run a user's command (a shell line); its output goes to this job's log as it comes, and failure fails the
    job with the output's last lines in the error.

    Streamed, not collected: a trainer that runs for days logs its losses as it goes, and a job killed at its
    time limit or out of memory keeps what was printed.
    """
    import collections
    import subprocess

    print(f"external command: {command}", file=sys.stderr, flush=True)
    tail: collections.deque[str] = collections.deque(maxlen=40)
    with subprocess.Popen(command, shell=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          errors="replace", bufsize=1) as proc:
        for line in proc.stdout:
            sys.stderr.write(line)
            sys.stderr.flush()
            tail.append(line)
    if proc.returncode != 0:
        last = "".join(tail)[-2000:]
        raise RuntimeError(f"external command failed with exit status {proc.returncode}: {command}\n{last}")


def _to_job_device(*modules: torch.nn.Module) -> None:
    """The LM and projectors onto the job's device (its GPU slot's, or the CPU): batches of cached features
    follow them there (`vislaw.train.build_batch`)."""
    device = device_for_job()
    for module in modules:
        module.to(device)


def _resolved(config: TrainConfig, llm: torch.nn.Module, section: str) -> TrainConfig:
    """``config`` with its precision resolved for the LM's device, so the record says what ran."""
    from dataclasses import replace

    from vislaw.train import resolve_precision

    device = next(llm.parameters()).device
    return replace(config, precision=resolve_precision(config.precision, device, f"{section}.precision"))


@gpu_job
def train_projector(spec: Mapping[str, Any], data_dir: str, llm_dir: str, features_h5: str,
                    settings: Mapping[str, Any], out_pt: str) -> None:
    """Rule train_projector: the stage-1 projector of one encoder (built in, or an external command)."""
    if settings.get("command") and (int(settings.get("pool", 1)) != 1 or settings.get("pool_grid")):
        raise ValueError("stage1.pool: LLaVA's mm_projector.bin has no token pooling; set pool to 1 (and no "
                         "pool_grid) with stage1.command")
    if settings.get("pool_grid") and int(settings.get("pool", 1)) != 1:
        raise ValueError("stage1.pool_grid: give pool (a stride for every encoder) or pool_grid (a stride per "
                         "encoder), not both")
    if settings.get("command") and settings.get("projector", "mlp2x_gelu") != "mlp2x_gelu":
        raise ValueError("stage1.projector: LLaVA's mm_projector.bin is an mlp2x_gelu; set projector to "
                         "mlp2x_gelu with stage1.command")

    from vislaw.data.datasets import caption_records
    from vislaw.llm import load_llm
    from vislaw.train import save_projector

    llm, tokenizer = load_llm(llm_dir, key="llm.weights")
    records = caption_records(data_dir, "train")
    with _cached_rows(spec, data_dir, "caption_train", features_h5, [r["image"] for r in records]) as features:
        projector, record = _stage1(spec, data_dir, llm_dir, llm, tokenizer, records, features, settings, out_pt)
    save_projector(out_pt, projector, record)


def _stage1(spec: Mapping[str, Any], data_dir: str, llm_dir: str, llm: torch.nn.Module, tokenizer: Any,
            records: list[dict[str, Any]], features: CachedRows, settings: Mapping[str, Any],
            out_pt: str) -> tuple[Any, dict[str, Any]]:
    """`train_projector`'s projector and record, from the open caption cache (only its width, for a command)."""
    import tempfile

    from vislaw.train import TrainConfig, pool_stride, projector_from_llava
    from vislaw.train import train_projector as fit

    record: dict[str, Any] = {"encoder": dict(spec), "llm": llm_dir, "pairs": len(records), "versions": versions()}
    command = settings.get("command")
    if command:
        # The official LLaVA pretraining script, or any command that writes an mm_projector.bin.
        with tempfile.TemporaryDirectory(dir=Path(out_pt).parent) as work:
            line = fill("stage1.command", command, weights=spec.get("weights") or "", image_size=spec["image_size"],
                        output_dir=work, data_dir=data_dir, llm=llm_dir, **command_fields(spec))
            run_external(line)
            produced = Path(work) / "mm_projector.bin"
            if not produced.is_file():
                raise FileNotFoundError(f"stage1.command: produced no {produced.name} in its output_dir")
            projector = projector_from_llava(str(produced), features.shape[-1],
                                             llm.get_input_embeddings().embedding_dim)
        record.update({"mode": "external", "command": line, "loss": []})
    else:
        _to_job_device(llm)
        config = _resolved(TrainConfig(**{k: v for k, v in settings.items()
                                          if k not in ("command", "pool", "pool_grid", "projector")}), llm, "stage1")
        pool = pool_stride(features.shape[1], settings.get("pool_grid")) if settings.get("pool_grid") \
            else int(settings.get("pool", 1))
        kind = settings.get("projector", "mlp2x_gelu")
        projector, losses = fit(llm, tokenizer, features, [r["caption"] for r in records], config, pool=pool,
                                norm=kind == "ln_mlp2x_gelu")
        record.update({"mode": "builtin", "config": asdict(config), "pool": pool, "projector": kind,
                       "loss": losses})
        print(f"stage 1: loss {losses[0]:.3f} -> {losses[-1]:.3f} in {len(losses)} steps", file=sys.stderr)
    return projector, record


@gpu_job
def a_score(spec: Mapping[str, Any], data_dir: str, llm_dir: str, projector_pt: str, features_h5: str,
            settings: Mapping[str, Any], out_json: str, references: Mapping[str, Mapping[str, str]] | None = None) -> None:
    """Rule a_score: A of one encoder on the probe pairs, ``caption_loglik`` (v3) or ``cosine_to_reference``.

    ``references`` (cosine only): reference name -> {"spec", "projector", "features"}.
    """
    from vislaw.data.datasets import caption_records
    from vislaw.llm import load_llm
    from vislaw.scores.alignment import cosine_to_reference
    from vislaw.train import caption_loglik, load_projector

    method = settings["method"]
    records = caption_records(data_dir, "probe")
    if len(records) < settings["n_probe"]:  # a probe file given by the user can hold fewer than asked
        raise ValueError(f"a_score.n_probe: {settings['n_probe']} probe pairs asked, but the probe set "
                         f"(captions/probe.json of {data_dir}) holds {len(records)}")
    records = records[: settings["n_probe"]]
    ids = [r["image"] for r in records]
    projector, projector_record = load_projector(projector_pt)
    features = _cached_tokens(spec, data_dir, "caption_probe", features_h5, ids).float()
    out: dict[str, Any] = {"n_probe": len(records)}
    if method == "caption_loglik":
        llm, tokenizer = load_llm(llm_dir, key="llm.weights")
        _to_job_device(llm, projector)
        per_pair = caption_loglik(llm, projector, tokenizer, features, [r["caption"] for r in records])
        # one probe pair has no spread (torch's std of one value is NaN, which JSON cannot hold)
        spread = float(per_pair.std()) if len(per_pair) > 1 else None
        out.update({"A": float(per_pair.mean()), "per_pair_std": spread})
    elif method == "cosine_to_reference":
        with torch.inference_mode():
            targets = list(projector(features))
            refs = {}
            for name, ref in (references or {}).items():
                ref_projector, _ = load_projector(ref["projector"])
                ref_tokens = _cached_tokens(ref["spec"], data_dir, "caption_probe", ref["features"], ids).float()
                refs[name] = list(ref_projector(ref_tokens))
        result = cosine_to_reference(targets, refs)
        out.update({"A": result["A"], "components": result["components"]})
    else:
        raise ValueError(f"a_score.method: unknown method {method!r}")
    # 'external': a trainer that framed its images its own way (LLaVA's image processor), while the probe's tokens
    # are vislaw's cache, framed as the entry's caption_frame says: the record lets a reader check they agree
    out["protocol"] = {"a_score": {**dict(settings), "probe": "captions/probe.json", "log": "natural"},
                       "llm": llm_dir, "projector": projector_pt,
                       "projector_trained": projector_record.get("mode", "builtin")}
    out["versions"] = versions()
    print(f"A ({method}) = {out['A']:.4f} over {len(records)} probe pairs", file=sys.stderr)
    write_json(out_json, out)


def _qa_turns(record: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(prompt, answer) turns of one stage-2 record (`conversation_turns`), its id named if they do not
    alternate."""
    try:
        return conversation_turns(record["conversations"])
    except ValueError as err:
        raise ValueError(f"qa/instruct_train.json, record {record.get('id')!r}: {err}") from None


@gpu_job
def train_mllm(spec: Mapping[str, Any], data_dir: str, llm_dir: str, projector_pt: str, features_h5: str,
               settings: Mapping[str, Any], out_dir: str) -> None:
    """Rule train_mllm: stage 2 (projector + LM) on the instruction data, from the stage-1 projector."""
    from vislaw.data.datasets import read_records
    from vislaw.llm import load_llm
    from vislaw.train import TrainConfig, load_projector, save_mllm
    from vislaw.train import train_mllm as fit

    command = settings.get("command")
    if command:
        from vislaw.io import atomic_dir
        from vislaw.train import projector_to_llava

        # The command writes into a staged folder that becomes out_dir only once it has succeeded: a 7B
        # trainer killed mid-save must not leave a half-written model under the name evaluate reads.
        with tempfile_dir(Path(out_dir).parent) as work, atomic_dir(out_dir) as staged:
            # LLaVA's finetune script starts from an mm_projector.bin (--pretrain_mm_mlp_adapter), not from
            # vislaw's projector file: hand it the same weights in LLaVA's format when the command asks.
            llava_projector = str(Path(work) / "mm_projector.bin")
            if "llava_projector" in command:
                projector_to_llava(projector_pt, llava_projector)
            line = fill("stage2.command", command, weights=spec.get("weights") or "", image_size=spec["image_size"],
                        output_dir=staged, data_dir=data_dir, llm=llm_dir, projector=projector_pt,
                        llava_projector=llava_projector, **command_fields(spec))
            run_external(line)
            if not any(staged.iterdir()):
                raise FileNotFoundError(f"stage2.command: wrote nothing to its output_dir (for {out_dir})")
        return
    records = read_records(Path(data_dir) / "qa" / "instruct_train.json")
    llm, tokenizer = load_llm(llm_dir, key="llm.weights")
    projector, _ = load_projector(projector_pt)
    _to_job_device(llm, projector)
    config = _resolved(TrainConfig(**{k: v for k, v in settings.items() if k != "command"}), llm, "stage2")
    with _cached_rows(spec, data_dir, "caption_train", features_h5, [r["image"] for r in records]) as features:
        losses = fit(llm, projector, tokenizer, features, [_qa_turns(r) for r in records], config)
    print(f"stage 2: loss {losses[0]:.3f} -> {losses[-1]:.3f} in {len(losses)} steps", file=sys.stderr)
    save_mllm(out_dir, llm, tokenizer, projector,
              {"encoder": dict(spec), "config": asdict(config), "loss": losses, "conversations": len(records),
               "versions": versions()})


@gpu_job
def evaluate(spec: Mapping[str, Any], data_dir: str, mllm_dir: str, features_h5: str, benchmark: str,
             settings: Mapping[str, Any], out_json: str) -> None:
    """Rule evaluate: one benchmark of one trained MLLM; built-in multiple choice or an external command.

    Built in: the likelihood of each option (its letter, or its text where the record's ``answer_format`` is
    ``option``) after the image and the prompt (the prediction is the most likely), and the exact match of
    the greedy answer; ``score`` is the first (x100).
    """
    import json

    command = settings.get("command")
    if command:
        with tempfile_dir(Path(out_json).parent) as work:
            line = fill("evaluation.command", command, model=mllm_dir, task=benchmark, output_dir=work,
                        encoder=command_fields(spec)["encoder"])
            run_external(line)
            metric = settings.get("metric")
            if isinstance(metric, Mapping):  # one metric per benchmark (lmms-eval tasks report different ones)
                metric = metric.get(benchmark)
            record = parse_external_result(work, benchmark, metric)
    else:
        from vislaw.data.datasets import qa_test_records
        from vislaw.train import generate_answers, load_mllm, score_options

        records = qa_test_records(data_dir, benchmark)
        llm, tokenizer, projector = load_mllm(mllm_dir)
        _to_job_device(llm, projector)
        features = _cached_tokens(spec, data_dir, "qa_test", features_h5, [r["image"] for r in records]).float()
        # What the prompt asks for: the option's letter (LLaVA-1.5, the default) or its text (the mini-world)
        by_text = [r.get("answer_format", "letter") == "option" for r in records]
        candidates = [list(r["options"]) if text else [chr(ord("A") + i) for i in range(len(r["options"]))]
                      for r, text in zip(records, by_text)]
        prompts = [r["prompt"] for r in records]
        likelihoods = score_options(llm, projector, tokenizer, features, prompts, candidates)
        predicted = [max(range(len(v)), key=v.__getitem__) for v in likelihoods]
        correct = [p == r["answer"] for p, r in zip(predicted, records)]
        longest = max(len(tokenizer(c, add_special_tokens=False)["input_ids"]) for cs in candidates for c in cs)
        answers = generate_answers(llm, projector, tokenizer, features, prompts, max_new_tokens=longest + 1)
        exact = [a == cs[r["answer"]] for a, cs, r in zip(answers, candidates, records)]
        chance = sum(1 / len(r["options"]) for r in records) / len(records)
        record = {
            "score": 100.0 * sum(correct) / len(records),
            "metric": "option likelihood accuracy (%)",
            "exact_match": 100.0 * sum(exact) / len(records),
            "chance": 100.0 * chance,
            "n": len(records),
            "predictions": [{"id": r["id"], "predicted": p, "answer": r["answer"], "generated": a}
                            for r, p, a in zip(records, predicted, answers)],
        }
    record.update({"benchmark": benchmark, "mllm": mllm_dir, "versions": versions()})
    print(f"{benchmark}: score {record['score']:.2f}", file=sys.stderr)
    write_json(out_json, json.loads(json.dumps(record)))


def tempfile_dir(parent: Path):
    import tempfile

    parent.mkdir(parents=True, exist_ok=True)
    return tempfile.TemporaryDirectory(dir=parent)


def parse_external_result(work: str, task: str, metric: str | None) -> dict[str, Any]:
    """The score of an lmms-eval run: its ``results`` JSON (``{"results": {task: {metric: value}}}``)."""
    import json

    files = sorted(Path(work).rglob("*results*.json"))
    if not files:
        raise FileNotFoundError(f"evaluation.command wrote no *results*.json under its output_dir for {task}")
    data = json.loads(files[-1].read_text())
    results = data.get("results", {}).get(task)
    if results is None:
        raise KeyError(f"{files[-1]}: no results for task {task!r} (tasks: {sorted(data.get('results', {}))})")
    if metric is None:
        numbers = {k: v for k, v in results.items() if isinstance(v, (int, float)) and "stderr" not in k}
        if len(numbers) != 1:
            raise KeyError(f"{files[-1]}: task {task!r} has metrics {sorted(numbers)}; set evaluation.metric")
        metric, value = next(iter(numbers.items()))
    else:
        if metric not in results:
            raise KeyError(f"{files[-1]}: task {task!r} has no metric {metric!r} (has {sorted(results)})")
        value = results[metric]
    return {"score": float(value), "metric": metric, "raw_results": results}
