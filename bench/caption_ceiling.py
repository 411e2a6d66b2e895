"""The mini-world MLLM recipe with each image's caption as text in place of its visual tokens: the LM's reading
ceiling.

Stage 2 is run on the run's own conversations, but each sequence is ``<s> caption \\n prompt answer </s>`` instead
of ``<s> [visual tokens] prompt answer </s>``: the LM is fine-tuned (answers scored, as in stage 2; no projector)
with stage 2's schedule, then answers the run's test questions with the test scene's caption before each prompt
(options scored by mean log-likelihood, as the workflow's evaluation does). The caption names every object's size,
texture, colour, category and glyph, with one relation or a coarse place each, so what the LM cannot answer from it
is out of reach of the recipe however good the encoder (the text-side counterpart of `bench/oracle_tokens.py`).
``--blind`` drops the captions: the answer priors the LM learns from the questions alone.

The test scenes are regenerated from the world's seeds and each question is checked against the stored split
(`bench/oracle_tokens.py`'s ``test_scenes``; the arguments are its ``recipe_parser``'s). bench/MLLM_NOTES.md,
session 11, has the figures.

    PYTHONPATH=src python bench/caption_ceiling.py --results results/default [--blind] [--stage2-epochs 10]
        [--stage2-lr 1e-3] [--stage2-batch 32] [--threads 1] [--llm DIR]
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import torch
from oracle_tokens import recipe_parser, test_scenes

from vislaw import jobs
from vislaw.data.datasets import caption_records, qa_test_records, read_records
from vislaw.data.text import SKILLS, caption
from vislaw.llm import load_llm
from vislaw.scores.alignment import token_logliks
from vislaw.train import TextPart, TrainConfig, _fit, tokenize_parts, tokenize_turns


def text_logliks(llm: torch.nn.Module, tokenizer, texts: Sequence[tuple[list[int], list[bool]]]) -> torch.Tensor:
    """Per-sequence mean log-likelihood of the scored tokens of ``<s> text``, right-padded, (B,)."""
    width = 1 + max(len(ids) for ids, _ in texts)
    labels = torch.full((len(texts), width), tokenizer.pad_token_id, dtype=torch.long)
    scored = torch.zeros((len(texts), width), dtype=torch.bool)
    attention = torch.zeros((len(texts), width), dtype=torch.long)
    labels[:, 0] = tokenizer.bos_token_id
    for row, (ids, flags) in enumerate(texts):
        labels[row, 1 : 1 + len(ids)] = torch.tensor(ids)
        scored[row, 1 : 1 + len(ids)] = torch.tensor(flags)
        attention[row, : 1 + len(ids)] = 1
    return token_logliks(llm(input_ids=labels, attention_mask=attention).logits, labels, scored)


def main() -> None:
    parser = recipe_parser(__doc__)
    parser.add_argument("--blind", action="store_true", help="no caption: the prompt alone (the answer priors)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = args.results / "data"

    def context(text: str) -> str:
        return "" if args.blind else text + "\n"

    captions = {r["image"]: r["caption"] for r in caption_records(data, "train")}
    records = read_records(data / "qa" / "instruct_train.json")
    llm, tokenizer = load_llm(args.llm or args.results / "llm")
    texts = []
    for record in records:
        turns = jobs._qa_turns(record)
        turns[0] = (context(captions[record["image"]]) + turns[0][0], turns[0][1])
        texts.append(tokenize_turns(tokenizer, turns))
    start = time.time()
    llm.requires_grad_(True)
    llm.train()
    _fit(list(llm.parameters()), lambda index: -text_logliks(llm, tokenizer, [texts[i] for i in index]).mean(),
         len(texts), TrainConfig(epochs=args.stage2_epochs, lr=args.stage2_lr, batch_size=args.stage2_batch, seed=0),
         "stage2", open("/dev/null", "w"))
    llm.eval()
    llm.requires_grad_(False)
    print(f"{'blind' if args.blind else 'caption'} stage 2: {args.stage2_epochs:g} epochs, lr {args.stage2_lr:g}, "
          f"batch {args.stage2_batch} in {time.time() - start:.0f} s", flush=True)
    scenes = test_scenes(data)
    row = []
    with torch.inference_mode():
        for skill in SKILLS:
            correct = []
            for record, scene in zip(qa_test_records(data, skill), scenes[skill], strict=True):
                prompt = context(caption(scene)) + record["prompt"]
                options = [tokenize_parts(tokenizer, [TextPart(prompt, False), TextPart(o, True)])
                           for o in record["options"]]
                correct.append(int(text_logliks(llm, tokenizer, options).argmax()) == record["answer"])
            row.append(f"{skill} {100 * np.mean(correct):.0f}")
    print("test accuracy %: " + " | ".join(row), flush=True)


if __name__ == "__main__":
    main()
