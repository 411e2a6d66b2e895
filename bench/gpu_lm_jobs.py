"""The LM jobs (stage 1, A, stage 2, evaluation) of one encoder on the job's device, against a finished CPU run.

For a lent GPU machine, which has torch, transformers, h5py and pandas but not Snakemake: a smoke run made on
the CPU here travels with the working tree (`carry: [results/smoke]`, about 20 MB), and this script reruns one
encoder's LM jobs from its caches, through the same job functions the rules call, on the GPU. It prints, per
job, the device the job's log named, its seconds, and its figure beside the CPU run's (the A score, each
benchmark's accuracy). Stage 1 and 2 run in bf16 on either device (`precision: auto`), so the figures agree to
within training noise, not bit for bit; the point is that every job runs, and runs on the GPU. On the CPU it
gives the run's own figures to the digit (checked on a smoke run, 2026-12-07).

On the device (`run`): make the smoke run here (`snakemake --cores 2 --configfile presets/smoke.yaml`), then
`carry: ["results/smoke"]` and the command below with python3; the machine's torch and transformers are older
than requirements.txt's pins, and nothing else needs installing.

    PYTHONPATH=src python bench/gpu_lm_jobs.py --results results/smoke --preset presets/smoke.yaml --out "$OUT"
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import re
import sys
import time
from pathlib import Path

import torch
import yaml

from vislaw import jobs
from vislaw.train import load_projector


def run_logged(job, *args) -> tuple[str, float]:
    """Run one job function with its stderr (the job's log) captured: (device line, seconds)."""
    log = io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stderr(log):
        job(*args)
    seconds = time.perf_counter() - start
    text = log.getvalue()
    device = re.search(r"^device: (.*)$", text, flags=re.M)
    return (device.group(1) if device else "not said"), seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, required=True, help="a finished run's results/<name> folder")
    parser.add_argument("--preset", type=Path, required=True, help="the config that run used")
    parser.add_argument("--encoder", help="default: the first the run trained (results/<name>/eval/)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    config = yaml.safe_load(args.preset.read_text())
    results = args.results
    name = args.encoder or sorted(p.name for p in (results / "eval").iterdir() if p.is_dir())[0]
    out = args.out / name
    out.mkdir(parents=True, exist_ok=True)
    data, llm, features = str(results / "data"), str(results / "llm"), results / "features" / name
    _, record = load_projector(str(results / "projectors" / f"{name}.pt"))
    spec = record["encoder"]
    rows = []

    device, seconds = run_logged(jobs.train_projector, spec, data, llm, str(features / "caption_train.h5"),
                                 config["stage1"], str(out / "projector.pt"))
    rows.append(("train_projector", device, seconds, "", ""))
    device, seconds = run_logged(jobs.a_score, spec, data, llm, str(out / "projector.pt"),
                                 str(features / "caption_probe.h5"), config["a_score"], str(out / "A.json"))
    here = json.loads((out / "A.json").read_text())["A"]
    cpu = json.loads((results / "scores" / "A" / f"{name}.json").read_text())["A"]
    rows.append(("a_score", device, seconds, f"{here:.4f}", f"{cpu:.4f}"))
    device, seconds = run_logged(jobs.train_mllm, spec, data, llm, str(out / "projector.pt"),
                                 str(features / "caption_train.h5"), config["stage2"], str(out / "mllm"))
    rows.append(("train_mllm", device, seconds, "", ""))
    for benchmark in config["benchmarks"]:
        target = out / "eval" / f"{benchmark}.json"
        target.parent.mkdir(exist_ok=True)
        device, seconds = run_logged(jobs.evaluate, spec, data, str(out / "mllm"), str(features / "qa_test.h5"),
                                     benchmark, {"command": None, "metric": None}, str(target))
        here = json.loads(target.read_text())["score"]
        cpu_json = results / "eval" / name / f"{benchmark}.json"
        cpu = f"{json.loads(cpu_json.read_text())['score']:.1f}" if cpu_json.exists() else "not trained there"
        rows.append((f"evaluate {benchmark}", device, seconds, f"{here:.1f}", cpu))

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    lines = [f"# LM jobs of {name} (GPU: {gpu}; torch {torch.__version__})", "",
             "| job | device (its log) | s | this run | the CPU run |", "| --- | --- | --- | --- | --- |"]
    lines += [f"| {job} | {device} | {seconds:.1f} | {here} | {cpu} |" for job, device, seconds, here, cpu in rows]
    text = "\n".join(lines)
    print(text)
    (out / "table.md").write_text(text + "\n")
    if torch.cuda.is_available() and any(not device.startswith("cuda") for _, device, *_ in rows):
        sys.exit("a job ran off the GPU although one is visible")


if __name__ == "__main__":
    main()
