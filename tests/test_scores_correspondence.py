"""C score: known answers for the soft-argmax, the oracle, and the two averagings."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from vislaw.scores.correspondence import (
    CorrespondenceProtocol,
    PairBatch,
    evaluate_pairs,
    patch_index,
    predict_keypoints,
    window_soft_argmax,
)

FRAME = 840.0


def oracle_features(n_images: int, grid: tuple[int, int]) -> torch.Tensor:
    """Features that encode position: the token of patch i is the i-th unit vector."""
    tokens = torch.eye(grid[0] * grid[1])
    return tokens.unsqueeze(0).repeat(n_images, 1, 1)


def test_patch_index_by_hand() -> None:
    points = torch.tensor([[0.0, 0.0], [839.9, 839.9], [840.0, 0.0], [105.0, 52.5], [104.9, 52.4]])
    # 8 x 8 grid over 840 px: 105 px patches
    assert patch_index(points, (8, 8), FRAME).tolist() == [0, 63, 7, 1, 0]


def test_window_soft_argmax_hand_computed() -> None:
    # 1 x 3 grid, temperature 0.02: scores [0.02 ln 2, 0, 0] give weights [1/2, 1/4, 1/4] over the patch
    # centres x = 140, 420, 700: expected x = 70 + 105 + 175 = 350; the single row's centre is y = 420.
    similarity = torch.tensor([[0.02 * math.log(2.0), 0.0, 0.0]], dtype=torch.float64)
    xy = window_soft_argmax(similarity, (1, 3), window=11, temperature=0.02, frame_size=FRAME)
    torch.testing.assert_close(xy, torch.tensor([[350.0, 420.0]], dtype=torch.float64))


def test_window_is_clipped_around_the_arg_max() -> None:
    # 1 x 20 grid, window 3: only columns 9..11 around the maximum at 10 count, however large col 0 is.
    similarity = torch.zeros(1, 20, dtype=torch.float64)
    similarity[0, 10] = 0.02 * math.log(2.0)
    similarity[0, 0] = 0.013  # just below the maximum (0.0139), outside the window
    xy = window_soft_argmax(similarity, (1, 20), window=3, temperature=0.02, frame_size=FRAME)
    # weights 1/4, 1/2, 1/4 over columns 9, 10, 11: centred on column 10's centre, 10.5 * 42
    torch.testing.assert_close(xy[0, 0], torch.tensor(10.5 * 42.0, dtype=torch.float64))


def identity_pairs(n: int, grid: tuple[int, int], rng: np.random.Generator) -> PairBatch:
    kps = rng.uniform(0, FRAME, size=(n, 5, 2))
    return PairBatch(
        src_index=np.arange(n), trg_index=np.arange(n), src_kps=kps, trg_kps=kps.copy(),
        kp_mask=np.ones((n, 5), dtype=bool), trg_bbox=np.tile([0.0, 0.0, FRAME, FRAME], (n, 1)),
        categories=["cat"] * n,
    )


def test_oracle_features_on_identity_pairs_score_100() -> None:
    grid = (16, 16)  # 52.5 px patches: the patch-centre error (< 37.2 px) is below 0.10 x 840 = 84 px
    pairs = identity_pairs(6, grid, np.random.default_rng(0))
    result = evaluate_pairs(oracle_features(6, grid), grid, pairs, CorrespondenceProtocol())
    assert result.pck(0.10) == pytest.approx(100.0)
    assert result.per_keypoint_pck(0.10) == pytest.approx(100.0)


def test_constant_features_fail_far_keypoints() -> None:
    # every patch alike: the arg-max is patch 0, so keypoints far from the top-left corner are wrong
    grid = (16, 16)
    pairs = identity_pairs(4, grid, np.random.default_rng(1))
    pairs = PairBatch(**{**pairs.__dict__, "trg_kps": np.full_like(pairs.trg_kps, 800.0)})
    result = evaluate_pairs(torch.ones(4, 256, 8), grid, pairs, CorrespondenceProtocol())
    assert result.pck(0.10) == 0.0


def test_per_image_versus_per_keypoint_averaging() -> None:
    # Pair 0 (cat a): 1 keypoint, correct. Pair 1 (cat b): 4 keypoints, 1 correct (3 targets moved away).
    grid = (8, 8)
    src = np.array([[[100.0, 100.0], [0, 0], [0, 0], [0, 0]],
                    [[100.0, 100.0], [300.0, 300.0], [500.0, 500.0], [700.0, 700.0]]])
    trg = src.copy()
    trg[1, 1:] += 300.0  # 424 px away at least, far beyond 0.10 x 840
    pairs = PairBatch(
        src_index=np.array([0, 1]), trg_index=np.array([0, 1]), src_kps=src, trg_kps=trg,
        kp_mask=np.array([[True, False, False, False], [True, True, True, True]]),
        trg_bbox=np.array([[0.0, 0.0, 840.0, 840.0]] * 2), categories=["a", "b"],
        kp_ids=np.array([[0, 0, 0, 0], [0, 1, 2, 3]]),
    )
    result = evaluate_pairs(oracle_features(2, grid), grid, pairs, CorrespondenceProtocol())
    np.testing.assert_allclose(result.per_image_pck(0.10), [1.0, 0.25])
    assert result.per_category(0.10) == {"a": (100.0, 1), "b": (25.0, 1)}
    assert result.pck(0.10) == pytest.approx(62.5)  # (100 + 25) / 2
    assert result.per_keypoint_pck(0.10) == pytest.approx(40.0)  # 2 of 5
    assert result.per_keypoint_id(0.10) == {"a/0": 100.0, "b/0": 100.0, "b/1": 0.0, "b/2": 0.0, "b/3": 0.0}


def test_categories_are_pairs_weighted() -> None:
    grid = (8, 8)
    rng = np.random.default_rng(2)
    pairs = identity_pairs(3, grid, rng)
    trg = pairs.trg_kps.copy()
    trg[2] = np.where(trg[2] > 420, trg[2] - 400, trg[2] + 400)  # pair 2 all wrong
    pairs = PairBatch(**{**pairs.__dict__, "trg_kps": trg, "categories": ["a", "a", "b"]})
    result = evaluate_pairs(oracle_features(3, grid), grid, pairs, CorrespondenceProtocol())
    # category a: 100 over 2 pairs, b: 0 over 1 pair -> (2 * 100 + 1 * 0) / 3
    assert result.pck(0.10) == pytest.approx(200.0 / 3.0)


def test_threshold_uses_the_target_box() -> None:
    grid = (8, 8)
    src = np.array([[[420.0, 420.0]]])
    trg = np.array([[[470.0, 420.0]]])  # the prediction (patch centre 472.5, 472.5) is ~52.6 px from it
    base = dict(src_index=np.array([0]), trg_index=np.array([0]), src_kps=src + 52.5, trg_kps=trg,
                kp_mask=np.ones((1, 1), bool), categories=["a"])
    big = PairBatch(trg_bbox=np.array([[0.0, 0.0, 600.0, 100.0]]), **base)  # 0.10 x 600 = 60 px: correct
    small = PairBatch(trg_bbox=np.array([[0.0, 0.0, 500.0, 100.0]]), **base)  # 50 px: wrong
    features = oracle_features(1, grid)
    assert evaluate_pairs(features, grid, big, CorrespondenceProtocol()).pck(0.10) == 100.0
    assert evaluate_pairs(features, grid, small, CorrespondenceProtocol()).pck(0.10) == 0.0


@pytest.mark.parametrize("bad", [{"window": 4}, {"temperature": 0.0}, {"alphas": (1.5,)},
                                 {"threshold_basis": "image"}])
def test_bad_protocol_is_refused(bad: dict) -> None:
    with pytest.raises(ValueError, match="c_score"):
        CorrespondenceProtocol(**bad)


def test_batching_does_not_change_results() -> None:
    grid = (8, 8)
    rng = np.random.default_rng(3)
    features = torch.from_numpy(rng.normal(size=(10, 64, 16)).astype(np.float32))
    kps = rng.uniform(0, FRAME, size=(10, 4, 2))
    pairs = PairBatch(src_index=np.arange(10), trg_index=np.arange(10)[::-1].copy(), src_kps=kps,
                      trg_kps=rng.uniform(0, FRAME, size=(10, 4, 2)), kp_mask=np.ones((10, 4), bool),
                      trg_bbox=np.tile([0.0, 0.0, 840.0, 840.0], (10, 1)), categories=["a"] * 10)
    whole = evaluate_pairs(features, grid, pairs, CorrespondenceProtocol(), batch_size=100)
    pieces = evaluate_pairs(features, grid, pairs, CorrespondenceProtocol(), batch_size=3)
    for alpha in (0.10, 0.05, 0.01):
        np.testing.assert_array_equal(whole.correct[alpha], pieces.correct[alpha])


def random_pairs(rng: np.random.Generator, n_images: int, n_pairs: int, width: int = 6) -> PairBatch:
    counts = rng.integers(1, width + 1, n_pairs)
    mask = np.arange(width)[None, :] < counts[:, None]
    corner = rng.uniform(0, 500, (n_pairs, 2))
    return PairBatch(src_index=rng.integers(0, n_images, n_pairs), trg_index=rng.integers(0, n_images, n_pairs),
                     src_kps=rng.uniform(0, FRAME, (n_pairs, width, 2)),
                     trg_kps=rng.uniform(0, FRAME, (n_pairs, width, 2)),
                     kp_mask=mask, trg_bbox=np.concatenate([corner, corner + rng.uniform(50, 340, (n_pairs, 2))], 1),
                     categories=[("cat", "dog", "bus")[i] for i in rng.integers(0, 3, n_pairs)],
                     kp_ids=np.where(mask, rng.integers(0, 4, (n_pairs, width)), -1))


def test_predictions_match_a_float64_reference_from_float16_features() -> None:
    """Gathered tokens are normalised in float32 whatever the storage dtype: float16 caches score like float64."""
    grid = (6, 6)
    rng = np.random.default_rng(7)
    stored = rng.normal(size=(5, 36, 24)).astype(np.float16)
    pairs = random_pairs(rng, 5, 12)
    protocol = CorrespondenceProtocol()
    predicted = predict_keypoints(torch.from_numpy(stored), grid, torch.as_tensor(pairs.src_index),
                                  torch.as_tensor(pairs.trg_index), torch.as_tensor(pairs.src_kps, dtype=torch.float32),
                                  protocol)
    unit = torch.from_numpy(stored.astype(np.float64))
    unit = unit / unit.norm(dim=-1, keepdim=True)
    cells = patch_index(torch.as_tensor(pairs.src_kps), grid, FRAME)
    src = unit[torch.as_tensor(pairs.src_index)].gather(1, cells.unsqueeze(-1).expand(-1, -1, 24))
    similarity = torch.einsum("pkd,pnd->pkn", src, unit[torch.as_tensor(pairs.trg_index)])
    expected = window_soft_argmax(similarity, grid, protocol.window, protocol.temperature, FRAME)
    np.testing.assert_allclose(predicted.double().numpy(), expected.numpy(), atol=1e-3)


def test_per_keypoint_id_equals_masked_means() -> None:
    rng = np.random.default_rng(11)
    pairs = random_pairs(rng, 8, 60)
    result = evaluate_pairs(torch.from_numpy(rng.normal(size=(8, 64, 16)).astype(np.float32)), (8, 8), pairs,
                            CorrespondenceProtocol())
    cats = np.repeat(np.asarray(result.categories)[:, None], result.kp_mask.shape[1], axis=1)
    expected = {}
    for cat, kp in sorted({(c, int(k)) for c, k in zip(cats[result.kp_mask], result.kp_ids[result.kp_mask])}):
        selected = result.kp_mask & (cats == cat) & (result.kp_ids == kp)
        expected[f"{cat}/{kp}"] = 100.0 * float(result.correct[0.10][selected].mean())
    assert result.per_keypoint_id(0.10) == expected and list(result.per_keypoint_id(0.10)) == list(expected)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_gpu_scores_equal_cpu_scores() -> None:
    rng = np.random.default_rng(13)
    features = torch.from_numpy(rng.normal(size=(20, 64, 32)).astype(np.float16))
    pairs = random_pairs(rng, 20, 200)
    cpu = evaluate_pairs(features, (8, 8), pairs, CorrespondenceProtocol())
    gpu = evaluate_pairs(features.cuda(), (8, 8), pairs, CorrespondenceProtocol())
    for alpha in (0.10, 0.05, 0.01):
        np.testing.assert_array_equal(gpu.correct[alpha], cpu.correct[alpha])
