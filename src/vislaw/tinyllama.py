"""A lean Llama in plain torch for the mini-world's language model, reading and writing Hugging Face's
Llama format (``config.json`` + ``model.safetensors`` + ``tokenizer.json``).

Why: every LM job of the default run (stage 1, A, stage 2, one per benchmark evaluation: ~70 jobs) paid
5 s to import transformers before doing a second of work, and transformers' per-layer bookkeeping
(mask building, cache objects) costs more than the arithmetic of a 128-wide model. This module imports
only torch, ``tokenizers`` and ``safetensors``. It implements exactly the subset of Llama that
`vislaw.llm.pretrain_llm` writes (RoPE with the default schedule, full multi-head attention, SiLU-gated
MLP, RMSNorm, tied embeddings) and `supports` says whether a checkpoint is inside that subset; anything
else (a real Vicuna or Qwen) is loaded through transformers. tests/test_tinyllama.py asserts equal logits
to transformers' ``LlamaForCausalLM`` on the same weights.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


@dataclass(frozen=True)
class LlamaShape:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    rms_norm_eps: float
    rope_theta: float


def _rope_theta(config: dict[str, Any]) -> float:
    # transformers 5 nests it in rope_parameters; 4.x wrote rope_theta at the top level.
    return float((config.get("rope_parameters") or {}).get("rope_theta", config.get("rope_theta", 10000.0)))


def supports(config: dict[str, Any]) -> bool:
    """Whether a Hugging Face config is inside the subset this module implements exactly."""
    rope = config.get("rope_parameters") or {}
    heads = config.get("num_attention_heads")
    return (
        config.get("model_type") == "llama"
        and config.get("hidden_act", "silu") == "silu"
        and not config.get("attention_bias", False)
        and not config.get("mlp_bias", False)
        and config.get("num_key_value_heads", heads) == heads
        and config.get("head_dim", config["hidden_size"] // heads) * heads == config["hidden_size"]
        and rope.get("rope_type", "default") == "default"
        and not config.get("rope_scaling")
        and config.get("tie_word_embeddings", False)
        and config.get("pretraining_tp", 1) == 1
        and not config.get("attention_dropout", 0.0)  # no dropout here: stage 2 would train without it
    )


def _right_padded(attention_mask: torch.Tensor) -> bool:
    """Every row is ones then zeros (vislaw's batches); then the causal mask alone is exact."""
    mask = attention_mask.bool()
    return bool((mask[:, 1:] <= mask[:, :-1]).all())


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat([-second, first], dim=-1)


class Attention(nn.Module):
    def __init__(self, shape: LlamaShape) -> None:
        super().__init__()
        width = shape.hidden_size
        self.heads = shape.num_attention_heads
        self.q_proj = nn.Linear(width, width, bias=False)
        self.k_proj = nn.Linear(width, width, bias=False)
        self.v_proj = nn.Linear(width, width, bias=False)
        self.o_proj = nn.Linear(width, width, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        batch, length, width = x.shape

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(batch, length, self.heads, -1).transpose(1, 2)

        q, k, v = split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x))
        q, k = q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin
        # One dtype for q, k and v (under autocast the rotary factors promote q and k to fp32, v stays bf16): the
        # projections' own elsewhere, fp32 on a CPU, whose flash attention runs its bf16 backward 4.7x slower than
        # its fp32 one (bench/MLLM_NOTES.md, session 18).
        dtype = v.dtype
        work = torch.float32 if q.device.type == "cpu" else dtype
        q, k, v = q.to(work), k.to(work), v.to(work)
        with torch.autocast(q.device.type, enabled=False):
            if mask is None:
                out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            else:
                out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        out = out.to(dtype)
        return self.o_proj(out.transpose(1, 2).reshape(batch, length, width))


class Block(nn.Module):
    def __init__(self, shape: LlamaShape) -> None:
        super().__init__()
        self.self_attn = Attention(shape)
        self.input_layernorm = RMSNorm(shape.hidden_size, shape.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(shape.hidden_size, shape.rms_norm_eps)
        self.mlp = nn.ModuleDict({
            "gate_proj": nn.Linear(shape.hidden_size, shape.intermediate_size, bias=False),
            "up_proj": nn.Linear(shape.hidden_size, shape.intermediate_size, bias=False),
            "down_proj": nn.Linear(shape.intermediate_size, shape.hidden_size, bias=False),
        })

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask)
        h = self.post_attention_layernorm(x)
        return x + self.mlp["down_proj"](F.silu(self.mlp["gate_proj"](h)) * self.mlp["up_proj"](h))


class Body(nn.Module):
    """``model.*`` of Hugging Face's LlamaForCausalLM (same parameter names, so state dicts load as is)."""

    def __init__(self, shape: LlamaShape) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(shape.vocab_size, shape.hidden_size)
        self.layers = nn.ModuleList(Block(shape) for _ in range(shape.num_hidden_layers))
        self.norm = RMSNorm(shape.hidden_size, shape.rms_norm_eps)


