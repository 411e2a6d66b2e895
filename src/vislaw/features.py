"""The per-(encoder, dataset) HDF5 feature cache, with the protocol that produced it.

Layout of ``results/.../features/{encoder}/{dataset}.h5``:
- ``tokens``: float16, (images, grid_h * grid_w, channels), patch tokens in row-major grid order (plus the
  prefix tokens first if the spec keeps them: attribute ``num_prefix_tokens``), chunked one image per chunk
  so a reader of a few images touches only their chunks. The chunks are allocated when the dataset is
  created (no fill values written) and the extraction writes their bytes with ``os.pwrite`` at the offsets
  HDF5 gave them, outside the GIL (h5py holds it through every write), falling back to h5py writes where
  h5py cannot list chunk offsets (``DatasetID.chunk_iter``, h5py 3.8 with HDF5 1.12.3 or later). Kept flat (not (h, w, C)) because every consumer
  (cosine matching for C, token sets for A-v1) works on token lists; ``reshape(-1, h, w, C)`` recovers the grid.
- ``image_ids``: UTF-8 strings, row i of ``tokens`` is ``image_ids[i]``.
- attributes: ``protocol`` (JSON: spec, resolution, layer, grid, preprocessing, dtype, layout, dataset
  fingerprint, vislaw version), ``protocol_hash`` (SHA-256 of it), ``spec`` (JSON, with the config key),
  ``dataset_fingerprint``, ``library_versions`` (JSON) and ``compute`` (device, autocast dtype, compile
  mode: recorded, not part of the protocol, since they change speed and rounding, not the function). The
  file is written to a temporary sibling and renamed, so a killed extraction leaves no output.
  `open_cache` refuses a file whose protocol differs from the expected one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib.metadata
import itertools
import json
import os
import queue
import sys
import threading
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
from vislaw import jpeg, loader
from vislaw.encoders import Encoder, EncoderSpec, create_encoder
from vislaw.encoders.concat import part_input_record, resampling_record
from vislaw.encoders.frame import framed_pixels, preprocessing_record
from vislaw.io import atomic_path

STORAGE_DTYPE = "float16"
STORAGE_DTYPE_TORCH = torch.float16
LAYOUT = "tokens[image, grid_h*grid_w (row-major), channel]"
# extract_to_h5(compile_mode="auto") compiles on a GPU from this many images on. Run 1 (H200): compiling
# took 1-4 s per shape and saved 22-87 us per image (CLIP@336 1,238 -> 1,388 img/s, DINOv2@224 2,861 ->
# 3,050, SigLIP@256 2,974 -> 3,338): it pays from ~30,000-50,000 images (SPair's ~1,800 never), more where
# a fresh machine compiles its Triton kernels cold.
COMPILE_MIN_IMAGES = 50_000
DECODERS = ("pil", "device")


class CacheMismatchError(RuntimeError):
    """A cache file exists but was made under another protocol (or is not a vislaw cache)."""


def extraction_protocol(spec: EncoderSpec | Mapping[str, Any], dataset_fingerprint: str) -> dict[str, Any]:
    """Everything that determines a cache's contents; readers compute it from the config to check the file."""
    spec = _as_spec(spec)
    rows, cols = spec.grid
    preprocessing = preprocessing_record(spec.image_size, spec.frame)
    preprocessing.update(mean=_list(spec.mean), std=_list(spec.std))
    part_inputs = part_input_record(spec) if spec.kind == "concat" else []
    if part_inputs:  # only then: a concat whose parts all take its own frame keeps its protocol (and hash)
        preprocessing["part_inputs"] = part_inputs
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
    loader_threads: int | None = None,
    encoder: Encoder | None = None,
    compile_mode: str | None = "auto",
    compute_dtype: torch.dtype | None = None,
    loader_processes: bool | None = None,
    decoder: str = "pil",
) -> dict[str, Any]:
    """Extract ``spec``'s tokens for every image into ``out_path``; returns the recorded protocol.

    image_ids default to the file stems; dataset_fingerprint defaults to `fingerprint_files`. device: None
    picks CUDA when available. On GPU the forward pass runs in bf16 (fp16 where bf16 is unsupported): under
    autocast, which the fast transformers path turns into bf16 weights and no autocast; on CPU in float32.
    Storage is float16 either way, converted on the device. ``compute_dtype`` overrides that choice
    (``torch.float32`` on a GPU computes the CPU's numbers, for checking; it is not part of the protocol).

    The model never waits on the disk or the decoder: ``loader_threads`` workers decode and frame single
    images into uint8 batches (pinned memory on a GPU) ahead of the model, and a writer thread copies
    tokens back (asynchronously, through pinned memory) and writes them to HDF5 outside the GIL. The
    workers are processes (`vislaw.loader`; default on a GPU, on Linux) or threads (default on a CPU, where
    the model is slower than any loader): ``loader_processes`` chooses. Default count: processes, the
    usable CPUs less two (at most 16); threads, the CPU count (at most 16).
    ``decoder``: ``"pil"`` (the default) is that loader; ``"device"`` decodes JPEGs on the extraction's
    device and frames them there (`vislaw.jpeg`; PNGs through Pillow). On a CPU that gives Pillow's pixels
    to within one level; on a GPU nvJPEG's hardware decoder rounds differently (1-2 levels on average on an
    H200, features 3e-2 apart), so it is not the default: see bench/NOTES.md, change 15.
    ``encoder``: an already built encoder of this very spec, to reuse it across datasets. ``compile_mode``:
    ``torch.compile`` the encoder's blocks on a GPU (``"default"`` or a torch.compile mode such as
    ``"max-autotune-no-cudagraphs"``) where its kind supports it; ``"auto"`` (the default) is ``"default"``
    on a GPU from `COMPILE_MIN_IMAGES` images on (compiling costs seconds once per shape, and pays on large
    image sets only), else nothing; None never compiles. The choice changes speed and rounding, not the
    function: it is recorded in the ``compute`` attribute, not in the protocol.
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
    autocast_dtype = _autocast_dtype(torch_device) if compute_dtype is None else (
        None if compute_dtype == torch.float32 else compute_dtype)
    processes = (torch_device.type == "cuda" and loader.available()) if loader_processes is None else loader_processes
    if loader_threads is not None:
        threads = loader_threads
    else:
        threads = loader.default_workers() if processes else min(16, os.cpu_count() or 1)
    if compile_mode == "auto":
        compile_mode = "default" if torch_device.type == "cuda" and len(paths) >= COMPILE_MIN_IMAGES else None
    if decoder not in DECODERS:
        raise ValueError(f"decoder must be one of {', '.join(DECODERS)}, got {decoder!r}")
    if decoder == "device" and not jpeg.available(torch_device.type):
        raise RuntimeError(f"decoder 'device': torchvision cannot decode JPEGs on {torch_device.type} here")

    if encoder is None:
        encoder = create_encoder(spec)
    elif dataclasses.replace(encoder.spec, frame=spec.frame, caption_frame=spec.caption_frame) != spec:
        # the frame is the loader's, not the model's: one encoder serves a spec's sets in their own frames
        raise ValueError(f"{spec.key('kind')}: the encoder passed in was built from another spec")
    encoder = encoder.to(torch_device)
    if compile_mode is not None and torch_device.type == "cuda":
        encoder.compile_blocks(None if compile_mode == "default" else compile_mode)
    pin = torch_device.type == "cuda"
    with atomic_path(out_path) as tmp, h5py.File(tmp, "w") as h5:
        h5.create_dataset("image_ids", data=np.array(ids, dtype=object), dtype=h5py.string_dtype("utf-8"))
        bar = tqdm(total=len(paths), desc=f"extract {spec.name or spec.kind}", unit="img", file=sys.stderr)
        with bar, torch.inference_mode(), _TokenWriter(h5, len(paths), bar) as writer:
            if decoder == "device":
                batches = jpeg.framed_batches(paths, batch_size, spec.image_size, spec.frame, torch_device)
            else:
                batches = _framed_batches(paths, batch_size, spec.image_size, spec.frame, threads, pin, processes)
            for start, batch in batches:
                batch = batch.to(torch_device, non_blocking=True)
                with _autocast(torch_device, autocast_dtype):
                    tokens = encoder.tokens(batch)[spec.layer]
                writer.put(start, tokens.to(STORAGE_DTYPE_TORCH))
        fast = getattr(encoder, "fast", None)  # the fused ViT path of kind hf (None elsewhere)
        compute = {"device": torch_device.type, "autocast": str(autocast_dtype),
                   "compile": getattr(fast, "compiled", None) if torch_device.type == "cuda" else None}
        if decoder == "device":  # recorded only when not the CPU loader, so older caches read the same
            compute["decoder"] = f"torchvision on {torch_device.type}"
        if torch_device.type == "cuda" and fast is not None:
            compute["attention"] = fast.attention  # SDPA preference as run: "cudnn" first, or torch's "default"
        h5.attrs.update({
            "protocol": _canonical(protocol),
            "protocol_hash": protocol_hash(protocol),
            "spec": json.dumps(spec.to_dict(), sort_keys=True),
            "dataset_fingerprint": fingerprint,
            "library_versions": json.dumps(library_versions(), sort_keys=True),
            "compute": json.dumps(compute),
            "num_prefix_tokens": 0 if spec.drop_prefix else int(encoder.num_prefix_tokens),
            "grid_h": protocol["grid"][0],
            "grid_w": protocol["grid"][1],
        })
    return protocol


class _TokenWriter:
    """Writes token batches into the cache's ``tokens`` from a background thread.

    `put` starts the copy of a device tensor into a pinned host buffer and queues it with a CUDA event; the
    thread waits for the event, then writes. The main thread thus never synchronises with the GPU, which
    keeps running the next batches; the free buffers are the only back-pressure.

    The pinned buffers are a ring made once per extraction (``depth`` + 2 batches), and the copies run on
    their own CUDA stream, after the batch that made the tokens and beside the next one, instead of a fresh
    pinned tensor per batch copied on the compute stream (vislaw before): on an H200, CLIP@336 extraction
    with the disk writes skipped went from 91 % to 100 % of the model's rate (bench/NOTES.md, change 16).
    The writes themselves ran at ~1.1 GB/s inside the pipeline either way, half their rate alone.

    Writes go around h5py: ``tokens`` is created with its chunks allocated up front (no fill values), and
    each batch's bytes are written with ``os.pwrite`` at its chunks' file offsets (one call per run of
    consecutive chunks). h5py holds the GIL through a whole write (~1.2 MB per CLIP@336 image, ~1.5 GB/s
    at 1,300 img/s), which stalled the thread launching the model's kernels and the framing threads;
    ``os.pwrite`` releases it. Where the offsets cannot be listed, h5py writes as before.
    """

    def __init__(self, h5: h5py.File, rows: int, bar: tqdm, depth: int = 4) -> None:
        self.h5, self.rows, self.bar = h5, rows, bar
        self.dataset: h5py.Dataset | None = None
        self.offsets: np.ndarray | None = None  # file offset of each row's chunk (raw writes), else None
        self.row_bytes = 0
        self.fd = -1
        self.depth = depth
        self.queue: queue.Queue[tuple[int, torch.Tensor, torch.cuda.Event | None, int] | None] = queue.Queue(
            depth + 3)
        self.ring: list[torch.Tensor] = []  # pinned host buffers (CUDA only), made at the first batch
        self.free: queue.Queue[int] = queue.Queue()  # indices of ring buffers the writer is done with
        self.copy_stream: torch.cuda.Stream | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="vislaw-h5-writer", daemon=True)

    def __enter__(self) -> _TokenWriter:
        self.thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        if exc_type is not None and self.error is None:
            self.error = RuntimeError("extraction failed")  # the writer drains the queue without writing
        self.queue.put(None)
        self.thread.join()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if exc_type is None and self.error is not None:
            raise self.error

    def _create(self, shape: tuple[int, ...]) -> None:
        """``tokens`` of (rows, *shape), one image per chunk, all chunks allocated now, none filled."""
        dtype = np.dtype(STORAGE_DTYPE)
        dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        dcpl.set_chunk((1, *shape))
        dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
        dcpl.set_fill_time(h5py.h5d.FILL_TIME_NEVER)
        space = h5py.h5s.create_simple((self.rows, *shape))
        dsid = h5py.h5d.create(self.h5.id, b"tokens", h5py.h5t.py_create(dtype), space, dcpl=dcpl)
        self.dataset = h5py.Dataset(dsid)
        self.row_bytes = int(np.prod(shape)) * dtype.itemsize
        self.offsets = _chunk_offsets(dsid, self.rows, self.row_bytes)
        if self.offsets is not None:
            self.fd = os.open(self.h5.filename, os.O_WRONLY)

    def put(self, start: int, tokens: torch.Tensor) -> None:
        if self.error is not None:
            raise self.error
        if self.dataset is None:
            # Shape known only after the first batch (channels, prefix count).
            self._create(tuple(tokens.shape[1:]))
        if tokens.device.type != "cuda":
            self.queue.put((start, tokens, None, -1))
            return
        if not self.ring:  # the first batch is the largest (only the last can be shorter)
            self.ring = [torch.empty(tokens.shape, dtype=tokens.dtype, pin_memory=True)
                         for _ in range(self.depth + 2)]
            for slot in range(len(self.ring)):
                self.free.put(slot)
            self.copy_stream = torch.cuda.Stream(tokens.device)
        if len(tokens) > len(self.ring[0]):
            raise ValueError(f"batch of {len(tokens)} rows after batches of {len(self.ring[0])}")
        while True:  # a free buffer, or the writer's error
            try:
                slot = self.free.get(timeout=0.5)
                break
            except queue.Empty:
                if self.error is not None or not self.thread.is_alive():
                    raise self.error or RuntimeError("the cache writer thread stopped")
        host = self.ring[slot][: len(tokens)]
        assert self.copy_stream is not None
        self.copy_stream.wait_stream(torch.cuda.current_stream(tokens.device))  # after the tokens are made
        with torch.cuda.stream(self.copy_stream):
            host.copy_(tokens, non_blocking=True)
            event = torch.cuda.Event()
            event.record(self.copy_stream)
        tokens.record_stream(self.copy_stream)  # its memory is not reused before the copy has read it
        self.queue.put((start, host, event, slot))

    def _run(self) -> None:
        while (item := self.queue.get()) is not None:
            start, tokens, event, slot = item
            try:
                if self.error is None:
                    if event is not None:
                        event.synchronize()
                    array = np.ascontiguousarray(tokens.numpy())
                    if self.offsets is None:
                        self.dataset[start : start + len(array)] = array
                    else:
                        self._pwrite(start, array)
                    self.bar.update(len(array))
            except BaseException as err:  # re-raised in the main thread
                self.error = err
            finally:
                if slot >= 0:
                    self.free.put(slot)

    def _pwrite(self, start: int, array: np.ndarray) -> None:
        assert self.offsets is not None
        offsets = self.offsets[start : start + len(array)]
        data = memoryview(array.reshape(-1).view(np.uint8))
        breaks = np.flatnonzero(np.diff(offsets) != self.row_bytes) + 1  # runs of consecutive chunks
        for first, stop in zip([0, *breaks.tolist()], [*breaks.tolist(), len(array)]):
            view, at = data[first * self.row_bytes : stop * self.row_bytes], int(offsets[first])
            while view:
                written = os.pwrite(self.fd, view, at)
                view, at = view[written:], at + written


def _chunk_offsets(dsid: h5py.h5d.DatasetID, rows: int, row_bytes: int) -> np.ndarray | None:
    """File offset of each row's (unfiltered, allocated) chunk, or None where h5py cannot list them."""
    if not hasattr(dsid, "chunk_iter") or sys.byteorder != "little":  # float16 bytes as stored: little-endian
        return None
    offsets = np.full(rows, -1, dtype=np.int64)

    def visit(info: Any) -> None:
        if info.size == row_bytes and info.filter_mask == 0 and info.byte_offset is not None:
            offsets[info.chunk_offset[0]] = info.byte_offset

    try:
        dsid.chunk_iter(visit)
    except Exception:  # noqa: BLE001 (an HDF5 too old for H5Dchunk_iter: h5py writes instead)
        return None
    return offsets if (offsets >= 0).all() else None


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

    def rows_of(self, image_ids: Sequence[str]) -> np.ndarray:
        """The file's rows of ``image_ids``; a `KeyError` naming the file and the first missing ids."""
        missing = [i for i in image_ids if i not in self._row]
        if missing:
            raise KeyError(f"{self.h5.filename}: no features for image ids {missing[:5]}")
        return np.array([self._row[i] for i in image_ids], dtype=np.int64)

    def read(self, image_ids: Sequence[str]) -> np.ndarray:
        rows = self.rows_of(image_ids)
        if rows.size == 0:
            return np.empty((0, *self.h5["tokens"].shape[1:]), dtype=STORAGE_DTYPE)
        # h5py fancy indexing needs unique increasing rows: read those once, then put them in request order.
        # A run of consecutive rows (a whole cache, typically) is read as one slice, which is far faster.
        unique, inverse = np.unique(rows, return_inverse=True)
        tokens = self.h5["tokens"]
        if unique[-1] - unique[0] + 1 == len(unique):
            block = tokens[int(unique[0]) : int(unique[-1]) + 1]
        else:
            block = tokens[unique]
        return block if np.array_equal(inverse, np.arange(len(rows))) else block[inverse]


