"""Why a mini-world benchmark stays at chance: perception or binding (issue 6's diagnostics).

Two readings of a finished default run (``--results results/default``), printed as tables:

1. accuracy of each trained MLLM by the number of objects in the test image (the test scenes are drawn
   again from the world's seeds, which also checks that every drawn answer is the recorded one): a skill
   at chance on single-object images fails at perception, not at binding a word to one of several objects;
2. linear probes on the encoders' cached tokens of the single-object training images: how well the
   object's category (its shape) and colour can be read from the mean-pooled tokens and from the 36 tokens
   of 2x2 pooling the MLLMs see (multinomial logistic regression, 70/30 split, standardised features).

    PYTHONPATH=src python bench/mllm_diagnostics.py --results results/default
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import h5py
import numpy as np
import torch
import yaml

from vislaw.data import world
from vislaw.train import pool_tokens


def accuracy_by_object_count(results: Path, params: world.WorldParams, encoders: list[str],
                             skills: list[str]) -> None:
    print("| setting | benchmark | " + " | ".join(f"{n} object{'s' if n > 1 else ''}" for n in range(1, 5)) + " |")
    print("|---|---|" + "---|" * 4)
    for encoder in encoders:
        for skill in skills:
            predictions = json.loads((results / "eval" / encoder / f"{skill}.json").read_text())["predictions"]
            hits: dict[int, list[bool]] = defaultdict(list)
            for j, prediction in enumerate(predictions):
                scene, question = world.qa_test_item(params, skill, j)
                if question.answer != prediction["answer"]:
                    raise RuntimeError(f"{skill} test question {j}: the replayed scene does not give the recorded "
                                       "answer (was the world made with another config?)")
                hits[len(scene.objects)].append(prediction["predicted"] == prediction["answer"])
            cells = [f"{100 * np.mean(hits[n]):.0f} % of {len(hits[n])}" if hits[n] else "-" for n in range(1, 5)]
            print(f"| {encoder} | {skill} | " + " | ".join(cells) + " |")


def probe_accuracy(train_x: np.ndarray, train_y: list[str], test_x: np.ndarray, test_y: list[str]) -> float:
    classes = {c: i for i, c in enumerate(sorted(set(train_y) | set(test_y)))}
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    x_train = torch.tensor((train_x - mean) / std, dtype=torch.float32)
    x_test = torch.tensor((test_x - mean) / std, dtype=torch.float32)
    y_train = torch.tensor([classes[c] for c in train_y])
    y_test = torch.tensor([classes[c] for c in test_y])
    torch.manual_seed(0)
    head = torch.nn.Linear(x_train.shape[1], len(classes))
    optimiser = torch.optim.Adam(head.parameters(), lr=1e-2, weight_decay=1e-2)
    for _ in range(300):
        optimiser.zero_grad()
        torch.nn.functional.cross_entropy(head(x_train), y_train).backward()
        optimiser.step()
    with torch.no_grad():
        return float((head(x_test).argmax(1) == y_test).float().mean())


def linear_probes(results: Path, encoders: list[str]) -> None:
    records = json.loads((results / "data" / "captions" / "train.json").read_text())
    single = [r for r in records if len(r["objects"]) == 1]
    cut = int(0.7 * len(single))
    print(f"\n{len(single)} single-object training images ({cut} to fit, {len(single) - cut} to test)\n")
    print("| setting | category, mean-pooled | category, 36 tokens | colour, mean-pooled | colour, 36 tokens |")
    print("|---|---|---|---|---|")
    for encoder in encoders:
        with h5py.File(results / "features" / encoder / "caption_train.h5", "r") as h5:
            ids = [x.decode() if isinstance(x, bytes) else x for x in h5["image_ids"][()]]
            index = {k: i for i, k in enumerate(ids)}
            tokens = h5["tokens"][()].astype(np.float32)[[index[r["image"]] for r in single]]
        count = tokens.shape[1]
        side = int(round(count ** 0.5))
        if side * side != count:
            print(f"| {encoder} | (prefix tokens kept: skipped) | | | |")
            continue
        # stage 1's 2 x 2 pooling, all cells flattened channel-major (as before: the probe's initial weights
        # follow the feature order)
        pooled = pool_tokens(torch.from_numpy(tokens), 2).transpose(1, 2).flatten(1).numpy()
        cells = []
        for target in ("category", "colour"):
            labels = [r["objects"][0][target] for r in single]
            for features in (tokens.mean(1), pooled):
                accuracy = probe_accuracy(features[:cut], labels[:cut], features[cut:], labels[cut:])
                cells.append(f"{100 * accuracy:.0f} % (chance {100 / len(set(labels)):.0f} %)")
        print(f"| {encoder} | " + " | ".join(cells) + " |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, required=True, help="a finished run, e.g. results/default")
    parser.add_argument("--config", type=Path, default=Path("config.yaml"), help="the run's config (world section)")
    parser.add_argument("--encoders", default="contrastive_96,supervised_96,selfsup_96,random_vit_96")
    parser.add_argument("--skills", default="colour,shape,glyph,size")
    args = parser.parse_args()
    params = world.WorldParams.from_mapping(yaml.safe_load(args.config.read_text())["world"])
    encoders = [e for e in args.encoders.split(",") if e]
    accuracy_by_object_count(args.results, params, encoders, [s for s in args.skills.split(",") if s])
    linear_probes(args.results, encoders)


if __name__ == "__main__":
    main()
