"""C score: zero-shot semantic correspondence on SPair-71k-style pairs (METHOD.md, "C score").

For each source keypoint, the feature of the patch containing it is compared by cosine similarity with
every target patch; the prediction is a window soft-argmax around the best match (an 11x11-patch window,
softmax temperature 0.02), mapped back to patch centres in the square frame. A keypoint is correct when
its prediction lies within ``alpha * max(h, w)`` of the target's bounding box (same frame).

C = PCK@0.10 per image (the fraction of a pair's keypoints that are correct), averaged over the pairs of
each category, then averaged over categories weighted by their pair counts (x100). Also reported: PCK at
other thresholds and per-keypoint PCK (all keypoints pooled).

Everything is batched over pairs and keypoints as tensor products, so the same code runs on a GPU for
SPair-71k's 12,234 test pairs and on the CPU for the tests.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch


@dataclass(frozen=True)
class CorrespondenceProtocol:
    """How keypoints are predicted and judged; recorded with every C score."""

    frame_size: float = 840.0  # keypoints and boxes live in the padded square frame scaled to this size
    window: int = 11  # soft-argmax window, in patches (odd)
    temperature: float = 0.02
    alphas: tuple[float, ...] = (0.10, 0.05, 0.01)  # PCK thresholds; the first is the C score
    threshold_basis: str = "bbox"  # max(h, w) of the target bounding box

    def __post_init__(self) -> None:
        if self.window < 1 or self.window % 2 == 0:
            raise ValueError(f"c_score.window: must be a positive odd number of patches, got {self.window}")
        if not self.temperature > 0:
            raise ValueError(f"c_score.temperature: must be > 0, got {self.temperature}")
        if self.threshold_basis != "bbox":
            raise ValueError(f"c_score.threshold_basis: only 'bbox' is supported, got {self.threshold_basis!r}")
        if not self.alphas or any(not 0 < a < 1 for a in self.alphas):
            raise ValueError(f"c_score.alphas: thresholds must lie in (0, 1), got {self.alphas}")


@dataclass(frozen=True)
class PairBatch:
    """Pairs as indices into a feature array, with keypoints padded to a common count.

    All coordinates are (x, y) in the square frame of size ``frame_size``.
    """

    src_index: np.ndarray  # (P,) image index of each pair's source in the feature array
    trg_index: np.ndarray  # (P,)
    src_kps: np.ndarray  # (P, K, 2)
    trg_kps: np.ndarray  # (P, K, 2)
    kp_mask: np.ndarray  # (P, K) bool: real keypoints
    trg_bbox: np.ndarray  # (P, 4) x1, y1, x2, y2
    categories: Sequence[str]  # (P,)
    kp_ids: np.ndarray | None = field(default=None)  # (P, K) semantic keypoint id, for per-keypoint PCK


def patch_index(points: torch.Tensor, grid: tuple[int, int], frame_size: float) -> torch.Tensor:
    """Flat index (row * w + col) of the patch containing each (x, y) point of the frame."""
    h, w = grid
    col = torch.clamp(torch.floor(points[..., 0] * (w / frame_size)), 0, w - 1).long()
    row = torch.clamp(torch.floor(points[..., 1] * (h / frame_size)), 0, h - 1).long()
    return row * w + col


def window_soft_argmax(
    similarity: torch.Tensor, grid: tuple[int, int], window: int, temperature: float, frame_size: float
) -> torch.Tensor:
    """Expected (x, y) in the frame under a softmax over the ``window`` x ``window`` patches around the
    arg-max of ``similarity`` (..., h*w); the window is clipped at the grid's border."""
    h, w = grid
    flat = similarity.argmax(dim=-1)
    row0, col0 = flat // w, flat % w
    rows = torch.arange(h, device=similarity.device).repeat_interleave(w)  # (h*w,)
    cols = torch.arange(w, device=similarity.device).repeat(h)
    half = window // 2
    inside = ((rows - row0.unsqueeze(-1)).abs() <= half) & ((cols - col0.unsqueeze(-1)).abs() <= half)
    logits = (similarity / temperature).masked_fill(~inside, float("-inf"))
    weights = torch.softmax(logits, dim=-1)
    # patch centres of the frame
    x = (cols.to(similarity.dtype) + 0.5) * (frame_size / w)
    y = (rows.to(similarity.dtype) + 0.5) * (frame_size / h)
    return torch.stack([(weights * x).sum(-1), (weights * y).sum(-1)], dim=-1)


