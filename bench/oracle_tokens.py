"""The mini-world MLLM recipe on oracle visual tokens: what the LM and the recipe can learn with a perfect encoder.

Instead of an encoder's cached patch tokens, each image gets a 12 x 12 grid whose cells covered by an object (a disc
of the object's size class around its centre, front objects over back ones) hold one-hots of its colour, category
and size and a presence bit; background cells are zero. ``--positions`` appends one-hots of each cell's row and
column (an encoder that says exactly where every token is). Glyphs are left out, so glyph stays at chance.

The tokens then go through `bench/mllm_recipe.py`'s default recipe (stage 1: 4 epochs, lr 1e-2, 2 x 2 pooling,
LayerNorm projector, length-grouped; stage 2: 10 epochs, lr 1e-3) with the run's tiny LM, and the script prints the
stage-1 probe gap and the test accuracy per skill. A skill at chance here is out of reach of every encoder with this
LM and recipe (issue 6: spatial; bench/MLLM_NOTES.md, session 10). The test scenes are regenerated from the world's
seeds (`vislaw.data.world`), and each question is checked against the stored test split.

    PYTHONPATH=src python bench/oracle_tokens.py --results results/default [--positions] [--stage2-epochs 10]
        [--stage2-lr 1e-3] [--stage2-batch 32] [--llm DIR] [--instruct FILE]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from vislaw import jobs
from vislaw.data import world
from vislaw.data.datasets import caption_records, qa_test_records, read_records
from vislaw.data.scene import COLOUR_NAMES, SIZE_NAMES, SceneSpec
from vislaw.data.shapes import categories
from vislaw.data.text import SKILLS
from vislaw.llm import load_llm
from vislaw.train import TrainConfig, caption_loglik, score_options, train_mllm, train_projector
from vislaw.zoo.objectives import SIZE_HALF_EXTENT

# Half-extent of each size class as a fraction of the image side (the supervised objective's).
HALF_EXTENT = dict(zip(SIZE_NAMES, SIZE_HALF_EXTENT))
SIDE = 12  # the 96-px encoders' grid


def oracle_grid(objects: list[dict], image_size: int, positions: bool) -> np.ndarray:
    """(SIDE * SIDE, D) tokens of one image from its objects (dicts with colour, category, size, cx, cy)."""
    names = [c.name for c in categories()]
    width = len(COLOUR_NAMES) + len(names) + len(SIZE_NAMES) + 1
    grid = np.zeros((SIDE, SIDE, width + (2 * SIDE if positions else 0)), np.float32)
    centres = (np.arange(SIDE) + 0.5) * image_size / SIDE
    for obj in objects:  # back to front: a front object overwrites what it covers
        radius = HALF_EXTENT[obj["size"]] * image_size
        covered = (centres[None, :] - obj["cx"]) ** 2 + (centres[:, None] - obj["cy"]) ** 2 <= radius**2
        value = np.zeros(width, np.float32)
        value[COLOUR_NAMES.index(obj["colour"])] = 1
        value[len(COLOUR_NAMES) + names.index(obj["category"])] = 1
        value[len(COLOUR_NAMES) + len(names) + SIZE_NAMES.index(obj["size"])] = 1
        value[-1] = 1
        grid[covered, :width] = value
    if positions:
        rows, cols = np.meshgrid(np.arange(SIDE), np.arange(SIDE), indexing="ij")
        grid[rows, cols, width + rows] = 1
        grid[rows, cols, width + SIDE + cols] = 1
    return grid.reshape(SIDE * SIDE, -1)


def test_scenes(data: Path) -> dict[str, list[SceneSpec]]:
    """Per skill, the scene of each test image, from the world's seeds; each regenerated question must equal the
    stored one (else the world's code changed since the run)."""
    params = world.WorldParams.from_mapping(json.loads((data / "manifest.json").read_text())["params"])
    out: dict[str, list[SceneSpec]] = {}
    for skill in SKILLS:
        stored = qa_test_records(data, skill)
        out[skill] = []
        for j, record in enumerate(stored):
            scene, question = world.qa_test_item(params, skill, j)
            if question.question != record["question"]:
                raise SystemExit(f"{record['id']}: the regenerated test question differs from the stored one")
            out[skill].append(scene)
    return out


def test_objects(data: Path) -> dict[str, list[list[dict]]]:
    """Per skill, the objects of each test image (`test_scenes`) as the dicts `oracle_grid` reads."""
    return {skill: [[{"colour": o.colour, "category": o.category, "size": o.size, "cx": o.cx, "cy": o.cy}
                     for o in scene.objects] for scene in scenes]
            for skill, scenes in test_scenes(data).items()}


def recipe_parser(description: str) -> argparse.ArgumentParser:
    """The arguments this script shares with `bench/caption_ceiling.py`: the run, stage 2's schedule, the LM."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, required=True, help="a finished run, e.g. results/default")
    parser.add_argument("--stage2-epochs", type=float, default=10)
    parser.add_argument("--stage2-lr", type=float, default=1e-3)
    parser.add_argument("--stage2-batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--llm", type=Path, help="the LM folder (default: the run's)")
    return parser


def main() -> None:
    parser = recipe_parser(__doc__)
    parser.add_argument("--positions", action="store_true", help="append each cell's row and column one-hots")
    parser.add_argument("--instruct", type=Path, help="stage-2 conversations on the run's training images (default: "
                        "the run's qa/instruct_train.json)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = args.results / "data"
    size = int(json.loads((data / "manifest.json").read_text())["params"]["image_size"])

    def tokens(object_lists: list[list[dict]]) -> torch.Tensor:
        return torch.from_numpy(np.stack([oracle_grid(objs, size, args.positions) for objs in object_lists]))

    captions = caption_records(data, "train")
    objects_of = {r["image"]: r["objects"] for r in captions}
    tests = test_objects(data)
    llm, tokenizer = load_llm(args.llm or args.results / "llm")
    quiet = open("/dev/null", "w")
    projector, _ = train_projector(llm, tokenizer, tokens([r["objects"] for r in captions]),
                                   [r["caption"] for r in captions],
                                   TrainConfig(epochs=4, lr=1e-2, group_by_length=8), quiet, pool=2, norm=True)
    probe = caption_records(data, "probe")
    x, text = tokens([r["objects"] for r in probe]), [r["caption"] for r in probe]
    matched = caption_loglik(llm, projector, tokenizer, x, text).mean().item()
    shifted = caption_loglik(llm, projector, tokenizer, x[torch.roll(torch.arange(len(x)), 1)], text).mean().item()
    print(f"oracle tokens{' with positions' if args.positions else ''}: stage-1 probe log-likelihood matched "
          f"{matched:.4f}, shifted {shifted:.4f}, gap {matched - shifted:.4f}", flush=True)

    records = read_records(args.instruct or data / "qa" / "instruct_train.json")
    start = time.time()
    train_mllm(llm, projector, tokenizer, tokens([objects_of[r["image"]] for r in records]),
               [jobs._qa_turns(r) for r in records],
               TrainConfig(epochs=args.stage2_epochs, lr=args.stage2_lr, batch_size=args.stage2_batch, seed=0), quiet)
    print(f"stage 2: {args.stage2_epochs:g} epochs, lr {args.stage2_lr:g}, batch {args.stage2_batch} in "
          f"{time.time() - start:.0f} s", flush=True)
    row = []
    for skill in SKILLS:
        test = qa_test_records(data, skill)
        likelihoods = score_options(llm, projector, tokenizer, tokens(tests[skill]), [r["prompt"] for r in test],
                                    [r["options"] for r in test])
        correct = [int(np.argmax(v)) == r["answer"] for v, r in zip(likelihoods, test)]
        row.append(f"{skill} {100 * np.mean(correct):.0f}")
    print("test accuracy %: " + " | ".join(row), flush=True)


if __name__ == "__main__":
    main()