# Up to this many bytes of rows, `CachedRows` reads them all at once: a random batch read from HDF5 costs ~13 ms
# (32 rows of a mini-world cache), 7.5 s of a 562-step stage 2, where indexing memory costs nothing.
IN_MEMORY_BYTES = 4 << 30


class CachedRows:
    """Rows of an open cache in a given image order: ``rows[index]`` -> float16 torch tensor (len(index), tokens,
    channels). Up to ``in_memory_bytes`` all rows are read at the first indexing and held; above, each index is
    read from the file, as stage 1 and 2 take a batch at a time, so a real caption set (LLaVA-558K at 576 x 1024
    tokens is ~660 GB in float16) never has to fit in memory. ``shape`` reads no rows (an external stage 1 needs
    only the width)."""

    def __init__(self, cache: FeatureCache, image_ids: Sequence[str], in_memory_bytes: int = IN_MEMORY_BYTES) -> None:
        cache.rows_of(image_ids)  # every id there, checked before the first batch
        self._cache, self._ids = cache, list(image_ids)
        self.shape = (len(self._ids), *cache.h5["tokens"].shape[1:])
        self._in_memory = int(np.prod(self.shape)) * np.dtype(STORAGE_DTYPE).itemsize <= in_memory_bytes
        self._all: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self._ids)

    def __getitem__(self, index: slice | Sequence[int] | torch.Tensor) -> torch.Tensor:
        if self._in_memory and self._all is None:
            self._all = torch.from_numpy(self._cache.read(self._ids))
        if self._all is not None:
            return self._all[index] if isinstance(index, slice) else self._all[torch.as_tensor(index).reshape(-1)]
        if isinstance(index, slice):
            ids = self._ids[index]
        else:
            ids = [self._ids[i] for i in torch.as_tensor(index).reshape(-1).tolist()]
        return torch.from_numpy(self._cache.read(ids))