def predict_keypoints(
    features: torch.Tensor,
    grid: tuple[int, int],
    src_index: torch.Tensor,
    trg_index: torch.Tensor,
    src_kps: torch.Tensor,
    protocol: CorrespondenceProtocol,
) -> torch.Tensor:
    """Predicted target (x, y) for each source keypoint. ``features``: (N, h*w, D) in any float dtype.

    Only the source keypoints' tokens and the target images' tokens are gathered, then L2-normalised per
    token and compared in float32 (one batched matrix product), on whatever device ``features`` is on: the
    GPU and the CPU compute the same numbers up to float32 rounding.
    """
    src_cells = patch_index(src_kps, grid, protocol.frame_size)  # (P, K)
    src_vectors = l2_normalise(features[src_index.unsqueeze(-1), src_cells].float())  # (P, K, D)
    trg_tokens = l2_normalise(features[trg_index].float())  # (P, h*w, D)
    similarity = torch.bmm(src_vectors, trg_tokens.transpose(1, 2))  # (P, K, h*w)
    return window_soft_argmax(similarity, grid, protocol.window, protocol.temperature, protocol.frame_size)


def l2_normalise(tokens: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    return tokens / tokens.norm(dim=-1, keepdim=True).clamp_min(eps)


@dataclass(frozen=True)
class CorrespondenceResult:
    """Per-pair correctness at each threshold, and the aggregates of METHOD.md."""

    correct: dict[float, np.ndarray]  # alpha -> (P, K) bool (False where padded)
    kp_mask: np.ndarray
    categories: tuple[str, ...]
    kp_ids: np.ndarray | None

    def per_image_pck(self, alpha: float) -> np.ndarray:
        """(P,) fraction of each pair's keypoints that are correct."""
        counts = self.kp_mask.sum(axis=1)
        return self.correct[alpha].sum(axis=1) / counts

    def per_category(self, alpha: float) -> dict[str, tuple[float, int]]:
        """category -> (mean per-image PCK x100, number of pairs)."""
        pck = self.per_image_pck(alpha)
        cats = np.asarray(self.categories)
        return {c: (100.0 * float(pck[cats == c].mean()), int((cats == c).sum())) for c in sorted(set(cats))}

    def pck(self, alpha: float) -> float:
        """Per-image PCK averaged per category, then pairs-weighted over categories, x100."""
        per_cat = self.per_category(alpha)
        total = sum(n for _, n in per_cat.values())
        return sum(value * n for value, n in per_cat.values()) / total

    def per_keypoint_pck(self, alpha: float) -> float:
        """All keypoints pooled, x100."""
        return 100.0 * float(self.correct[alpha][self.kp_mask].mean())

    def per_keypoint_id(self, alpha: float) -> dict[str, float]:
        """(category, keypoint id) -> PCK x100 over that semantic keypoint, if ids were given.

        One pass of counting over integer (category, id) codes: SPair's 12,234 pairs hold a few hundred
        such keys, and a mask per key would scan every keypoint once per key.
        """
        if self.kp_ids is None:
            return {}
        names, codes = np.unique(np.asarray(self.categories), return_inverse=True)
        cats = np.repeat(codes.reshape(-1, 1), self.kp_mask.shape[1], axis=1)[self.kp_mask]
        keys, inverse = np.unique(np.stack([cats, self.kp_ids[self.kp_mask].astype(np.int64)], axis=1), axis=0,
                                  return_inverse=True)
        inverse = inverse.reshape(-1)
        hits = np.bincount(inverse, weights=self.correct[alpha][self.kp_mask], minlength=len(keys))
        totals = np.bincount(inverse, minlength=len(keys))
        return {f"{names[c]}/{int(k)}": 100.0 * float(h / n) for (c, k), h, n in zip(keys, hits, totals)}


def evaluate_pairs(
    features: torch.Tensor,
    grid: tuple[int, int],
    pairs: PairBatch,
    protocol: CorrespondenceProtocol,
    batch_size: int = 512,
) -> CorrespondenceResult:
    """Judge every keypoint of ``pairs`` against features (N, h*w, D) of the images they index.

    ``features`` (any float dtype, on the device to compute on) are L2-normalised per token in float32
    (METHOD), as they are gathered; pairs are processed ``batch_size`` at a time to bound the gathered
    (pairs x patches x channels) target tokens.
    """
    if features.ndim != 3 or features.shape[1] != grid[0] * grid[1]:
        raise ValueError(f"features of shape {tuple(features.shape)} do not match grid {grid}")
    device = features.device
    mask = np.asarray(pairs.kp_mask, dtype=bool)
    if (mask.sum(axis=1) == 0).any():
        raise ValueError("a pair has no keypoints: drop it before scoring")
    bbox = np.asarray(pairs.trg_bbox, dtype=np.float64)
    threshold_base = np.maximum(bbox[:, 2] - bbox[:, 0], bbox[:, 3] - bbox[:, 1])  # (P,)
    predictions = []
    for start in range(0, len(mask), batch_size):
        sl = slice(start, start + batch_size)
        pred = predict_keypoints(
            features,
            grid,
            torch.as_tensor(pairs.src_index[sl], device=device),
            torch.as_tensor(pairs.trg_index[sl], device=device),
            torch.as_tensor(np.asarray(pairs.src_kps[sl], dtype=np.float32), device=device),
            protocol,
        )
        predictions.append(pred)
    predicted = torch.cat(predictions).double().cpu().numpy()  # one transfer, no synchronisation per batch
    distance = np.linalg.norm(predicted - np.asarray(pairs.trg_kps, dtype=np.float64), axis=-1)  # (P, K)
    correct = {a: (distance < a * threshold_base[:, None]) & mask for a in protocol.alphas}
    kp_ids = None if pairs.kp_ids is None else np.asarray(pairs.kp_ids)
    return CorrespondenceResult(correct=correct, kp_mask=mask, categories=tuple(pairs.categories), kp_ids=kp_ids)


def pair_batch(pairs: Sequence, row_of: dict[str, int], frame_size: float) -> PairBatch:
    """SPair pairs (`vislaw.data.spair.SpairPair`) as a batch over feature rows, coordinates in the frame.

    Keypoints and boxes go into each image's zero-padded square frame scaled to ``frame_size``; the
    features of a ``stretch`` encoder are then off this frame exactly as in the paper's code, which is
    what that option exists to replicate.
    """
    from vislaw.encoders.frame import SquareFrame

    if not pairs:
        raise ValueError("no pairs to score")
    width = max(len(p.src_kps) for p in pairs)
    n = len(pairs)
    src = np.zeros((n, width, 2))
    trg = np.zeros((n, width, 2))
    mask = np.zeros((n, width), dtype=bool)
    ids = np.full((n, width), -1, dtype=np.int64)
    boxes = np.zeros((n, 4))
    for i, pair in enumerate(pairs):
        k = len(pair.src_kps)
        src_frame = SquareFrame(*pair.src_size, mode="pad")
        trg_frame = SquareFrame(*pair.trg_size, mode="pad")
        src[i, :k] = src_frame.to_frame(pair.src_kps, frame_size)
        trg[i, :k] = trg_frame.to_frame(pair.trg_kps, frame_size)
        mask[i, :k] = True
        ids[i, :k] = pair.kps_ids
        boxes[i] = trg_frame.to_frame(np.asarray(pair.trg_bbox).reshape(2, 2), frame_size).reshape(4)
    missing = sorted({k for p in pairs for k in (p.src_key, p.trg_key) if k not in row_of})
    if missing:
        raise KeyError(f"no features for image(s) {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    return PairBatch(
        src_index=np.array([row_of[p.src_key] for p in pairs]),
        trg_index=np.array([row_of[p.trg_key] for p in pairs]),
        src_kps=src, trg_kps=trg, kp_mask=mask, trg_bbox=boxes,
        categories=[p.category for p in pairs], kp_ids=ids,
    )


def score_spair(
    features: np.ndarray | torch.Tensor,
    image_ids: Sequence[str],
    grid: tuple[int, int],
    pairs: Sequence,
    protocol: CorrespondenceProtocol,
    device: str | torch.device = "cpu",
) -> dict:
    """The C score record of METHOD.md for ``pairs`` given the features (N, h*w, D) of ``image_ids``."""
    batch = pair_batch(pairs, {image_id: row for row, image_id in enumerate(image_ids)}, protocol.frame_size)
    tokens = torch.as_tensor(np.asarray(features)).to(device)
    return c_record(evaluate_pairs(tokens, grid, batch, protocol), protocol)


def c_record(result: CorrespondenceResult, protocol: CorrespondenceProtocol) -> dict:
    """The C score record of METHOD.md from judged pairs: C, PCK per threshold, per category and keypoint."""
    main = protocol.alphas[0]
    return {
        "C": result.pck(main),
        "pck": {f"{a:g}": result.pck(a) for a in protocol.alphas},
        "per_keypoint_pck": {f"{a:g}": result.per_keypoint_pck(a) for a in protocol.alphas},
        "per_category": {
            category: {"pck": value, "pairs": n} for category, (value, n) in result.per_category(main).items()
        },
        "per_keypoint_id": result.per_keypoint_id(main),
        "n_pairs": len(result.categories),
        "n_keypoints": int(result.kp_mask.sum()),
    }
