"""LLaVA-style multimodal training on cached encoder features.

The MLLM is frozen vision encoder -> ``mlp2x_gelu`` projector -> causal LM. Because the encoder is frozen,
training reads its cached patch tokens (the HDF5 feature cache) instead of images.

- Stage 1 (:func:`train_projector`): only the projector learns, on image-caption pairs, with the
  captioning loss; the sequence is ``<s> [visual tokens] caption </s>`` and the loss covers the caption
  and ``</s>`` (LLaVA-1.5's pretraining recipe, with the conversation template reduced to this).
- A score (:func:`caption_loglik`): the mean per-token log-likelihood of the caption under the frozen
  stage-1 model.
- Stage 2 (:func:`train_mllm`): projector and LM learn on instruction data, loss on the answers only.
- Evaluation (:func:`score_options`): the log-likelihood of each multiple-choice option given the image
  and the question; the prediction is the most likely option.
"""

from __future__ import annotations

import inspect
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from vislaw.llm import cosine_lr
from vislaw.scores.alignment import token_logliks

# A tokenizer: transformers' PreTrainedTokenizerFast or vislaw.tinyllama.Tokenizer (the calls used are common).
Tokenizer = Any


def grid_side(count: int, key: str = "stage1.pool") -> int:
    """The side of a square grid of ``count`` patch tokens; pooling (config ``key``) needs one."""
    side = math.isqrt(count)
    if side * side != count:
        raise ValueError(f"{key}: pooling needs a square grid of patch tokens, got {count} tokens")
    return side


def pool_stride(count: int, grid: int) -> int:
    """The pooling stride that brings a square grid of ``count`` patch tokens nearest to ``grid`` x ``grid``
    (stage1.pool_grid): 12 x 12 -> 3, 8 x 8 -> 2 for grid 4. One visual-token budget for every encoder, as
    a resampler gives (the mini zoo's 64 px and 96 px encoders otherwise differ 2.25x in tokens and cost)."""
    return max(1, round(grid_side(count, "stage1.pool_grid") / grid))


def pool_tokens(tokens: torch.Tensor, stride: int) -> torch.Tensor:
    """Average ``stride`` x ``stride`` neighbourhoods of a square grid of patch tokens (B, T, D) ->
    (B, ceil(sqrt(T)/stride)^2, D), LLaVA-OneVision's ``mm_spatial_pool_stride`` (bilinear there, average
    here); ``stride`` 1 returns the tokens unchanged (LLaVA-1.5)."""
    if stride == 1:
        return tokens
    batch, count, dim = tokens.shape
    side = grid_side(count)
    grid = tokens.transpose(1, 2).reshape(batch, dim, side, side)
    pooled = torch.nn.functional.avg_pool2d(grid, stride, ceil_mode=True)
    return pooled.flatten(2).transpose(1, 2)


class Projector(nn.Module):
    """LLaVA-1.5's ``mlp2x_gelu``: Linear -> GELU -> Linear, from encoder width to LM width, after optional
    spatial pooling of the patch tokens (``pool``, see `pool_tokens`); ``norm`` puts a LayerNorm over the
    encoder width first (InternVL's projector, ``ln_mlp2x_gelu`` here)."""

    def __init__(self, in_dim: int, out_dim: int, pool: int = 1, norm: bool = False) -> None:
        super().__init__()
        if pool < 1:
            raise ValueError(f"stage1.pool must be >= 1, got {pool}")
        self.norm = nn.LayerNorm(in_dim) if norm else nn.Identity()
        self.net = nn.Sequential(nn.Linear(in_dim, out_dim), nn.GELU(), nn.Linear(out_dim, out_dim))
        self.in_dim, self.out_dim, self.pool, self.normed = in_dim, out_dim, pool, norm

    def n_tokens(self, count: int) -> int:
        """How many visual tokens the LM sees for ``count`` patch tokens."""
        side = math.ceil(math.isqrt(count) / self.pool)
        return count if self.pool == 1 else side * side

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.net(self.norm(pool_tokens(tokens, self.pool)))


@dataclass(frozen=True)
class TrainConfig:
    epochs: float = 1.0
    batch_size: int = 32
    lr: float = 1e-3
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    seed: int = 0
    group_by_length: int = 0  # > 1: batches of similar length, sorted within runs of this many batches
    precision: str = "fp32"  # the forward pass's matrix products: fp32, bf16 (autocast) or auto (PRECISIONS)
    # The loss over a batch: "token", the mean over all its scored tokens (LLaVA's: transformers' causal-LM
    # loss), or "sequence", each sequence's mean, then their mean (a short caption weighs as a long one)
    loss_average: str = "token"


