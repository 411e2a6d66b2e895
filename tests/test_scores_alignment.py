"""A score: the cosine to references on hand-written tensors, and the log-likelihood against a loop."""

from __future__ import annotations

import math

import pytest
import torch

from vislaw.scores.alignment import cosine_to_reference, max_cosine, token_logliks


def test_max_cosine_by_hand() -> None:
    target = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    reference = torch.tensor([[1.0, 1.0], [3.0, 0.0], [-1.0, 0.0]])
    # token 1 (x axis): best is [3, 0] -> 1; token 2 (y axis): best is [1, 1] -> 1/sqrt(2)
    assert float(max_cosine(target, reference)) == pytest.approx((1 + 1 / math.sqrt(2)) / 2)
    # asymmetric: reference tokens against the target
    # [1,1] -> 1/sqrt2, [3,0] -> 1, [-1,0] -> max(-1, 0) = 0
    assert float(max_cosine(reference, target)) == pytest.approx((1 / math.sqrt(2) + 1 + 0) / 3)


def test_cosine_to_reference_averages_images_then_references() -> None:
    x, y = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    targets = [x, x]
    refs = {"r224": [x, y], "r336": [x, x]}  # r224: image 1 -> 1, image 2 -> 0; r336: 1, 1
    out = cosine_to_reference(targets, refs)
    assert out["components"] == {"r224": pytest.approx(0.5), "r336": pytest.approx(1.0)}
    assert out["A"] == pytest.approx(0.75)
    with pytest.raises(ValueError, match="reference 'r224' has 1 images"):
        cosine_to_reference(targets, {"r224": [x]})


def test_token_logliks_equal_a_manual_loop() -> None:
    torch.manual_seed(0)
    batch, length, vocab = 3, 7, 11
    logits = torch.randn(batch, length, vocab, dtype=torch.float64)
    labels = torch.randint(0, vocab, (batch, length))
    mask = torch.zeros(batch, length, dtype=torch.bool)
    mask[0, 2:] = True  # caption tokens after a 2-token prefix (the visual tokens, say)
    mask[1, 4:6] = True
    mask[2, 1:] = True
    got = token_logliks(logits, labels, mask)
    for b in range(batch):
        total, count = 0.0, 0
        for t in range(1, length):
            if mask[b, t]:
                # token t is predicted from position t - 1
                total += math.log(torch.softmax(logits[b, t - 1], dim=-1)[labels[b, t]].item())
                count += 1
        assert got[b].item() == pytest.approx(total / count, rel=1e-6)


def test_a_caption_with_no_scored_tokens_is_an_error() -> None:
    with pytest.raises(ValueError, match="no tokens"):
        token_logliks(torch.zeros(1, 3, 4), torch.zeros(1, 3, dtype=torch.long), torch.zeros(1, 3, dtype=torch.bool))
