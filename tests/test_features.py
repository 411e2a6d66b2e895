"""The HDF5 feature cache: layout, recorded protocol, atomic writes, and refusal of other protocols."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

from tests.tiny_checkpoints import build_all, hf_spec
from vislaw import loader
from vislaw.encoders import EncoderSpec, create_encoder, load_framed
from vislaw.encoders.concat import PART_INPUT_RESIZE
from vislaw.encoders.hf import HFEncoder
from vislaw.features import (
    CacheMismatchError,
    extract_to_h5,
    extraction_protocol,
    open_cache,
    protocol_hash,
    read_features,
)

SIZES = [(40, 30), (30, 40), (32, 32), (50, 20), (20, 50), (33, 31)]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build_all(tmp_path_factory.mktemp("ckpt"))


@pytest.fixture(scope="module")
def image_paths(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    paths = []
    for i, (w, h) in enumerate(SIZES):
        path = root / f"img{i}.png"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def cache(ckpt: dict[str, Path], image_paths: list[Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("features") / "tiny_clip" / "world.h5"
    extract_to_h5(hf_spec("clip", ckpt["clip"]), image_paths, out, dataset_fingerprint="fp1", batch_size=4,
                  device="cpu")
    return out


def test_layout_and_values(cache: Path, ckpt: dict[str, Path], image_paths: list[Path]) -> None:
    spec = hf_spec("clip", ckpt["clip"])
    with h5py.File(cache, "r") as h5:
        tokens = h5["tokens"]
        assert tokens.dtype == np.float16 and tokens.shape == (6, 16, 32) and tokens.chunks == (1, 16, 32)
        assert [s.decode() for s in h5["image_ids"][()]] == [f"img{i}" for i in range(6)]
        attrs = dict(h5.attrs)
        stored = tokens[()]
    protocol = json.loads(attrs["protocol"])
    assert protocol["grid"] == [4, 4] and protocol["layer"] == -2 and protocol["image_size"] == 32
    assert protocol["dtype"] == "float16" and protocol["preprocessing"]["frame"] == "pad"
    assert protocol["dataset_fingerprint"] == "fp1" == attrs["dataset_fingerprint"]
    assert attrs["protocol_hash"] == protocol_hash(protocol)
    assert json.loads(attrs["spec"])["name"] == "tiny_clip"
    assert {"vislaw", "torch", "transformers", "timm"} <= set(json.loads(attrs["library_versions"]))
    with torch.inference_mode():
        expected = create_encoder(spec).tokens(load_framed(image_paths, 32))[-2].numpy()
    np.testing.assert_allclose(stored.astype(np.float32), expected, atol=2e-3, rtol=2e-3)


def test_reader_returns_requested_ids(cache: Path, ckpt: dict[str, Path]) -> None:
    expect = extraction_protocol(hf_spec("clip", ckpt["clip"]), "fp1")
    with open_cache(cache, expect) as features:
        everything = features.read([f"img{i}" for i in range(6)])
        assert features.grid == (4, 4)
    picked = read_features(cache, ["img3", "img0", "img3"], expect)
    np.testing.assert_array_equal(picked, everything[[3, 0, 3]])
    with pytest.raises(KeyError, match="img9"):
        read_features(cache, ["img9"], expect)


def test_cached_rows_read_a_batch_at_a_time_in_the_given_order(cache: Path, ckpt: dict[str, Path]) -> None:
    """What stage 1 and 2 index: rows of an image list (repeats allowed, as one image serves several
    conversations) read when indexed, by a tensor of batch rows, a list or a slice."""
    from vislaw.features import CachedRows

    expect = extraction_protocol(hf_spec("clip", ckpt["clip"]), "fp1")
    with open_cache(cache, expect) as features:
        everything = features.read([f"img{i}" for i in range(6)])
        for in_memory_bytes in (0, 1 << 20):  # read from the file when indexed; held in memory
            rows = CachedRows(features, ["img5", "img1", "img5", "img0"], in_memory_bytes)
            assert len(rows) == 4 and rows.shape == (4, *everything.shape[1:])
            assert rows._all is None  # the width alone (an external stage 1) reads no rows
            np.testing.assert_array_equal(rows[torch.tensor([2, 0, 3])].numpy(), everything[[5, 5, 0]])
            np.testing.assert_array_equal(rows[[1]].numpy(), everything[[1]])
            np.testing.assert_array_equal(rows[1:3].numpy(), everything[[1, 5]])
            assert rows[[0]].dtype == torch.float16
            assert (rows._all is None) == (in_memory_bytes == 0)  # held after the first indexing, where it fits
        with pytest.raises(KeyError, match="img9"):
            CachedRows(features, ["img0", "img9"])


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"image_size": 48}, "image_size"),
        ({"layer": -1}, "layer"),
        ({"frame": "stretch"}, "preprocessing.frame"),
        ({"mean": (0.5, 0.5, 0.5)}, "spec.mean"),
    ],
)
def test_other_protocol_is_rejected(cache: Path, ckpt: dict[str, Path], change: dict, field: str) -> None:
    expect = extraction_protocol(dataclasses.replace(hf_spec("clip", ckpt["clip"]), **change), "fp1")
    with pytest.raises(CacheMismatchError, match=rf"another protocol \(.*{field}: file has"):
        read_features(cache, ["img0"], expect)


def test_other_dataset_or_non_cache_is_rejected(cache: Path, ckpt: dict[str, Path], tmp_path: Path) -> None:
    spec = hf_spec("clip", ckpt["clip"])
    with pytest.raises(CacheMismatchError, match="dataset_fingerprint: file has 'fp1', expected 'fp2'"):
        read_features(cache, ["img0"], extraction_protocol(spec, "fp2"))
    alien = tmp_path / "alien.h5"
    with h5py.File(alien, "w") as h5:
        h5["tokens"] = np.zeros((1, 16, 32))
    with pytest.raises(CacheMismatchError, match="not a vislaw feature cache"):
        read_features(alien, ["img0"], extraction_protocol(spec, "fp1"))


def test_unreadable_cache_file_names_it_and_says_to_delete_it(ckpt: dict[str, Path], tmp_path: Path) -> None:
    truncated = tmp_path / "truncated.h5"
    truncated.write_bytes(b"\x89HDF\r\n")  # the first bytes of an HDF5 signature, and nothing after
    with pytest.raises(CacheMismatchError, match=r"truncated\.h5: not a readable HDF5 file .*delete it and rerun"):
        read_features(truncated, ["img0"], extraction_protocol(hf_spec("clip", ckpt["clip"]), "fp1"))


def test_cache_without_protocol_hash_is_rejected(cache: Path, ckpt: dict[str, Path], tmp_path: Path) -> None:
    expect = extraction_protocol(hf_spec("clip", ckpt["clip"]), "fp1")
    unhashed = tmp_path / "unhashed.h5"
    with h5py.File(cache, "r") as source, h5py.File(unhashed, "w") as h5:
        for name in ("tokens", "image_ids"):
            source.copy(name, h5)
        h5.attrs["protocol"] = source.attrs["protocol"]
    with pytest.raises(CacheMismatchError, match=r"unhashed\.h5: not a vislaw feature cache \(no protocol_hash\); del"):
        read_features(unhashed, ["img0"], expect)


def test_missing_cache_says_to_run_the_extraction(ckpt: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"absent\.h5: no feature cache there; run the extraction"):
        read_features(tmp_path / "absent.h5", ["img0"], extraction_protocol(hf_spec("clip", ckpt["clip"]), "fp1"))


def test_renaming_the_config_key_keeps_the_protocol(ckpt: dict[str, Path]) -> None:
    spec = hf_spec("clip", ckpt["clip"])
    assert extraction_protocol(spec, "x") == extraction_protocol(dataclasses.replace(spec, name="other"), "x")


def test_failed_extraction_leaves_no_file(ckpt: dict[str, Path], image_paths: list[Path], tmp_path: Path) -> None:
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    out = tmp_path / "out" / "world.h5"
    # The broken image is in the second batch: the first batch has already been written to the temp file.
    with pytest.raises(Exception, match="broken.png|cannot identify"):
        extract_to_h5(hf_spec("clip", ckpt["clip"]), [*image_paths[:4], broken], out, batch_size=4)
    assert not out.exists()
    assert list(out.parent.iterdir()) == []


def test_spec_as_dict_and_default_ids(ckpt: dict[str, Path], image_paths: list[Path], tmp_path: Path) -> None:
    """The route a Snakemake script takes: spec as a plain dict, ids from stems, fingerprint from bytes."""
    spec = hf_spec("siglip", ckpt["siglip"])
    out = tmp_path / "s.h5"
    protocol = extract_to_h5(spec.to_dict(), image_paths[:3], out)
    again = extract_to_h5(spec, image_paths[:3], tmp_path / "s2.h5")
    assert protocol == again and len(protocol["dataset_fingerprint"]) == 64
    with open_cache(out, protocol) as a, open_cache(tmp_path / "s2.h5", again) as b:
        assert a.image_ids == ["img0", "img1", "img2"]
        np.testing.assert_array_equal(a.read(a.image_ids), b.read(b.image_ids))


def test_concat_cache_records_resampling(ckpt: dict[str, Path], image_paths: list[Path], tmp_path: Path) -> None:
    parts = (hf_spec("clip", ckpt["clip"], name="clip"), hf_spec("dinov2", ckpt["dinov2"], image_size=48, name="dino"))
    spec = EncoderSpec(kind="concat", image_size=32, parts=parts, name="c_d")
    protocol = extract_to_h5(spec, image_paths[:2], tmp_path / "c.h5", dataset_fingerprint="fp")
    assert protocol["grid_resampling"] == [{"part": 1, "from": [6, 6], "to": [4, 4], "mode": "bilinear"}]
    tokens = read_features(tmp_path / "c.h5", ["img0", "img1"], protocol).astype(np.float32)
    assert tokens.shape == (2, 16, 64)
    np.testing.assert_allclose(np.linalg.norm(tokens, axis=-1), 1.0, atol=2e-3)


def test_concat_protocol_records_parts_fed_a_resize_of_its_frame(ckpt: dict[str, Path]) -> None:
    clip, dino = hf_spec("clip", ckpt["clip"], name="clip"), hf_spec("dinov2", ckpt["dinov2"], name="dino")
    same = EncoderSpec(kind="concat", image_size=32, parts=(clip, dino), name="c_d")
    resized = dataclasses.replace(same, parts=(clip, dataclasses.replace(dino, image_size=48)))
    assert extraction_protocol(resized, "fp")["preprocessing"]["part_inputs"] == [
        {"part": 1, "input": "concat's framed image", "from": 32, "to": 48, "resize": PART_INPUT_RESIZE}
    ]
    assert "part_inputs" not in extraction_protocol(same, "fp")["preprocessing"]


def test_loader_threads_and_batches_do_not_change_the_cache(ckpt: dict[str, Path], image_paths: list[Path],
                                                           tmp_path: Path) -> None:
    """Images are framed in parallel and written by a background thread: rows must still be in order."""
    spec = hf_spec("clip", ckpt["clip"])
    arrays = {}
    for batch, threads in ((4, 1), (4, 3), (2, 5)):
        out = tmp_path / f"b{batch}_t{threads}.h5"
        extract_to_h5(spec, image_paths, out, dataset_fingerprint="fp", batch_size=batch, device="cpu",
                      loader_threads=threads)
        arrays[batch, threads] = read_features(out, [f"img{i}" for i in range(6)], extraction_protocol(spec, "fp"))
    np.testing.assert_array_equal(arrays[4, 1], arrays[4, 3])
    np.testing.assert_allclose(arrays[2, 5].astype(np.float32), arrays[4, 1].astype(np.float32), atol=2e-3)
    if loader.available():  # the GPU's loader (worker processes, shared memory) gives the same rows
        for batch, workers in ((4, 2), (2, 3)):
            out = tmp_path / f"p{batch}_w{workers}.h5"
            extract_to_h5(spec, image_paths, out, dataset_fingerprint="fp", batch_size=batch, device="cpu",
                          loader_threads=workers, loader_processes=True)
            got = read_features(out, [f"img{i}" for i in range(6)], extraction_protocol(spec, "fp"))
            np.testing.assert_array_equal(got, arrays[batch, 1] if batch == 4 else arrays[2, 5])


@pytest.mark.skipif(not loader.available(), reason="framing worker processes need Linux")
def test_framing_processes_equal_framed_pixels_and_name_a_broken_image(image_paths: list[Path],
                                                                      tmp_path: Path) -> None:
    from vislaw.encoders.frame import framed_pixels

    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    with loader.framing_pool(2) as pool:
        rows = {start: pixels.copy() for start, pixels in pool.batches(image_paths, 4, 32, "pad")}
        assert sorted(rows) == [0, 4] and rows[4].shape == (2, 3, 32, 32)
        expected = np.stack([framed_pixels(p, 32, "pad").transpose(2, 0, 1) for p in image_paths])
        np.testing.assert_array_equal(np.concatenate([rows[0], rows[4]]), expected)
        with pytest.raises(RuntimeError, match="broken.png"):
            for _ in pool.batches([image_paths[0], broken, *image_paths[1:]], 2, 48, "stretch"):
                pass
        assert pool.broken  # answers of that call may still be in flight: the pool is not reused
    with loader.framing_pool(2) as fresh:  # the next call gets a new pool that works
        assert fresh is not pool and fresh.alive()
        (start, pixels), = list(fresh.batches(image_paths[:2], 2, 16, "pad"))
        assert start == 0 and pixels.shape == (2, 3, 16, 16)


def test_fast_path_cache_equals_plain_transformers_cache(cache: Path, ckpt: dict[str, Path], image_paths: list[Path],
                                                         tmp_path: Path) -> None:
    import transformers

    spec = hf_spec("siglip", ckpt["siglip"])
    plain = HFEncoder(spec, transformers.SiglipVisionModel.from_pretrained(ckpt["siglip"]).eval(), fast=False)
    assert plain.fast is None
    fast_protocol = extract_to_h5(spec, image_paths, tmp_path / "fast.h5", dataset_fingerprint="fp", device="cpu")
    extract_to_h5(spec, image_paths, tmp_path / "plain.h5", dataset_fingerprint="fp", device="cpu", encoder=plain)
    ids = [f"img{i}" for i in range(6)]
    fast = read_features(tmp_path / "fast.h5", ids, fast_protocol).astype(np.float32)
    reference = read_features(tmp_path / "plain.h5", ids, fast_protocol).astype(np.float32)
    np.testing.assert_allclose(fast, reference, atol=2e-3, rtol=2e-3)
    with h5py.File(tmp_path / "fast.h5", "r") as h5:
        assert json.loads(h5.attrs["compute"]) == {"device": "cpu", "autocast": "None", "compile": None}


def test_bf16_compute_is_within_rounding_and_recorded(cache: Path, ckpt: dict[str, Path], image_paths: list[Path],
                                                      tmp_path: Path) -> None:
    """The GPU's bf16 path, run on the CPU: same protocol (so the same readers), float16 storage, bf16 error."""
    spec = hf_spec("clip", ckpt["clip"])
    protocol = extract_to_h5(spec, image_paths, tmp_path / "bf16.h5", dataset_fingerprint="fp1", batch_size=4,
                             device="cpu", compute_dtype=torch.bfloat16)
    ids = [f"img{i}" for i in range(6)]
    low = read_features(tmp_path / "bf16.h5", ids, protocol).astype(np.float32)
    full = read_features(cache, ids, protocol).astype(np.float32)
    assert np.linalg.norm(low - full) / np.linalg.norm(full) < 3e-2
    with h5py.File(tmp_path / "bf16.h5", "r") as h5:
        assert json.loads(h5.attrs["compute"])["autocast"] == "torch.bfloat16"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_gpu_autocast_extraction_matches_cpu(cache: Path, ckpt: dict[str, Path], image_paths: list[Path],
                                             tmp_path: Path) -> None:
    protocol = extract_to_h5(hf_spec("clip", ckpt["clip"]), image_paths, tmp_path / "gpu.h5",
                             dataset_fingerprint="fp1", batch_size=4, device="cuda")
    with h5py.File(tmp_path / "gpu.h5", "r") as h5:
        assert json.loads(h5.attrs["compute"])["device"] == "cuda"
    ids = [f"img{i}" for i in range(6)]
    gpu = read_features(tmp_path / "gpu.h5", ids, protocol).astype(np.float32)
    cpu = read_features(cache, ids, protocol).astype(np.float32)  # same protocol: device is not part of it
    np.testing.assert_allclose(gpu, cpu, atol=0.1, rtol=0.05)  # bf16 autocast


