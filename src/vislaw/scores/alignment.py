"""A score: cross-modal alignment (METHOD.md, "A score"), in its two published definitions.

- ``caption_loglik`` (v3, default): the mean per-token natural log-likelihood of the caption tokens given
  the projected visual tokens and the preceding caption tokens, under the frozen stage-1 model, averaged
  over the probe pairs. Higher is better; values are negative.
- ``cosine_to_reference`` (v1): for one image, L2-normalise the projected visual tokens of the target and
  of a reference encoder; for each target token take the best cosine over the reference tokens; average
  over target tokens (asymmetric, which handles different token counts), then over images, then over the
  references.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def token_logliks(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-sequence mean log-probability of the masked tokens.

    ``logits`` (B, T, V) are the model's outputs at positions 0..T-1; position t predicts token t+1, as in
    causal LMs, so ``labels`` (B, T) and ``mask`` (B, T) are indexed by the predicted token's position.
    Returns (B,): (1/T_b) * sum_t log P(y_t | ...), over the positions where ``mask`` is true.
    """
    logprobs = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    target = labels[:, 1:]
    keep = mask[:, 1:].to(logprobs.dtype)
    picked = torch.gather(logprobs, -1, target.clamp_min(0).unsqueeze(-1)).squeeze(-1)
    counts = keep.sum(dim=1)
    if (counts == 0).any():
        raise ValueError("a caption has no tokens to score")
    return (picked * keep).sum(dim=1) / counts


def max_cosine(target: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Mean over target tokens (T1, D) of the best cosine similarity with any reference token (T2, D)."""
    t = target / target.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    r = reference / reference.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return (t @ r.T).max(dim=-1).values.mean()


def cosine_to_reference(targets: Sequence[torch.Tensor], references: dict[str, Sequence[torch.Tensor]]) -> dict:
    """v1 A: ``targets`` are one image's projected tokens each; ``references`` maps a reference name to its
    projected tokens of the same images. Returns the score and its per-reference components."""
    if not references:
        raise ValueError("a_score.references: at least one reference encoder is needed")
    components = {}
    for name, ref_tokens in references.items():
        if len(ref_tokens) != len(targets):
            raise ValueError(f"reference {name!r} has {len(ref_tokens)} images, the target {len(targets)}")
        per_image = torch.stack([max_cosine(t.float(), r.float()) for t, r in zip(targets, ref_tokens)])
        components[name] = float(per_image.mean())
    return {"A": sum(components.values()) / len(components), "components": components}