# auto: bf16 where the device multiplies bf16 in hardware. Without it a CPU emulates bf16 products, 2.5-25x slower
# than fp32 (bench/MLLM_NOTES.md, session 18), so auto keeps those in fp32.
PRECISIONS = ("fp32", "bf16", "auto")


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` multiplies bf16 matrices in hardware: a CUDA device that supports bf16, or a CPU
    with AVX512-BF16 or AMX (Intel Cooper Lake and Sapphire Rapids on, AMD Zen 4 on)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    return False


def resolve_precision(precision: str, device: torch.device, key: str = "precision") -> str:
    """``fp32`` or ``bf16``: ``auto`` resolved for ``device``; an unknown value is an error naming ``key``."""
    if precision not in PRECISIONS:
        raise ValueError(f"{key}: {precision!r} is not one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    return precision


@dataclass(frozen=True)
class TextPart:
    """A piece of the sequence after the visual tokens; ``scored`` parts carry the loss."""

    text: str
    scored: bool


def tokenize_parts(
    tokenizer: Tokenizer, parts: Sequence[TextPart], end_with_eos: bool = True
) -> tuple[list[int], list[bool]]:
    """Token ids of the parts, and which ids are scored; a closing ``</s>`` is scored with the last part."""
    ids: list[int] = []
    scored: list[bool] = []
    for part in parts:
        piece = tokenizer(part.text, add_special_tokens=False)["input_ids"]
        ids.extend(piece)
        scored.extend([part.scored] * len(piece))
    if end_with_eos:
        ids.append(tokenizer.eos_token_id)
        scored.append(bool(parts[-1].scored))
    return ids, scored


def tokenize_turns(tokenizer: Tokenizer, turns: Sequence[tuple[str, str]]) -> tuple[list[int], list[bool]]:
    """Token ids of a conversation's (prompt, answer) turns and which are scored: each answer and the ``</s>``
    closing it carry the loss, the prompts do not (LLaVA's v1 template, reduced to the turns). One turn gives
    `tokenize_parts` of (prompt unscored, answer scored) exactly."""
    if not turns:
        raise ValueError("a conversation needs at least one (prompt, answer) turn")
    ids: list[int] = []
    scored: list[bool] = []
    for prompt, answer in turns:
        turn_ids, turn_scored = tokenize_parts(tokenizer, [TextPart(prompt, False), TextPart(answer, True)])
        ids.extend(turn_ids)
        scored.extend(turn_scored)
    return ids, scored


def bos_tokens(tokenizer: Tokenizer) -> int:
    """1 where sequences start with the tokenizer's ``<s>``, 0 where it has none."""
    return 0 if tokenizer.bos_token_id is None else 1


def fit_to_context(texts: Sequence[tuple[list[int], list[bool]]], llm: nn.Module, before_text: int, what: str,
                   log=sys.stderr) -> list[tuple[list[int], list[bool]]]:
    """Training texts cut to the LM's context (``config.max_position_embeddings``), as LLaVA cuts each sequence at
    ``model_max_length``: ``before_text`` positions (``<s>`` and the visual tokens) come first. Cut texts are
    counted in ``log``; one left with nothing to score (its first answer beyond the context) is an error.
    """
    config = getattr(llm, "config", None)  # transformers' config object, or the lean TinyLlama's dict
    limit = config.get("max_position_embeddings") if isinstance(config, dict) else \
        getattr(config, "max_position_embeddings", None)
    if limit is None:
        return list(texts)
    room = int(limit) - before_text
    if room <= 0:
        raise ValueError(f"{before_text} positions of <s> and visual tokens fill the LM's {limit}-position context: "
                         "pool the visual tokens (stage1.pool) or use an LM with a longer context")
    out, cut = [], 0
    for i, (ids, flags) in enumerate(texts):
        if len(ids) > room:
            ids, flags, cut = ids[:room], flags[:room], cut + 1
            if not any(flags):
                raise ValueError(f"{what} {i}: nothing to score within the LM's {limit} positions ({before_text} "
                                 f"before the text, {room} left for it)")
        out.append((ids, flags))
    if cut:
        print(f"{cut} of {len(texts)} {what}s cut to the LM's {limit} positions", file=log)
    return out


def build_batch(
    llm: nn.Module,
    projector: Projector,
    visual: torch.Tensor,
    texts: Sequence[tuple[list[int], list[bool]]],
    tokenizer: Tokenizer,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Input embeddings ``<s> [visual] text`` right-padded, with labels, score mask and attention mask; without
    ``<s>`` for a tokenizer that has none (Qwen2's: LLaVA's Qwen templates start with the image).

    Returns (embeds (B, L, H), labels (B, L), scored (B, L) bool, attention (B, L) long).
    """
    embed = llm.get_input_embeddings()
    device = embed.weight.device
    # Features come from the cache on the CPU, one batch at a time, to the LM's device; the projector reads
    # them in its own dtype (float32: it is trained) and hands the LM its dtype (a checkpoint may be fp16).
    projector_dtype = next(projector.parameters()).dtype
    visual_embeds = projector(visual.to(device=device, dtype=projector_dtype)).to(embed.weight.dtype)
    batch, n_visual = visual_embeds.shape[0], visual_embeds.shape[1]
    prefix = bos_tokens(tokenizer)
    lengths = [prefix + n_visual + len(ids) for ids, _ in texts]
    width = max(lengths)
    labels = torch.full((batch, width), tokenizer.pad_token_id, dtype=torch.long, device=device)
    scored = torch.zeros((batch, width), dtype=torch.bool, device=device)
    attention = torch.zeros((batch, width), dtype=torch.long, device=device)
    if prefix:
        labels[:, 0] = tokenizer.bos_token_id
    for row, (ids, flags) in enumerate(texts):
        start = prefix + n_visual
        labels[row, start : start + len(ids)] = torch.tensor(ids, device=device)
        scored[row, start : start + len(ids)] = torch.tensor(flags, device=device)
        attention[row, : lengths[row]] = 1
    text_embeds = embed(labels)
    embeds = torch.cat([text_embeds[:, :prefix], visual_embeds, text_embeds[:, prefix + n_visual :]], dim=1)
    return embeds, labels, scored, attention


def sequence_logliks(
    llm: nn.Module,
    projector: Projector,
    visual: torch.Tensor,
    texts: Sequence[tuple[list[int], list[bool]]],
    tokenizer: Tokenizer,
) -> torch.Tensor:
    """Per-sequence mean log-likelihood of the scored tokens, (B,).

    Logits are computed only from the position before the batch's first scored token on: the LM head
    (hidden x vocabulary per position) at the image and prompt positions computes nothing the loss uses,
    and was most of a stage-1 step (run 1 on an H200, Qwen2-0.5B shape, 609 positions of which 33 are
    text: 86k -> 132k tokens/s, peak memory 38 -> 23 GiB). Same values: the kept positions' logits are
    the same, and the others were masked out.
    """
    embeds, labels, scored, attention = build_batch(llm, projector, visual, texts, tokenizer)
    first = [flags.index(True) for _, flags in texts if True in flags]  # within each text part
    n_visual = projector.n_tokens(visual.shape[1])
    keep = labels.shape[1] - (bos_tokens(tokenizer) + n_visual + min(first)) + 1 if first else labels.shape[1]
    return token_logliks(_logits(llm, embeds, attention, keep), labels[:, -keep:], scored[:, -keep:])


LOSS_AVERAGES = ("token", "sequence")


def batch_loss(
    llm: nn.Module,
    projector: Projector,
    visual: torch.Tensor,
    texts: Sequence[tuple[list[int], list[bool]]],
    tokenizer: Tokenizer,
    average: str = "token",
) -> torch.Tensor:
    """The training loss of a batch: minus the mean log-likelihood of its scored tokens (``average="token"``)
    or of its sequences' means (``"sequence"``)."""
    means = sequence_logliks(llm, projector, visual, texts, tokenizer)
    if average == "sequence":
        return -means.mean()
    if average != "token":
        raise ValueError(f"loss_average: {average!r} is not one of {', '.join(LOSS_AVERAGES)}")
    counts = torch.tensor([sum(flags) for _, flags in texts], dtype=means.dtype, device=means.device)
    return -(means * counts).sum() / counts.sum()


def _logits(llm: nn.Module, embeds: torch.Tensor, attention: torch.Tensor, keep: int) -> torch.Tensor:
    """Logits at the last ``keep`` positions (B, keep, V): transformers' ``logits_to_keep`` where the model
    takes it, else all logits, sliced."""
    if keep < embeds.shape[1] and "logits_to_keep" in inspect.signature(llm.forward).parameters:
        return llm(inputs_embeds=embeds, attention_mask=attention, logits_to_keep=keep).logits
    return llm(inputs_embeds=embeds, attention_mask=attention).logits[:, -keep:]


def _batches(n: int, batch_size: int, epochs: float, generator: torch.Generator,
             lengths: Sequence[int] | None = None, group: int = 0):
    """Shuffled index batches covering ``epochs`` passes over ``n`` items.

    With ``lengths`` and ``group`` > 1, each run of ``group`` batches of the shuffled order is sorted by
    length before it is cut into batches (transformers' ``group_by_length``, LLaVA's
    ``group_by_modality_length``): a batch is padded to its longest sequence, and the mini-world's captions
    run from 9 to 48 tokens, so random batches padded stage 1's sequences by a third.
    """
    steps = max(1, round(epochs * n / batch_size))
    span = batch_size * group if lengths is not None and group > 1 else batch_size
    key = torch.as_tensor(lengths) if lengths is not None else None
    order = torch.empty(0, dtype=torch.long)
    pending: list[torch.Tensor] = []
    for _ in range(steps):
        if not pending:
            while len(order) < span:
                order = torch.cat([order, torch.randperm(n, generator=generator)])
            chunk, order = order[:span], order[span:]
            if span > batch_size:
                chunk = chunk[torch.argsort(key[chunk], descending=True, stable=True)]
            pending = list(chunk.split(batch_size))
        yield pending.pop(0)


def _steps(n: int, config: TrainConfig) -> int:
    return max(1, round(config.epochs * n / config.batch_size))


def _fit(
    parameters: list[nn.Parameter],
    loss_of_batch,
    n: int,
    config: TrainConfig,
    name: str,
    log=sys.stderr,
    lengths: Sequence[int] | None = None,
) -> list[float]:
    generator = torch.Generator().manual_seed(config.seed)
    device = parameters[0].device
    # Autocast as LLaVA's --bf16: products in bf16, parameters, optimizer state and the loss in fp32.
    autocast = torch.autocast(device.type, dtype=torch.bfloat16,
                              enabled=resolve_precision(config.precision, device) == "bf16")
    total = _steps(n, config)
    warmup = max(1, round(config.warmup_ratio * total))
    optimizer = torch.optim.AdamW(parameters, lr=config.lr, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: cosine_lr(s, total, warmup))
    losses = []
    batches = _batches(n, config.batch_size, config.epochs, generator, lengths, config.group_by_length)
    for step, index in enumerate(batches):
        with autocast:
            loss = loss_of_batch(index)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        if step % 25 == 0 or step == total - 1:
            print(f"{name} step {step:5d}/{total} loss {losses[-1]:.4f}", file=log)
    return losses


def train_projector(
    llm: nn.Module,
    tokenizer: Tokenizer,
    features: torch.Tensor,
    captions: Sequence[str],
    config: TrainConfig,
    log=sys.stderr,
    pool: int = 1,
    norm: bool = False,
) -> tuple[Projector, list[float]]:
    """Stage 1: a fresh projector (pooling ``pool`` x ``pool`` patch tokens) trained on (features (N, T, D),
    captions), LM frozen."""
    if len(features) != len(captions):
        raise ValueError(f"{len(features)} feature rows but {len(captions)} captions")
    torch.manual_seed(config.seed)
    embed = llm.get_input_embeddings()
    projector = Projector(features.shape[-1], embed.embedding_dim, pool=pool, norm=norm)
    projector.to(embed.weight.device)  # initialised on the CPU first: the same draws on every device
    llm.requires_grad_(False)
    texts = [tokenize_parts(tokenizer, [TextPart(c, True)]) for c in captions]
    texts = fit_to_context(texts, llm, bos_tokens(tokenizer) + projector.n_tokens(features.shape[1]), "caption", log)

    def loss_of_batch(index: torch.Tensor) -> torch.Tensor:
        return batch_loss(llm, projector, features[index], [texts[i] for i in index], tokenizer,
                          config.loss_average)

    losses = _fit(list(projector.parameters()), loss_of_batch, len(captions), config, "stage1", log,
                  [len(ids) for ids, _ in texts])
    projector.eval()
    return projector, losses


@torch.inference_mode()
def caption_loglik(
    llm: nn.Module,
    projector: Projector,
    tokenizer: Tokenizer,
    features: torch.Tensor,
    captions: Sequence[str],
    batch_size: int = 64,
) -> torch.Tensor:
    """A (v3) per pair: (1/T) sum_t log P(y_t | f(I), y_<t), natural log, caption tokens only."""
    texts = [tokenize_parts(tokenizer, [TextPart(c, True)], end_with_eos=False) for c in captions]
    out = [
        sequence_logliks(llm, projector, features[i : i + batch_size], texts[i : i + batch_size], tokenizer)
        for i in range(0, len(texts), batch_size)
    ]
    return torch.cat(out)


def train_mllm(
    llm: nn.Module,
    projector: Projector,
    tokenizer: Tokenizer,
    features: torch.Tensor,
    conversations: Sequence[Sequence[tuple[str, str]]],
    config: TrainConfig,
    log=sys.stderr,
) -> list[float]:
    """Stage 2: projector and LM trained in place on conversations, each the (question, answer) turns about
    one image (``features`` row i is conversation i's image), loss on the answers.

    A conversation of several turns is one sequence, the image's tokens once at its start (LLaVA-665k's
    conversations hold 1 to 30+ turns): every answer carries the loss, each after the earlier turns."""
    if len(features) != len(conversations):
        raise ValueError(f"{len(features)} feature rows but {len(conversations)} conversations")
    torch.manual_seed(config.seed)
    llm.requires_grad_(True)
    llm.train()
    projector.train()
    texts = [tokenize_turns(tokenizer, turns) for turns in conversations]
    texts = fit_to_context(texts, llm, bos_tokens(tokenizer) + projector.n_tokens(features.shape[1]),
                           "conversation", log)

    def loss_of_batch(index: torch.Tensor) -> torch.Tensor:
        return batch_loss(llm, projector, features[index], [texts[i] for i in index], tokenizer,
                          config.loss_average)

    parameters = list(projector.parameters()) + [p for p in llm.parameters() if p.requires_grad]
    losses = _fit(parameters, loss_of_batch, len(conversations), config, "stage2", log,
                  [len(ids) for ids, _ in texts])
    llm.eval()
    projector.eval()
    llm.requires_grad_(False)
    return losses


@torch.inference_mode()
def score_options(
    llm: nn.Module,
    projector: Projector,
    tokenizer: Tokenizer,
    features: torch.Tensor,
    questions: Sequence[str],
    options: Sequence[Sequence[str]],
    batch_size: int = 64,
) -> list[list[float]]:
    """Mean log-likelihood of each option (and ``</s>``) after the image and question."""
    flat: list[tuple[int, tuple[list[int], list[bool]]]] = []
    for row, (question, opts) in enumerate(zip(questions, options)):
        for option in opts:
            flat.append((row, tokenize_parts(tokenizer, [TextPart(question, False), TextPart(option, True)])))
    values: list[float] = []
    for start in range(0, len(flat), batch_size):
        chunk = flat[start : start + batch_size]
        visual = features[torch.tensor([row for row, _ in chunk])]
        values.extend(sequence_logliks(llm, projector, visual, [t for _, t in chunk], tokenizer).tolist())
    out: list[list[float]] = []
    position = 0
    for opts in options:
        out.append(values[position : position + len(opts)])
        position += len(opts)
    return out


def _projector_blob(projector: Projector, record: dict) -> dict:
    """What a projector file holds (stage 1's file and the MLLM folder's): weights, shape, pooling, record."""
    state = {k: v.cpu() for k, v in projector.state_dict().items()}  # a file that loads without the GPU
    return {"state_dict": state, "in_dim": projector.in_dim, "out_dim": projector.out_dim,
            "pool": projector.pool, "norm": projector.normed, "record": record}


def save_projector(path: str, projector: Projector, record: dict) -> None:
    """The projector's weights with what made them (``record``), written atomically."""
    from vislaw.io import atomic_path

    with atomic_path(path) as tmp:
        torch.save(_projector_blob(projector, record), tmp)


def load_projector(path: str) -> tuple[Projector, dict]:
    blob = torch.load(path, map_location="cpu", weights_only=True)
    projector = Projector(blob["in_dim"], blob["out_dim"], pool=blob.get("pool", 1), norm=blob.get("norm", False))
    projector.load_state_dict(blob["state_dict"])
    projector.eval()
    return projector, blob["record"]


def projector_from_llava(path: str, in_dim: int, out_dim: int) -> Projector:
    """A projector from LLaVA's ``mm_projector.bin`` (keys ``model.mm_projector.{0,2}.{weight,bias}``)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    prefix = "model.mm_projector."
    mapped = {f"net.{k[len(prefix):]}": v for k, v in state.items() if k.startswith(prefix)}
    expected = {"net.0.weight", "net.0.bias", "net.2.weight", "net.2.bias"}
    if set(mapped) != expected:
        raise ValueError(f"{path}: not an mlp2x_gelu projector: keys {sorted(state)}")
    projector = Projector(in_dim, out_dim)
    try:
        projector.load_state_dict(mapped)
    except RuntimeError as err:
        raise ValueError(f"{path}: projector shapes do not match encoder width {in_dim} -> LM width {out_dim}: "
                         f"{err}") from None
    projector.eval()
    return projector


def projector_to_llava(projector_pt: str, path: str) -> None:
    """vislaw's projector file as LLaVA's ``mm_projector.bin`` (the inverse of `projector_from_llava`), for
    LLaVA's finetune script (``--pretrain_mm_mlp_adapter``)."""
    projector, _ = load_projector(projector_pt)
    if projector.normed:
        raise ValueError(f"{projector_pt}: an ln_mlp2x_gelu projector has no LLaVA mm_projector.bin form; train "
                         "stage 1 with stage1.projector: mlp2x_gelu for LLaVA's finetune script")
    if projector.pool != 1:
        # the weights would load (pooling has none) and LLaVA would feed them every unpooled token
        raise ValueError(f"{projector_pt}: a projector pooling {projector.pool}x{projector.pool} tokens has no "
                         "LLaVA mm_projector.bin form; train stage 1 with stage1.pool: 1 (and no pool_grid) for "
                         "LLaVA's finetune script")
    state = {f"model.mm_projector.{k[len('net.'):]}": v for k, v in projector.state_dict().items()}
    torch.save(state, path)


@torch.inference_mode()
def generate_answers(
    llm: nn.Module,
    projector: Projector,
    tokenizer: Tokenizer,
    features: torch.Tensor,
    prompts: Sequence[str],
    max_new_tokens: int = 4,
    batch_size: int = 64,
) -> list[str]:
    """Greedy answers after ``<s> [visual] prompt``, each stopped at its ``</s>``.

    ``batch_size`` prompts at a time, right-padded: each new token is read at its row's last real position,
    which (causal attention) sees no padding, so the answers are the one-prompt-at-a-time answers (tested).
    One forward pass per new token over the whole (short) sequences, which is simple and fast enough for
    the mini-world's tiny LM: a 100-question benchmark takes ~4 passes instead of ~300.
    """
    prompt_ids = [tokenize_parts(tokenizer, [TextPart(p, False)], end_with_eos=False)[0] for p in prompts]
    generated: list[list[int]] = [[] for _ in prompts]
    finished = [False] * len(prompts)
    for start in range(0, len(prompts), batch_size):
        rows = range(start, min(len(prompts), start + batch_size))
        for _ in range(max_new_tokens):
            active = [r for r in rows if not finished[r]]
            if not active:
                break
            texts = [(prompt_ids[r] + generated[r], [False] * (len(prompt_ids[r]) + len(generated[r])))
                     for r in active]
            embeds, _, _, attention = build_batch(llm, projector, features[active], texts, tokenizer)
            last = attention.sum(dim=1) - 1
            # logits only from the shortest row's last position on: a real LM's vocabulary (Qwen2's 152k) at
            # every image position would be ~23 GiB for 64 rows of 626 positions
            keep = int(attention.shape[1] - last.min())
            logits = _logits(llm, embeds, attention, keep)
            batch_rows = torch.arange(len(active), device=logits.device)
            next_ids = logits[batch_rows, last - (attention.shape[1] - keep)].argmax(dim=-1)
            for r, next_id in zip(active, next_ids.tolist()):
                if next_id == tokenizer.eos_token_id:
                    finished[r] = True
                else:
                    generated[r].append(int(next_id))
    return [tokenizer.decode(ids).strip() for ids in generated]


def save_mllm(out_dir: str, llm: nn.Module, tokenizer: Tokenizer, projector: Projector,
              record: dict) -> None:
    """A trained MLLM (LM folder + projector) written atomically."""
    from vislaw.io import atomic_dir

    with atomic_dir(out_dir) as tmp:
        llm.save_pretrained(tmp / "llm")
        tokenizer.save_pretrained(tmp / "llm")
        torch.save(_projector_blob(projector, record), tmp / "projector.pt")


def load_mllm(path: str) -> tuple[nn.Module, Tokenizer, Projector]:
    from pathlib import Path

    from vislaw.llm import load_llm

    llm, tokenizer = load_llm(Path(path) / "llm", key=f"MLLM folder {path}")
    projector, _ = load_projector(str(Path(path) / "projector.pt"))
    return llm, tokenizer, projector
