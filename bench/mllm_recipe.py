"""The mini-world MLLM recipe, one encoder at a time, outside the workflow (issue 6's experiments).

Reads a finished run's tiny LM, data and feature caches (``--results results/default``), trains stage 1 and
stage 2 with the given settings, and prints: stage-1 loss, the probe captions' mean log-likelihood with the
right images and with the images shifted by one (the gap says whether the projector reads the image), and
stage-2 accuracy per skill on 100 training conversations and on the test split. CPU, 2 threads; figures and
timings in bench/MLLM_NOTES.md.

    PYTHONPATH=src python bench/mllm_recipe.py --results results/default --encoder contrastive_96 --pool 2
"""

from __future__ import annotations

import argparse
import re
import time
from pathlib import Path

import h5py
import numpy as np
import torch

from vislaw import jobs
from vislaw.data.datasets import caption_records, qa_test_records, read_records
from vislaw.data.text import SKILLS
from vislaw.llm import load_llm
from vislaw.train import TrainConfig, caption_loglik, score_options, train_mllm, train_projector


def cached(results: Path, encoder: str, dataset: str, ids: list[str]) -> torch.Tensor:
    with h5py.File(results / "features" / encoder / f"{dataset}.h5", "r") as f:
        stored = [x.decode() if isinstance(x, bytes) else x for x in f["image_ids"][()]]
        index = {k: i for i, k in enumerate(stored)}
        tokens = f["tokens"][()]
    return torch.from_numpy(tokens[[index[i] for i in ids]].astype(np.float32))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, required=True)
    parser.add_argument("--encoder", default="contrastive_96")
    parser.add_argument("--pool", type=int, default=2)
    parser.add_argument("--stage1-epochs", type=float, default=4)
    parser.add_argument("--stage1-lr", type=float, default=1e-2)
    parser.add_argument("--stage2-epochs", type=float, default=10)
    parser.add_argument("--stage2-lr", type=float, default=1e-3)
    parser.add_argument("--stage2-batch", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0, help="stage-2 seed (order of the conversations)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--llm", type=Path, help="the LM folder (default: the run's)")
    parser.add_argument("--group", type=int, default=0, help="group_by_length (batches per sorted run)")
    parser.add_argument("--norm", action="store_true", help="LayerNorm before the projector (ln_mlp2x_gelu)")
    parser.add_argument("--stage2-group", type=int, help="stage-2 group_by_length (default: --group)")
    parser.add_argument("--instruct", type=Path, help="stage-2 conversations (default: the run's)")
    parser.add_argument("--precision", choices=["fp32", "bf16", "auto"], default="auto",
                        help="stage 1 and 2 (the default run's auto; sessions before 18 ran fp32)")
    parser.add_argument("--loss-average", choices=["token", "sequence"], default="sequence",
                        help="stage 1 and 2 loss average (config.yaml's sequence; LLaVA's token)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results, data = args.results, args.results / "data"
    llm, tokenizer = load_llm(args.llm or results / "llm")
    quiet = open("/dev/null", "w")

    captions = caption_records(data, "train")
    start = time.time()
    projector, losses = train_projector(
        llm, tokenizer, cached(results, args.encoder, "caption_train", [r["image"] for r in captions]),
        [r["caption"] for r in captions],
        TrainConfig(epochs=args.stage1_epochs, lr=args.stage1_lr, group_by_length=args.group,
                    precision=args.precision, loss_average=args.loss_average), quiet,
        pool=args.pool, norm=args.norm)
    probe = caption_records(data, "probe")
    x = cached(results, args.encoder, "caption_probe", [r["image"] for r in probe])
    text = [r["caption"] for r in probe]
    matched = caption_loglik(llm, projector, tokenizer, x, text).mean().item()
    shifted = caption_loglik(llm, projector, tokenizer, x[torch.roll(torch.arange(len(x)), 1)], text).mean().item()
    print(f"{args.encoder} stage 1: {len(losses)} steps in {time.time() - start:.0f} s, loss "
          f"{np.mean(losses[:5]):.3f} -> {np.mean(losses[-10:]):.3f}; probe log-likelihood matched {matched:.4f}, "
          f"shifted {shifted:.4f}, gap {matched - shifted:.4f}", flush=True)

    records = read_records(args.instruct or data / "qa" / "instruct_train.json")
    print(f"stage 2: {len(records)} conversations, {sum(len(r['skills']) for r in records)} turns", flush=True)
    start = time.time()
    losses = train_mllm(llm, projector, tokenizer, cached(results, args.encoder, "caption_train",
                                                         [r["image"] for r in records]),
                        [jobs._qa_turns(r) for r in records],
                        TrainConfig(epochs=args.stage2_epochs, lr=args.stage2_lr, seed=args.seed,
                                    batch_size=args.stage2_batch, precision=args.precision,
                                    loss_average=args.loss_average,
                                    group_by_length=args.group if args.stage2_group is None else args.stage2_group),
                        quiet)
    print(f"stage 2: {len(losses)} steps in {time.time() - start:.0f} s, loss {np.mean(losses[:5]):.3f} -> "
          f"{np.mean(losses[-5:]):.3f}", flush=True)

    def accuracy(prompts, options, answers, features) -> float:
        likelihoods = score_options(llm, projector, tokenizer, features, prompts, options)
        return 100.0 * float(np.mean([int(np.argmax(v)) == a for v, a in zip(likelihoods, answers)]))

    row = []
    for skill in SKILLS:
        train = [(r["image"], *turn) for r in records for turn, turn_skill in zip(jobs._qa_turns(r), r["skills"])
                 if turn_skill == skill][:100]
        options = [re.findall(r"^[A-Z]\. (.+)$", p, re.M) for _, p, _ in train]
        answers = [o.index(a) for o, (_, _, a) in zip(options, train)]
        on_train = accuracy([p for _, p, _ in train], options, answers,
                            cached(results, args.encoder, "caption_train", [image for image, _, _ in train]))
        test = qa_test_records(data, skill)
        on_test = accuracy([r["prompt"] for r in test], [r["options"] for r in test], [r["answer"] for r in test],
                           cached(results, args.encoder, "qa_test", [r["image"] for r in test]))
        row.append(f"{skill} {on_train:.0f}/{on_test:.0f}")
    print("accuracy % train/test: " + " | ".join(row), flush=True)


if __name__ == "__main__":
    main()
