"""The language model side: a byte-level BPE tokenizer and a small causal LM, saved as ordinary Hugging
Face directories so that the multimodal training code (``vislaw.train``) takes a real LLM the same way.

For the mini-world, both are trained here on the world's text corpus (rule ``pretrain_llm``); at real scale
``llm.weights`` points at a local Hugging Face checkpoint (Vicuna-7B, Qwen2.5) instead.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from vislaw.io import atomic_dir

SPECIAL_TOKENS = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}


@dataclass(frozen=True)
class TinyLlamaConfig:
    """Size of the mini-world's language model (a Llama architecture)."""

    vocab_size: int = 512
    hidden_size: int = 128
    intermediate_size: int = 344
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    max_position_embeddings: int = 256


@dataclass(frozen=True)
class PretrainConfig:
    steps: int = 600
    batch_size: int = 32
    seq_len: int = 64
    lr: float = 3e-3
    warmup: int = 30
    seed: int = 0


def train_tokenizer(corpus: Sequence[str], vocab_size: int) -> Any:
    """A byte-level BPE tokenizer (GPT-2/Llama-3 style: any text encodes, nothing is unknown), as a
    transformers ``PreTrainedTokenizerFast``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token=SPECIAL_TOKENS["unk_token"]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus, trainer=trainer)
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, **SPECIAL_TOKENS)


def pack_corpus(tokenizer: Any, corpus: Sequence[str], seq_len: int) -> torch.Tensor:
    """All lines as one token stream (each line closed by EOS), cut into rows of ``seq_len``."""
    ids: list[int] = []
    for line in corpus:
        ids.extend(tokenizer(line, add_special_tokens=False)["input_ids"])
        ids.append(tokenizer.eos_token_id)
    rows = len(ids) // seq_len
    if rows == 0:
        raise ValueError(f"corpus too small: {len(ids)} tokens, fewer than one row of {seq_len}")
    return torch.tensor(ids[: rows * seq_len]).view(rows, seq_len)


def cosine_lr(step: int, total: int, warmup: int) -> float:
    """Linear warm-up, then cosine decay to zero (a multiplier of the base learning rate)."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def pretrain_llm(
    corpus: Sequence[str],
    out_dir: str | Path,
    model_config: TinyLlamaConfig,
    train_config: PretrainConfig,
    log=sys.stderr,
) -> list[float]:
    """Train a tokenizer and a small Llama on ``corpus``; save both to ``out_dir`` (atomically).

    Returns the training loss per step (also written to ``out_dir/train_log.json``).
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(train_config.seed)
    tokenizer = train_tokenizer(corpus, model_config.vocab_size)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=model_config.hidden_size,
        intermediate_size=model_config.intermediate_size,
        num_hidden_layers=model_config.num_hidden_layers,
        num_attention_heads=model_config.num_attention_heads,
        num_key_value_heads=model_config.num_attention_heads,
        max_position_embeddings=model_config.max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config)
    data = pack_corpus(tokenizer, corpus, train_config.seq_len)
    generator = torch.Generator().manual_seed(train_config.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=train_config.lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: cosine_lr(s, train_config.steps, train_config.warmup)
    )
    losses = []
    model.train()
    for step in range(train_config.steps):
        rows = torch.randint(0, len(data), (train_config.batch_size,), generator=generator)
        batch = data[rows]
        loss = model(input_ids=batch, labels=batch).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        if step % 50 == 0 or step == train_config.steps - 1:
            print(f"pretrain_llm step {step:5d} loss {losses[-1]:.4f}", file=log)
    model.eval()
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "train_log.json").write_text(json.dumps(
            {"loss": losses, "model": asdict(model_config), "train": asdict(train_config),
             "corpus_lines": len(corpus), "tokens_per_row": train_config.seq_len, "rows": len(data)},
            indent=1))
    return losses


def load_llm(path: str | Path, key: str = "llm.weights") -> tuple[torch.nn.Module, Any]:
    """A causal LM and its tokenizer from a local Hugging Face directory (never the network).

    Checkpoints inside `vislaw.tinyllama.supports` (the mini-world's LM) load through the lean torch Llama,
    without importing transformers (5 s per job); any other (Vicuna, Qwen) through transformers.
    """
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{key}: model directory '{path}' does not exist")
    from vislaw import tinyllama

    config_file = path / "config.json"
    config = json.loads(config_file.read_text()) if config_file.is_file() else {}
    if config and tinyllama.supports(config) and (path / "model.safetensors").is_file() \
            and (path / "tokenizer.json").is_file():
        model, tokenizer = tinyllama.TinyLlama.from_pretrained(path), tinyllama.Tokenizer(path)
    else:
        from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

        # float32 explicitly, as the lean path loads: transformers 5 keeps a checkpoint's stored dtype (fp16 for
        # Vicuna), and vislaw scores in fp32 (training autocasts to bf16 where `precision` says so)
        model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=torch.float32)
        tokenizer = PreTrainedTokenizerFast.from_pretrained(path, local_files_only=True)
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
    model.eval()
    return model, tokenizer
