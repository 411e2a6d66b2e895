"""Extraction throughput: images/s and MB/s (float16 tokens written) for random-weight ViTs.

Runs the real path (`vislaw.features.extract_to_h5`: PNG decode, framing, forward, HDF5 write) on generated
images at the mini-world size (96 px) and at 224 px, on CPU and on GPU if present.

    python bench/extract_speed.py [--images 128] [--batch-size 32] [--threads N]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vislaw.encoders import EncoderSpec, create_encoder
from vislaw.features import extract_to_h5

HALF = (0.5, 0.5, 0.5)
# (label, timm model, image size, patch): tiny and small ViTs, random weights (throughput does not care).
CASES = [
    ("vit_tiny/16 @96 (mini-world)", "vit_tiny_patch16_224", 96, 16),
    ("vit_small/16 @96 (mini-world)", "vit_small_patch16_224", 96, 16),
    ("vit_tiny/16 @224", "vit_tiny_patch16_224", 224, 16),
    ("vit_small/16 @224", "vit_small_patch16_224", 224, 16),
]
# Paper-scale tower, GPU only (minutes per batch on a small CPU).
GPU_CASES = [("vit_large/14 @224", "vit_large_patch14_clip_224", 224, 14),
             ("vit_large/14 @336", "vit_large_patch14_clip_336", 336, 14)]


def write_images(root: Path, count: int, size: int) -> list[Path]:
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        path = root / f"{size}_{i:05d}.png"
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def run_case(model: str, size: int, patch: int, paths: list[Path], out: Path, batch: int,
             device: str) -> tuple[float, float, float]:
    """(build seconds, images/s, MB/s): the model is built once, outside the timed extraction."""
    spec = EncoderSpec(kind="timm", image_size=size, patch=patch, mean=HALF, std=HALF, name=model,
                       options={"model": model})
    start = time.perf_counter()
    encoder = create_encoder(spec)
    build = time.perf_counter() - start
    # Warm-up: CUDA context, cuDNN/oneDNN kernel choice, first allocations.
    extract_to_h5(spec, paths[:batch], out, dataset_fingerprint="warmup", batch_size=batch, device=device,
                  encoder=encoder)
    _sync(device)
    start = time.perf_counter()
    extract_to_h5(spec, paths, out, dataset_fingerprint="bench", batch_size=batch, device=device, encoder=encoder)
    _sync(device)
    seconds = time.perf_counter() - start
    return build, len(paths) / seconds, out.stat().st_size / 1e6 / seconds


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, "
          f"GPU: {torch.cuda.get_device_name() if torch.cuda.is_available() else 'none'}")
    print(f"{args.images} PNG images per case, batch {args.batch_size}; MB/s = float16 tokens written; "
          "build = random init, not timed in the rate")
    print(f"{'case':32s} {'device':6s} {'build s':>8s} {'images/s':>10s} {'MB/s':>8s}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        sizes = sorted({c[2] for c in CASES + (GPU_CASES if "cuda" in devices else [])})
        images = {size: write_images(root, args.images, size) for size in sizes}
        for device in devices:
            for label, model, size, patch in CASES + (GPU_CASES if device == "cuda" else []):
                build, rate, mbps = run_case(model, size, patch, images[size], root / "out.h5", args.batch_size, device)
                print(f"{label:32s} {device:6s} {build:8.2f} {rate:10.1f} {mbps:8.2f}", flush=True)


if __name__ == "__main__":
    main()