@contextlib.contextmanager
def open_cache(path: str | os.PathLike[str], expect: Mapping[str, Any]) -> Iterator[FeatureCache]:
    """Open a cache, raising `CacheMismatchError` unless its protocol equals ``expect`` exactly.

    A missing file raises `FileNotFoundError`; an unreadable one (truncated, not HDF5) `CacheMismatchError`.
    """
    unusable = "delete it and rerun the extraction"
    try:
        h5 = h5py.File(path, "r")
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no feature cache there; run the extraction first") from None
    except OSError as err:  # h5py's message does not name the file
        raise CacheMismatchError(f"{path}: not a readable HDF5 file ({err}); {unusable}") from err
    with h5:
        missing = [key for key in ("protocol", "protocol_hash") if key not in h5.attrs]
        missing += [key for key in ("tokens", "image_ids") if key not in h5]
        if missing:
            raise CacheMismatchError(f"{path}: not a vislaw feature cache (no {', '.join(missing)}); {unusable}")
        stored = json.loads(h5.attrs["protocol"])
        expected = json.loads(_canonical(expect))
        if stored != expected or h5.attrs["protocol_hash"] != protocol_hash(stored):
            raise CacheMismatchError(
                f"{path}: made under another protocol ({'; '.join(_differences(stored, expected))}); "
                f"{unusable} (a cache is never reused across protocols)"
            )
        yield FeatureCache(h5)