@dataclass
class CausalLMOutput:
    logits: torch.Tensor
    loss: torch.Tensor | None = None


class TinyLlama(nn.Module):
    """The subset of ``LlamaForCausalLM`` the mini-world uses, with its call signature: ``input_ids`` or
    ``inputs_embeds``, ``attention_mask``, ``logits_to_keep``, ``labels``; returns ``.logits`` (``.loss``)."""

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        if not supports(config):
            raise ValueError("this Llama configuration is outside the lean implementation's subset; "
                             "load it through transformers")
        self.config = dict(config)
        self.shape = LlamaShape(
            vocab_size=config["vocab_size"], hidden_size=config["hidden_size"],
            intermediate_size=config["intermediate_size"], num_hidden_layers=config["num_hidden_layers"],
            num_attention_heads=config["num_attention_heads"], rms_norm_eps=float(config.get("rms_norm_eps", 1e-6)),
            rope_theta=_rope_theta(config))
        self.model = Body(self.shape)
        head_dim = self.shape.hidden_size // self.shape.num_attention_heads
        inv_freq = 1.0 / (self.shape.rope_theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed_tokens

    def _rope(self, length: int, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        angles = torch.outer(torch.arange(length, device=device, dtype=torch.float32), self.inv_freq)
        angles = torch.cat([angles, angles], dim=-1)
        return angles.cos().to(dtype), angles.sin().to(dtype)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        logits_to_keep: int = 0,
        labels: torch.Tensor | None = None,
    ) -> CausalLMOutput:
        x = self.model.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        batch, length, _ = x.shape
        cos, sin = self._rope(length, x.device, x.dtype)
        mask = None
        if attention_mask is not None and not _right_padded(attention_mask):
            # Causal and key-padding together; a padded query still sees position 0 (no all-masked rows).
            # Right padding needs no mask: causality already hides the pads from every real position.
            causal = torch.ones(length, length, dtype=torch.bool, device=x.device).tril()
            mask = (causal[None] & attention_mask.bool()[:, None, :])[:, None]
        for layer in self.model.layers:
            x = layer(x, cos, sin, mask)
        x = self.model.norm(x)
        if logits_to_keep:
            x = x[:, -logits_to_keep:]
        logits = F.linear(x, self.model.embed_tokens.weight)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten())
        return CausalLMOutput(logits=logits, loss=loss)

    def save_pretrained(self, out_dir: str | Path) -> None:
        """``config.json`` and ``model.safetensors`` in Hugging Face's layout (tied head not stored)."""
        from safetensors.torch import save_file

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(self.config, indent=2, sort_keys=True) + "\n")
        state = {k: v.detach().contiguous() for k, v in self.state_dict().items()}
        save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})

    @classmethod
    def from_pretrained(cls, path: str | Path) -> TinyLlama:
        from safetensors.torch import load_file

        path = Path(path)
        model = cls(json.loads((path / "config.json").read_text()))
        state = load_file(str(path / "model.safetensors"))
        state.pop("lm_head.weight", None)  # tied to the embeddings
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(f"{path}/model.safetensors: missing {sorted(missing)}, unexpected {sorted(unexpected)}")
        model.eval()
        return model


class Tokenizer:
    """What vislaw uses of ``PreTrainedTokenizerFast``, over a ``tokenizer.json`` (the ``tokenizers`` library
    alone, without importing transformers)."""

    def __init__(self, path: str | Path) -> None:
        from tokenizers import Tokenizer as RustTokenizer

        self.path = Path(path)
        self.backend = RustTokenizer.from_file(str(self.path / "tokenizer.json"))
        config_file = self.path / "tokenizer_config.json"
        config = json.loads(config_file.read_text()) if config_file.is_file() else {}
        for role in ("bos", "eos", "pad", "unk"):
            token = config.get(f"{role}_token")
            if isinstance(token, dict):
                token = token.get("content")
            setattr(self, f"{role}_token", token)
            setattr(self, f"{role}_token_id", self.backend.token_to_id(token) if token else None)
        if self.pad_token_id is None:
            self.pad_token, self.pad_token_id = self.eos_token, self.eos_token_id

    def __len__(self) -> int:
        return self.backend.get_vocab_size()

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
        return {"input_ids": self.backend.encode(text, add_special_tokens=add_special_tokens).ids}

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        return self.backend.decode(ids, skip_special_tokens=skip_special_tokens)

    def save_pretrained(self, out_dir: str | Path) -> None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        for name in TOKENIZER_FILES:
            if (self.path / name).is_file():
                shutil.copyfile(self.path / name, out / name)
