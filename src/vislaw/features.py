"""The per-(encoder, dataset) HDF5 feature cache, with the protocol that produced it.

Layout of ``results/.../features/{encoder}/{dataset}.h5``:
- ``tokens``: float16, (images, grid_h * grid_w, channels), patch tokens in row-major grid order (plus the
  prefix tokens first if the spec keeps them: attribute ``num_prefix_tokens``), chunked one image per chunk
  so a reader of a few images touches only their chunks. Kept flat (not (h, w, C)) because every consumer
  (cosine matching for C, token sets for A-v1) works on token lists; ``reshape(-1, h, w, C)`` recovers the grid.
- ``image_ids``: UTF-8 strings, row i of ``tokens`` is ``image_ids[i]``.
- attributes: ``protocol`` (JSON: spec, resolution, layer, grid, preprocessing, dtype, layout, dataset
  fingerprint, vislaw version), ``protocol_hash`` (SHA-256 of it), ``spec`` (JSON, with the config key),
  ``dataset_fingerprint``, ``library_versions`` (JSON) and ``compute`` (device, autocast dtype: recorded,
  not part of the protocol). The file is written to a temporary sibling and renamed, so a killed
  extraction leaves no output. `open_cache` refuses a file whose protocol differs from the expected one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from tqdm import tqdm

import vislaw
from vislaw.encoders import Encoder, EncoderSpec, create_encoder, load_framed
from vislaw.encoders.concat import resampling_record
from vislaw.encoders.frame import preprocessing_record
from vislaw.io import atomic_path

STORAGE_DTYPE = "float16"
LAYOUT = "tokens[image, grid_h*grid_w (row-major), channel]"


class CacheMismatchError(RuntimeError):
    """A cache file exists but was made under another protocol (or is not a vislaw cache)."""


def extraction_protocol(spec: EncoderSpec | Mapping[str, Any], dataset_fingerprint: str) -> dict[str, Any]:
    """Everything that determines a cache's contents; readers compute it from the config to check the file."""
    spec = _as_spec(spec)
    rows, cols = spec.grid
    preprocessing = preprocessing_record(spec.image_size, spec.frame)
    preprocessing.update(mean=_list(spec.mean), std=_list(spec.std))
    return {
        "spec": spec.to_dict(with_name=False),
        "image_size": spec.image_size,
        "layer": spec.layer,
        "grid": [rows, cols],
        "drop_prefix": spec.drop_prefix,
        "preprocessing": preprocessing,
        "grid_resampling": resampling_record(spec) if spec.kind == "concat" else [],
        "dtype": STORAGE_DTYPE,
        "layout": LAYOUT,
        "dataset_fingerprint": dataset_fingerprint,
        "vislaw_version": vislaw.__version__,
    }


def protocol_hash(protocol: Mapping[str, Any]) -> str:
    return hashlib.sha256(_canonical(protocol).encode()).hexdigest()


def fingerprint_files(paths: Sequence[str | os.PathLike[str]], image_ids: Sequence[str]) -> str:
    """SHA-256 over ids and image bytes: the dataset fingerprint when the data step gives none."""
    digest = hashlib.sha256()
    for image_id, path in zip(image_ids, paths, strict=True):
        digest.update(str(image_id).encode() + b"\0" + Path(path).read_bytes() + b"\0")
    return digest.hexdigest()


def extract_to_h5(
    spec: EncoderSpec | Mapping[str, Any],
    image_paths: Sequence[str | os.PathLike[str]],
    out_path: str | os.PathLike[str],
    image_ids: Sequence[str] | None = None,
    dataset_fingerprint: str | None = None,
    batch_size: int = 32,
    device: str | torch.device | None = None,
    loader_threads: int = 4,
    encoder: Encoder | None = None,
) -> dict[str, Any]:
    """Extract ``spec``'s tokens for every image into ``out_path``; returns the recorded protocol.

    image_ids default to the file stems; dataset_fingerprint defaults to `fingerprint_files`. device: None
    picks CUDA when available. On GPU the forward pass runs under bf16 (fp16 where bf16 is unsupported)
    autocast; on CPU in float32. Storage is float16 either way. ``loader_threads`` decode and frame the
    next batches while the current one runs (image decoding, not the model, limits small models on GPU).
    ``encoder``: an already built encoder of this very spec, to reuse it across datasets.
    """
    spec = _as_spec(spec)
    paths = [Path(p) for p in image_paths]
    ids = [str(i) for i in image_ids] if image_ids is not None else [p.stem for p in paths]
    if len(ids) != len(paths):
        raise ValueError(f"{len(paths)} image paths but {len(ids)} image ids")
    if not ids:
        raise ValueError("no images to extract")
    if len(set(ids)) != len(ids):
        raise ValueError("image ids are not unique")
    fingerprint = dataset_fingerprint if dataset_fingerprint is not None else fingerprint_files(paths, ids)
    protocol = extraction_protocol(spec, fingerprint)
    torch_device = torch.device(device) if device is not None else _default_device()
    autocast_dtype = _autocast_dtype(torch_device)

    if encoder is None:
        encoder = create_encoder(spec)
    elif encoder.spec != spec:
        raise ValueError(f"{spec.key('kind')}: the encoder passed in was built from another spec")
    encoder = encoder.to(torch_device)
    with atomic_path(out_path) as tmp, h5py.File(tmp, "w") as h5:
        h5.create_dataset("image_ids", data=np.array(ids, dtype=object), dtype=h5py.string_dtype("utf-8"))
        tokens_ds = None
        bar = tqdm(total=len(paths), desc=f"extract {spec.name or spec.kind}", unit="img", file=sys.stderr)
        with bar, torch.inference_mode():
            batches = _framed_batches(paths, batch_size, spec.image_size, spec.frame, loader_threads)
            for start, batch in zip(range(0, len(paths), batch_size), batches, strict=True):
                batch = batch.to(torch_device, non_blocking=True)
                with _autocast(torch_device, autocast_dtype):
                    tokens = encoder.tokens(batch)[spec.layer]
                array = tokens.float().cpu().numpy().astype(STORAGE_DTYPE)
                if tokens_ds is None:
                    # Shape known only after the first batch (channels, prefix count): create lazily.
                    tokens_ds = h5.create_dataset(
                        "tokens", shape=(len(paths), *array.shape[1:]), dtype=STORAGE_DTYPE,
                        chunks=(1, *array.shape[1:]),
                    )
                tokens_ds[start : start + len(array)] = array
                bar.update(len(array))
        h5.attrs.update({
            "protocol": _canonical(protocol),
            "protocol_hash": protocol_hash(protocol),
            "spec": json.dumps(spec.to_dict(), sort_keys=True),
            "dataset_fingerprint": fingerprint,
            "library_versions": json.dumps(library_versions(), sort_keys=True),
            "compute": json.dumps({"device": torch_device.type, "autocast": str(autocast_dtype)}),
            "num_prefix_tokens": 0 if spec.drop_prefix else int(encoder.num_prefix_tokens),
            "grid_h": protocol["grid"][0],
            "grid_w": protocol["grid"][1],
        })
    return protocol


