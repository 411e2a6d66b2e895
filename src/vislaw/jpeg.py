"""JPEG decoding and framing on the extraction's device: nvJPEG on a GPU, libjpeg-turbo on a CPU.

The CPU loader (`vislaw.loader`, framing threads) decodes with Pillow and frames with `frame_image`; on an
H200 it fed CLIP-L@336 at 1,338 img/s from 14 processes (~10 ms per 500x375 SPair-sized JPEG per core),
and end to end ran at 59 % of the model's rate because the framing, the writer and the thread driving the
GPU shared the 16 cores. Here the CPU only reads the files' bytes: `torchvision.io.decode_jpeg` decodes a
whole batch on the device (torchvision asks nvJPEG for its hardware backend, the NVJPG engines of A100 and
later GPUs, and decodes the rest in CUDA), and `frame_tensors` pads and resizes with torch ops there.

Same function, up to rounding: torchvision's CPU decoder gives Pillow's pixels exactly (both are
libjpeg-turbo); `frame_tensors` gives `frame_image`'s to within one level on a few pixels in ten thousand.
nvJPEG's hardware decoder rounds differently from libjpeg-turbo: on an H200, SPair-sized JPEGs framed for
CLIP@336 differed by 1.04 levels on average (max 21), the CLIP-L caches by 3.2e-2 (relative L2), and the
C of 2,000 synthetic pairs by -0.003 (1 of 20,870 keypoints). That is more than bf16's own rounding, so
`extract_to_h5` uses this module only when asked (``decoder="device"``). Files that are not JPEGs (the
mini-world's PNGs), and JPEGs the decoder refuses, are framed by Pillow on the CPU and copied over.
torchvision 0.29 marks its image decoders deprecated in favour of TorchCodec; they still work.

Decoding runs in one producer thread on its own CUDA stream, a few batches ahead of the model; the
consumer's stream waits on an event, so nothing synchronises the host.
"""

from __future__ import annotations

import contextlib
import itertools
import queue
import threading
import warnings
from collections.abc import Iterator, Sequence
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vislaw.encoders.frame import frame_tensors, framed_pixels

JPEG_MAGIC = b"\xff\xd8\xff"
AHEAD = 3  # batches decoded ahead of the model
READERS = 4  # threads reading files' bytes (page-cache reads: a few suffice)


def is_jpeg(data: bytes | bytearray | memoryview) -> bool:
    return bytes(data[:3]) == JPEG_MAGIC


@lru_cache(maxsize=None)
def available(device_type: str) -> bool:
    """Whether torchvision can decode JPEGs on ``device_type`` here (one tiny image decoded to find out)."""
    try:
        from torchvision.io import ImageReadMode, decode_jpeg
    except ImportError:
        return False
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 30, 60)).save(buffer, "JPEG", quality=95)
    data = torch.frombuffer(bytearray(buffer.getvalue()), dtype=torch.uint8)
    try:
        out = decode_jpeg([data], mode=ImageReadMode.RGB, device=device_type)[0]
        return tuple(out.shape) == (3, 16, 16)
    except Exception:  # noqa: BLE001 - any failure (no nvJPEG, driver) means: use the CPU loader
        return False


def framed_batches(paths: Sequence[Path], batch_size: int, size: int, mode: str,
                   device: torch.device) -> Iterator[tuple[int, torch.Tensor]]:
    """(first row, uint8 batch (B, 3, size, size) on ``device``) in order, decoded and framed on the device.

    On CUDA the batch was made on the producer's stream: the consumer's current stream waits on it here
    (and the batch is marked as used there), so the caller uses it as if it had made it.
    """
    cuda = device.type == "cuda"
    side_stream = torch.cuda.Stream(device) if cuda else None
    ready: queue.Queue[Any] = queue.Queue(maxsize=AHEAD)
    stop = threading.Event()

    def produce() -> None:
        try:
            with ThreadPoolExecutor(READERS, thread_name_prefix="vislaw-read") as readers, torch.no_grad(), \
                    (torch.cuda.stream(side_stream) if cuda else contextlib.nullcontext()):
                reads: deque[Future[bytes]] = deque()
                upcoming = iter(paths)
                for path in itertools.islice(upcoming, (AHEAD + 1) * batch_size):  # files read ahead, bounded
                    reads.append(readers.submit(Path(path).read_bytes))
                for start in range(0, len(paths), batch_size):
                    if stop.is_set():
                        return
                    chunk = []
                    for _ in range(min(batch_size, len(paths) - start)):
                        chunk.append(reads.popleft().result())
                        following = next(upcoming, None)
                        if following is not None:
                            reads.append(readers.submit(Path(following).read_bytes))
                    batch = _decode_and_frame(paths[start : start + len(chunk)], chunk, size, mode, device)
                    event = None
                    if cuda:
                        event = torch.cuda.Event()
                        event.record(side_stream)
                    _put(ready, stop, (start, batch, event))
            _put(ready, stop, None)
        except BaseException as error:  # noqa: BLE001 - handed to the consumer, which raises it
            _put(ready, stop, error)

    producer = threading.Thread(target=produce, name="vislaw-jpeg", daemon=True)
    producer.start()
    try:
        while True:
            item = ready.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            start, batch, event = item
            if event is not None:
                stream = torch.cuda.current_stream(device)
                stream.wait_event(event)
                batch.record_stream(stream)
            yield start, batch
    finally:
        stop.set()
        while producer.is_alive():  # unblock a producer waiting on a full queue
            try:
                ready.get_nowait()
            except queue.Empty:
                pass
            producer.join(timeout=0.05)


def _decode_and_frame(paths: Sequence[Path], blobs: list[bytes], size: int, mode: str,
                      device: torch.device) -> torch.Tensor:
    from torchvision.io import ImageReadMode, decode_jpeg

    decoded: list[torch.Tensor | None] = [None] * len(blobs)
    jpegs = [i for i, blob in enumerate(blobs) if is_jpeg(blob)]
    if jpegs:
        data = [torch.frombuffer(bytearray(blobs[i]), dtype=torch.uint8) for i in jpegs]
        try:
            for i, image in zip(jpegs, decode_jpeg(data, mode=ImageReadMode.RGB, device=device)):
                decoded[i] = image
        except RuntimeError:  # one bad file fails the batch: decode one by one, Pillow for the rest
            for i, one in zip(jpegs, data):
                try:
                    decoded[i] = decode_jpeg([one], mode=ImageReadMode.RGB, device=device)[0]
                except RuntimeError as error:
                    warnings.warn(f"{paths[i]}: torchvision could not decode it ({error}); framed by Pillow",
                                  stacklevel=2)
    done = [i for i, d in enumerate(decoded) if d is not None]
    if len(done) == len(blobs):
        return frame_tensors(decoded, size, mode)  # type: ignore[arg-type]  # none is None here
    out = torch.empty((len(blobs), 3, size, size), dtype=torch.uint8, device=device)
    if done:
        out[done] = frame_tensors([decoded[i] for i in done], size, mode)  # type: ignore[misc]
    for i in sorted(set(range(len(blobs))) - set(done)):  # not a JPEG (or refused): Pillow frames it
        try:
            pixels = framed_pixels(paths[i], size, mode).transpose(2, 0, 1)
        except Exception as error:
            raise RuntimeError(f"could not load/frame {paths[i]}: {error}") from error
        out[i] = torch.from_numpy(np.ascontiguousarray(pixels)).to(device)
    return out


def _put(ready: queue.Queue[Any], stop: threading.Event, item: Any) -> None:
    while not stop.is_set():
        try:
            ready.put(item, timeout=0.1)
            return
        except queue.Full:
            continue