def test_an_encoders_caption_frame_reaches_its_caption_caches_and_their_readers(ckpt: dict[str, Path],
                                                                               tmp_path: Path) -> None:
    """jobs.extract_features writes the caption sets in ``caption_frame`` and SPair in ``frame``; the readers of
    stage 1 and A expect exactly that, and a cache made in another frame is refused."""
    from vislaw.data.world import make_world, smoke_params
    from vislaw.jobs import _cached_tokens, expected_protocol, extract_features

    data = tmp_path / "data"
    make_world(data, smoke_params())
    spec = dataclasses.replace(hf_spec("clip", ckpt["clip"]), caption_frame="crop").to_dict()
    outputs = {d: str(tmp_path / f"{d}.h5") for d in ("spair_test", "caption_probe")}
    extract_features(spec, str(data), outputs, batch_size=8)
    with h5py.File(outputs["caption_probe"]) as probe, h5py.File(outputs["spair_test"]) as spair:
        probe_protocol = json.loads(probe.attrs["protocol"])
        spair_protocol = json.loads(spair.attrs["protocol"])
    assert probe_protocol["preprocessing"]["frame"] == "crop" and spair_protocol["preprocessing"]["frame"] == "pad"
    assert probe_protocol == expected_protocol(spec, str(data), "caption_probe")
    ids = json.loads((data / "captions" / "probe.json").read_text())[0]["image"]
    assert _cached_tokens(spec, str(data), "caption_probe", outputs["caption_probe"], [ids]).shape == (1, 16, 32)
    padded = {k: v for k, v in spec.items() if k != "caption_frame"}
    with pytest.raises(CacheMismatchError):
        _cached_tokens(padded, str(data), "caption_probe", outputs["caption_probe"], [ids])