def read_features(path: str | os.PathLike[str], image_ids: Sequence[str], expect: Mapping[str, Any]) -> np.ndarray:
    """Tokens of ``image_ids`` (float16, (n, tokens, channels)) from a protocol-checked cache."""
    with open_cache(path, expect) as cache:
        return cache.read(image_ids)


def _framed_batches(paths: Sequence[Path], batch_size: int, size: int, mode: str, threads: int,
                    pin: bool, processes: bool = False) -> Iterator[tuple[int, torch.Tensor]]:
    """(first row, uint8 batch (B, 3, size, size)) in order, framed by ``threads`` workers ahead of use.

    Work is handed out per image, not per batch, so the first batch is ready after one image's time times
    batch / workers, and every worker stays busy. ``processes``: the workers are `vislaw.loader` processes
    (the batch is copied out of their shared ring); else threads (PIL decodes and resizes without the GIL,
    but the Python between its calls takes it). ``pin``: batches in pinned memory, so their copy to the
    GPU is asynchronous.
    """
    if processes:
        with loader.framing_pool(max(1, threads)) as pool:
            for start, pixels in pool.batches(paths, batch_size, size, mode):
                batch = torch.empty(pixels.shape, dtype=torch.uint8, pin_memory=pin)
                np.copyto(batch.numpy(), pixels)  # out of the ring (numpy releases the GIL for the copy)
                yield start, batch
        return
    starts = iter(range(0, len(paths), batch_size))
    ahead = max(2, -(-2 * threads // batch_size))  # batches in flight: enough images for every thread twice
    pool = ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="vislaw-frame")
    pending: deque[tuple[int, torch.Tensor, list[Future[None]]]] = deque()

    def submit(start: int) -> None:
        chunk = paths[start : start + batch_size]
        batch = torch.empty((len(chunk), 3, size, size), dtype=torch.uint8, pin_memory=pin)
        pixels = batch.numpy()  # threads write through numpy: no torch state (inference mode) per thread
        pending.append((start, batch, [pool.submit(_frame_into, pixels, i, path, size, mode)
                                       for i, path in enumerate(chunk)]))

    try:
        for start in itertools.islice(starts, ahead):
            submit(start)
        while pending:
            start, batch, futures = pending.popleft()
            for future in futures:
                future.result()
            following = next(starts, None)
            if following is not None:
                submit(following)
            yield start, batch
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _frame_into(batch: np.ndarray, row: int, path: Path, size: int, mode: str) -> None:
    np.copyto(batch[row], framed_pixels(path, size, mode).transpose(2, 0, 1))


def library_versions() -> dict[str, str]:
    import timm
    import transformers

    versions = {"vislaw": vislaw.__version__, "torch": torch.__version__, "transformers": transformers.__version__,
                "timm": timm.__version__, "h5py": h5py.__version__, "numpy": np.__version__}
    try:  # the optional extra of the diffusion settings; read from its metadata, not imported
        versions["diffusers"] = importlib.metadata.version("diffusers")
    except importlib.metadata.PackageNotFoundError:
        pass
    return versions


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
