"""The contrastive objective's text side: a word tokenizer and a tiny transformer caption encoder.

Captions of the mini-world are short and use a closed vocabulary, so whole words are the tokens: the
vocabulary is every word of the training captions (sorted, so it depends only on the captions).
A transformer rather than a bag of words, because captions bind attributes to objects by word order
("a red star above a blue fish" differs from "a blue star above a red fish").
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch
from torch import nn

PAD, UNK = "<pad>", "<unk>"
_WORD = re.compile(r"[a-z0-9]+")


def words(caption: str) -> list[str]:
    return _WORD.findall(caption.lower())


def build_vocabulary(captions: Sequence[str]) -> list[str]:
    return [PAD, UNK, *sorted({w for c in captions for w in words(c)})]


def encode_captions(captions: Sequence[str], vocabulary: Sequence[str], max_len: int) -> torch.Tensor:
    """(N, max_len) token ids, padded with 0 and cut at ``max_len``."""
    index = {w: i for i, w in enumerate(vocabulary)}
    ids = torch.zeros(len(captions), max_len, dtype=torch.long)
    for row, caption in enumerate(captions):
        tokens = [index.get(w, 1) for w in words(caption)][:max_len]
        ids[row, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
    return ids


class CaptionEncoder(nn.Module):
    """Word embeddings + learned positions -> a few transformer layers -> masked mean -> linear."""

    def __init__(self, vocab_size: int, max_len: int, dim: int = 64, depth: int = 2, heads: int = 2,
                 out_dim: int = 64) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, dim, padding_idx=0)
        self.pos = nn.Parameter(torch.randn(1, max_len, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=2 * dim, dropout=0.0, batch_first=True,
                                           norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.proj = nn.Linear(dim, out_dim)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        pad = ids == 0
        hidden = self.encoder(self.embed(ids) + self.pos[:, : ids.shape[1]], src_key_padding_mask=pad)
        keep = (~pad).unsqueeze(-1).float()
        pooled = (self.norm(hidden) * keep).sum(1) / keep.sum(1).clamp_min(1.0)
        return self.proj(pooled)