class FeatureCache:
    """An open, protocol-checked cache file: ``cache.read(ids)`` -> float16 (n, tokens, channels)."""

    def __init__(self, h5: h5py.File) -> None:
        self.h5 = h5
        self.protocol: dict[str, Any] = json.loads(h5.attrs["protocol"])
        self.image_ids: list[str] = [s.decode() if isinstance(s, bytes) else str(s) for s in h5["image_ids"][()]]
        self._row = {image_id: row for row, image_id in enumerate(self.image_ids)}

    @property
    def grid(self) -> tuple[int, int]:
        rows, cols = self.protocol["grid"]
        return int(rows), int(cols)

    @property
    def num_prefix_tokens(self) -> int:
        return int(self.h5.attrs["num_prefix_tokens"])

    def read(self, image_ids: Sequence[str]) -> np.ndarray:
        missing = [i for i in image_ids if i not in self._row]
        if missing:
            raise KeyError(f"{self.h5.filename}: no features for image ids {missing[:5]}")
        rows = np.array([self._row[i] for i in image_ids], dtype=np.int64)
        if rows.size == 0:
            return np.empty((0, *self.h5["tokens"].shape[1:]), dtype=STORAGE_DTYPE)
        # h5py fancy indexing needs unique increasing rows: read those once, then put them in request order.
        unique, inverse = np.unique(rows, return_inverse=True)
        return self.h5["tokens"][unique][inverse]


@contextlib.contextmanager
def open_cache(path: str | os.PathLike[str], expect: Mapping[str, Any]) -> Iterator[FeatureCache]:
    """Open a cache, raising `CacheMismatchError` unless its protocol equals ``expect`` exactly."""
    with h5py.File(path, "r") as h5:
        if "protocol" not in h5.attrs or "tokens" not in h5 or "image_ids" not in h5:
            raise CacheMismatchError(f"{path}: not a vislaw feature cache (no protocol/tokens/image_ids)")
        stored = json.loads(h5.attrs["protocol"])
        expected = json.loads(_canonical(expect))
        if stored != expected or h5.attrs["protocol_hash"] != protocol_hash(stored):
            raise CacheMismatchError(
                f"{path}: made under another protocol ({'; '.join(_differences(stored, expected))}); "
                "delete it and rerun the extraction (a cache is never reused across protocols)"
            )
        yield FeatureCache(h5)


def read_features(path: str | os.PathLike[str], image_ids: Sequence[str], expect: Mapping[str, Any]) -> np.ndarray:
    """Tokens of ``image_ids`` (float16, (n, tokens, channels)) from a protocol-checked cache."""
    with open_cache(path, expect) as cache:
        return cache.read(image_ids)


def _framed_batches(paths: Sequence[Path], batch_size: int, size: int, mode: str, threads: int) -> Iterator[torch.Tensor]:
    """Framed batches in order, up to ``threads`` of them loading ahead in a thread pool."""
    chunks = [paths[i : i + batch_size] for i in range(0, len(paths), batch_size)]
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        pending: deque[Future[torch.Tensor]] = deque()
        for chunk in chunks:
            pending.append(pool.submit(load_framed, chunk, size, mode))
            if len(pending) > threads:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def library_versions() -> dict[str, str]:
    import timm
    import transformers

    return {"vislaw": vislaw.__version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "timm": timm.__version__, "h5py": h5py.__version__, "numpy": np.__version__}


def _differences(stored: Any, expected: Any, prefix: str = "") -> list[str]:
    if isinstance(stored, dict) and isinstance(expected, dict):
        out = []
        for key in sorted(set(stored) | set(expected)):
            out += _differences(stored.get(key), expected.get(key), f"{prefix}.{key}" if prefix else key)
        return out
    return [] if stored == expected else [f"{prefix or 'protocol'}: file has {stored!r}, expected {expected!r}"]


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def _as_spec(spec: EncoderSpec | Mapping[str, Any]) -> EncoderSpec:
    return spec if isinstance(spec, EncoderSpec) else EncoderSpec.from_dict(spec)


def _list(values: Sequence[float] | None) -> list[float] | None:
    return None if values is None else list(values)


def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _autocast_dtype(device: torch.device) -> torch.dtype | None:
    if device.type != "cuda":
        return None  # CPU: float32 (CPU autocast is slow and not what the paper did)
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def _autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager[Any]:
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
