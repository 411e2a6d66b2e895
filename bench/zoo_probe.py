"""Does a mini-zoo encoder learn an object's shape with more pretraining? (issue 6's diagnostics)

Trains one mini-zoo objective on a finished run's world with the given step counts (the zoo's defaults are
150-200 steps), extracts the single-object training images, and prints the linear-probe accuracy of the
object's category (its shape) and colour from the mean-pooled tokens (as `bench/mllm_diagnostics.py`).

    PYTHONPATH=src python bench/zoo_probe.py --results results/default --objective contrastive --steps 150,600
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mllm_diagnostics import probe_accuracy  # noqa: E402

from vislaw.features import extract_to_h5  # noqa: E402
from vislaw.zoo import train_encoder  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, required=True, help="a finished run, e.g. results/default")
    parser.add_argument("--objective", default="contrastive")
    parser.add_argument("--steps", default="150,600")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--set", action="append", default=[], help="a training setting, key=value (JSON value)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    records = json.loads((args.results / "data" / "captions" / "train.json").read_text())
    single = [r for r in records if len(r["objects"]) == 1]
    cut = int(0.7 * len(single))
    overrides = {k: json.loads(v) for k, v in (item.split("=", 1) for item in args.set)}
    with tempfile.TemporaryDirectory(prefix="zoo_probe_") as scratch:
        for steps in [int(s) for s in args.steps.split(",") if s]:
            out = Path(scratch) / f"{args.objective}_{steps}"
            start = time.perf_counter()
            record = train_encoder(args.objective, args.results / "data", out, {"steps": steps, **overrides})
            seconds = time.perf_counter() - start
            spec = {"kind": "mini", "weights": str(out), "image_size": int(record["config"]["image_size"]),
                    "patch": 8, "mean": [0.5] * 3, "std": [0.5] * 3, "layer": -2, "drop_prefix": True,
                    "options": {"arch": record["config"]["arch"]["arch"]}, "name": out.name}
            extract_to_h5(spec, [args.results / "data" / r["image"] for r in single], out / "single.h5",
                          image_ids=[r["image"] for r in single], device="cpu", loader_threads=args.threads)
            with h5py.File(out / "single.h5", "r") as h5:
                mean = h5["tokens"][()].astype(np.float32).mean(1)
            cells = []
            for target in ("category", "colour"):
                labels = [r["objects"][0][target] for r in single]
                accuracy = probe_accuracy(mean[:cut], labels[:cut], mean[cut:], labels[cut:])
                cells.append(f"{target} {100 * accuracy:.0f} %")
            print(f"{args.objective}, {steps} steps ({seconds:.0f} s): " + ", ".join(cells), flush=True)


if __name__ == "__main__":
    main()
