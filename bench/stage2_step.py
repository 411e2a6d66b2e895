"""One stage-2 step of the mini-world's LM on this CPU: milliseconds a step, and how close its matrix products
come to the core's rate.

The default run's stage 2 is half of its job-seconds, so whether a host meets the 15 minutes is mostly how fast
this step is. Shapes are the default's: the tiny Llama of ``config.yaml`` (`vislaw.tinyllama.TinyLlama`,
random weights: the time does not depend on them), a batch of 32 sequences of 80 positions (BOS, 36 visual
tokens, text; right padding of 0-9 positions) with the loss on the last 40, gradients to the input embeddings
as the projector needs them. Prints the step time (min and median of ``--repeats`` timings of ``--steps``
steps), the GFLOP/s of the step's matrix products and of lone products of the same shapes, and with
``--profile`` the operators by self time. ``--precision bf16`` runs the step under bf16 autocast, as the
default's stage 2 does (``precision: auto``) on a CPU with AVX512-BF16 or AMX.

    python bench/stage2_step.py [--threads 1] [--steps 20] [--repeats 5] [--precision fp32|bf16] [--profile]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_speed import matmul_rate, seconds_per_call  # noqa: E402

from vislaw.tinyllama import TinyLlama  # noqa: E402

SHAPE_KEYS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
_DEFAULT = yaml.safe_load((Path(__file__).resolve().parents[1] / "config.yaml").read_text())
# The default run's LM shape (llm.pretrain), as the Hugging Face Llama config pretrain_llm writes.
LM = {"model_type": "llama", "rms_norm_eps": 1e-6, "tie_word_embeddings": True,
      **{key: _DEFAULT["llm"]["pretrain"][key] for key in SHAPE_KEYS}}
BATCH = _DEFAULT["stage2"]["batch_size"]
# A default stage-2 batch: BOS + 36 visual tokens + up to 43 text positions. Logits are kept from the batch's
# shortest prompt's end on; 40 bounds that from above (the head is then 4 % of the step's products).
POSITIONS, KEPT = 80, 40


def step_matmul_flops() -> float:
    """FLOPs of one step's matrix products: the layers' projections on every position (forward, and backward
    for inputs and weights: 3x) and the tied head on the kept positions (the same 3x)."""
    width, inner, layers = LM["hidden_size"], LM["intermediate_size"], LM["num_hidden_layers"]
    per_position = layers * (4 * width * width + 3 * width * inner)
    head = KEPT * width * LM["vocab_size"]
    return 3 * 2 * BATCH * (POSITIONS * per_position + head)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    model = TinyLlama(LM)
    model.train()
    embeds = torch.randn(BATCH, POSITIONS, LM["hidden_size"], requires_grad=True)
    labels = torch.randint(0, LM["vocab_size"], (BATCH, KEPT))
    attention = torch.ones(BATCH, POSITIONS, dtype=torch.long)
    for row in range(BATCH):
        attention[row, POSITIONS - row % 10 :] = 0

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.precision == "bf16"):
            out = model(inputs_embeds=embeds, attention_mask=attention, logits_to_keep=KEPT)
            loss = F.cross_entropy(out.logits.float().flatten(0, 1), labels.flatten())
        model.zero_grad(set_to_none=True)
        embeds.grad = None
        loss.backward()

    for _ in range(5):
        step()
    timings = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        for _ in range(args.steps):
            step()
        timings.append((time.perf_counter() - start) / args.steps * 1e3)
    print(f"stage-2 step, {args.threads} thread(s), {args.precision}: min {min(timings):.1f} ms, median "
          f"{statistics.median(timings):.1f} ms ({BATCH} x {POSITIONS} positions, {KEPT} scored)")
    print(f"step's matrix products: {step_matmul_flops() / 1e9:.2f} GFLOP "
          f"(= {step_matmul_flops() / min(timings) / 1e6:.0f} GFLOP/s if they were the whole step)")
    cpu = torch.device("cpu")
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.precision]
    print(f"lone {args.precision} product (1024, 1024) x (1024, 1024): {matmul_rate(cpu, 1024, dtype) / 1e9:.0f} "
          "GFLOP/s")
    width, inner = LM["hidden_size"], LM["intermediate_size"]
    for rows, k, cols in [(BATCH * POSITIONS, width, width), (BATCH * POSITIONS, width, inner),
                          (BATCH * POSITIONS, inner, width)]:
        a, b = torch.randn(rows, k, dtype=dtype), torch.randn(k, cols, dtype=dtype)
        rate = 2 * rows * k * cols / seconds_per_call(lambda a=a, b=b: a @ b, cpu, warmup=3, iters=50, repeats=1)
        print(f"lone {args.precision} product ({rows}, {k}) x ({k}, {cols}): {rate / 1e9:.0f} GFLOP/s")
    if args.profile:
        from torch.profiler import profile

        with profile() as prof:
            for _ in range(10):
                step()
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


if __name__ == "__main__":
    main()
