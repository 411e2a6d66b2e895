"""Train the mini zoo at default size and score each encoder's C on the mini-world's SPair-format test split.

For each setting: train (one thread, timed), extract penultimate-layer patch tokens of the test images
through the real cache path (`extract_to_h5`, padded square frame), then C = PCK@0.10 with
`evaluate_pairs` (keypoints and boxes mapped into the padded frame scaled to 840 px). Prints one row per
encoder: train seconds, C, PCK@0.05, and the loss at the start and end of training.

    python bench/zoo_c_scores.py [--world DIR] [--out DIR] [--only selfsup,random_vit] [--seed 0]

Without ``--world`` the default mini-world (`WorldParams()`) is generated into the output folder first.
"""

from __future__ import annotations

import argparse
import tempfile
import time

from pathlib import Path
from typing import Any

import numpy as np
import torch

from vislaw.data import spair
from vislaw.data.world import WorldParams, make_world
from vislaw.encoders import EncoderSpec
from vislaw.features import extract_to_h5, extraction_protocol, read_features
from vislaw.scores.correspondence import CorrespondenceProtocol, evaluate_pairs, pair_batch
from vislaw.zoo import MEAN, STD, train_encoder

# name -> (objective, training overrides, input size): the default zoo of the workflow.
ZOO: dict[str, tuple[str, dict[str, Any], int]] = {
    "contrastive_64": ("contrastive", {"image_size": 64}, 64),
    "contrastive_96": ("contrastive", {}, 96),
    "selfsup": ("selfsup", {}, 96),
    "selfsup_shuffled": ("selfsup", {"channel_shuffle": 0.8}, 96),  # the RGB-permuting views of session 4
    "denoise": ("denoise", {}, 96),
    "denoise_cnn": ("denoise", {"arch": {"arch": "cnn"}}, 96),
    "denoise_vit": ("denoise", {"arch": {"arch": "vit"}}, 96),
    "supervised": ("supervised", {}, 96),
    "random_vit": ("random", {"arch": {"arch": "vit"}}, 96),
    "random_cnn": ("random", {"arch": {"arch": "cnn"}}, 96),
}
CONCATS: dict[str, tuple[str, ...]] = {"contrastive_96+selfsup": ("contrastive_96", "selfsup")}


def mini_spec(name: str, checkpoint: Path, image_size: int, arch: str) -> EncoderSpec:
    return EncoderSpec(kind="mini", weights=str(checkpoint), image_size=image_size, patch=8, mean=MEAN, std=STD,
                       options={"arch": arch}, name=name)


def c_scores(spec: EncoderSpec, spair_root: Path, work: Path) -> dict[float, float]:
    """PCK at each protocol threshold (x100) for ``spec`` on the test split."""
    images = spair.split_images(spair_root, "test")
    ids = [image.key for image in images]
    cache = work / f"{spec.name}.h5"
    protocol = extract_to_h5(spec, [image.path for image in images], cache, image_ids=ids,
                             dataset_fingerprint="bench", device="cpu", loader_threads=1)
    features = torch.from_numpy(read_features(cache, ids, protocol).astype(np.float32))
    assert protocol == extraction_protocol(spec, "bench")
    c_protocol = CorrespondenceProtocol()
    # the workflow's own pair mapping (keypoints and boxes in the padded frame), as rule c_score uses it
    pairs = pair_batch(spair.load_pairs(spair_root, "test"), {key: i for i, key in enumerate(ids)},
                       c_protocol.frame_size)
    result = evaluate_pairs(features, spec.grid, pairs, c_protocol)
    return {alpha: result.pck(alpha) for alpha in c_protocol.alphas}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world", type=Path, help="an existing world folder (default: generate WorldParams())")
    parser.add_argument("--out", type=Path, help="where checkpoints go (default: a temporary folder)")
    parser.add_argument("--only", default="", help="comma-separated settings (default: all)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)  # the budget is 60 s per setting on one core
    with tempfile.TemporaryDirectory() as scratch:
        out = args.out or Path(scratch)
        world = args.world
        if world is None:
            world = out / "world"
            if not world.exists():
                make_world(world, WorldParams())
        only = [s for s in args.only.split(",") if s]
        rows = []
        specs: dict[str, EncoderSpec] = {}
        for name, (objective, overrides, size) in ZOO.items():
            wanted = not only or name in only or any(name in CONCATS.get(o, ()) for o in only)
            if not wanted:
                continue
            start = time.perf_counter()
            record = train_encoder(objective, world, out / "zoo" / name, {**overrides, "seed": args.seed})
            wall = time.perf_counter() - start
            specs[name] = mini_spec(name, out / "zoo" / name, size, record["architecture"]["arch"])
            curve = record["loss_curve"]
            losses = (curve[0][1], curve[-1][1]) if curve else (float("nan"), float("nan"))
            pck = c_scores(specs[name], world / "spair", out)
            rows.append((name, objective, wall, record["train_seconds"], pck, losses))
            print(f"{name}: {wall:.1f} s, C {pck[0.10]:.1f}", flush=True)
        for name, parts in CONCATS.items():
            if (only and name not in only) or not all(p in specs for p in parts):
                continue
            spec = EncoderSpec(kind="concat", image_size=96, parts=tuple(specs[p] for p in parts), name=name)
            rows.append((name, "concat", 0.0, 0.0, c_scores(spec, world / "spair", out), (np.nan, np.nan)))
        print(f"\n{'encoder':<24}{'objective':<13}{'train s (1 thr)':>16}{'C=PCK@.10':>11}{'PCK@.05':>9}"
              f"{'loss first->last':>20}")
        for name, objective, wall, _, pck, (first, last) in rows:
            print(f"{name:<24}{objective:<13}{wall:>16.1f}{pck[0.10]:>11.1f}{pck[0.05]:>9.1f}"
                  f"{first:>11.3f} ->{last:>6.3f}")


if __name__ == "__main__":
    main()
