"""Real-scale speed on one GPU (issue 8): extraction, C scoring and a stage-1 step beside the hardware's limits.

    PYTHONPATH=src python bench/gpu_speed.py [--budget-s 230] [--out DIR]   # a GPU: every check, under 5 minutes
    PYTHONPATH=src python bench/gpu_speed.py --tiny                          # CPU, tiny configs: every section runs
    PYTHONPATH=src python bench/gpu_speed.py --cpu-check                     # only: speed does not change results
    PYTHONPATH=src python bench/gpu_speed.py --only model,compile,e2e --equal-families clip   # some sections

Random weights only: every model is built from a transformers config, nothing is downloaded. The ceilings
are measured first on the same card: the bf16 matrix rate (an 8192^3 product of random matrices) and the
device-to-device copy bandwidth (bytes read + written). A ViT's FLOP bound is that rate over the FLOPs per
image of the layers the variant actually runs (patch embedding, linear layers and attention, counted
analytically); C scoring's bound is the bytes it must read (each pair's target tokens once) over the
bandwidth; stage 1's is the rate over about twice the forward FLOPs per token (backward to the inputs only:
the LM is frozen).

Sections, in order, each under a time limit that ends the script within ``--budget-s``:
  machine   matrix rate, copy bandwidth, SDPA backends at the ViT-L shapes
  equal     tiny towers: fast path vs transformers on the CPU; extraction + C on the CPU and on the GPU
  model     CLIP ViT-L/14@336, DINOv2 ViT-L/14@224 and @518, SigLIP L/16@256: images/s of plain transformers
            (bf16 weights, SDPA) and of vislaw before this issue (transformers under autocast) ('baselines'),
            of vislaw's fast path (cuDNN attention first) and of it with torch's default SDPA order, with
            each one's error against the float32 model; each tower then compiled ('compile')
  e2e       (after the first tower) loader and writer ceilings, then JPEG files -> framing worker processes
            (the GPU's default) or threads -> model -> HDF5 on disk through `extract_to_h5`, eager and compiled
            or nvJPEG + framing on the GPU (`vislaw.jpeg`, the GPU's default), with the decoders' equality
  probe     e2e without disk writes, without the model, and on JPEGs of one shape (what caps end to end)
  C         12,234 synthetic SPair-sized pairs scored from that cache on the GPU (and a part on the CPU)
  stage1    one stage-1 step (mlp2x_gelu projector, frozen ~0.5B Qwen2-shaped LM): tokens/s, peak memory, as
            run 1's sequence_logliks did it (every position's logits) and as vislaw.train does it now
  batch     each compiled tower at twice its batch as well
  profile   CLIP@336 and DINOv2@224 compiled: GPU time by kernel group (matrix products, attention, the rest)
  autotune  CLIP compiled with max-autotune, with what time is left

Rows are printed as measured and as one table at the end. With ``--out`` or ``$OUT`` set, gpu_speed.json and
gpu_speed.md are written there after every row, so a run cut short still leaves its rows. A failing section
becomes a row saying why; the script goes on.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import importlib.util
import io
import json
import os
import platform
import signal
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

os.environ.setdefault("TQDM_DISABLE", "1")  # progress bars would fill the captured output
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

SPAIR_CATEGORIES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "dog",
                    "horse", "motorbike", "person", "pottedplant", "sheep", "train", "tvmonitor")
SPAIR_TEST_PAIRS = 12_234
OPENAI_MEAN, OPENAI_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
HALF = (0.5, 0.5, 0.5)


# ---- rows, report, time budget ---------------------------------------------------------------------------


@dataclass
class Row:
    """One measurement. ``pct``: value as a percentage of the bound (for times: bound / value)."""

    section: str
    case: str
    variant: str
    value: float | None = None
    unit: str = ""
    bound: float | None = None
    pct: float | None = None
    accuracy: str = ""
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


class Report:
    def __init__(self, out_dir: Path | None, meta: dict[str, Any]) -> None:
        self.out_dir = out_dir
        self.meta = meta
        self.rows: list[Row] = []
        if out_dir is not None:
            out_dir.mkdir(parents=True, exist_ok=True)

    def add(self, row: Row) -> Row:
        self.rows.append(row)
        print("ROW " + " | ".join(_cells(row)), flush=True)
        self.flush()
        return row

    def table(self) -> str:
        head = ["section", "case", "variant", "result", "bound", "% of bound", "accuracy", "note"]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(_cells(row)) + " |" for row in self.rows]
        return "\n".join(lines)

    def flush(self) -> None:
        if self.out_dir is None:
            return
        (self.out_dir / "gpu_speed.json").write_text(
            json.dumps({"meta": self.meta, "rows": [asdict(r) for r in self.rows]}, indent=1, default=str))
        header = [f"# bench/gpu_speed.py on {self.meta.get('device_name')}", ""]
        header += [f"- {k}: {v}" for k, v in self.meta.items()]
        (self.out_dir / "gpu_speed.md").write_text("\n".join(header) + "\n\n" + self.table() + "\n")


def _cells(row: Row) -> list[str]:
    def num(v: float | None) -> str:
        if v is None:
            return ""
        return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3g}"

    result = f"{num(row.value)} {row.unit}".strip()
    bound = f"{num(row.bound)} {row.unit}".strip() if row.bound is not None else ""
    pct = f"{row.pct:.0f}%" if row.pct is not None else ""
    return [row.section, row.case, row.variant, result, bound, pct, row.accuracy, row.note]


class SectionTimeout(Exception):
    pass


class Budget:
    """Wall-clock budget for the whole script; `limit` bounds one section with SIGALRM."""

    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()

    @contextlib.contextmanager
    def limit(self, seconds: float) -> Iterator[None]:
        seconds = max(1.0, min(seconds, self.left()))

        def expire(_signum: int, _frame: Any) -> None:
            raise SectionTimeout(f"section exceeded its {seconds:.0f} s limit")

        previous = signal.signal(signal.SIGALRM, expire)
        signal.setitimer(signal.ITIMER_REAL, seconds)
        try:
            yield
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)


def run_section(report: Report, budget: Budget, section: str, case: str, cap: float, need: float,
                fn: Callable[[], Any]) -> Any:
    """Run ``fn`` within ``cap`` seconds if at least ``need`` seconds are left; failures become rows."""
    if budget.left() < need:
        report.add(Row(section, case, "skipped", note=f"time budget ({budget.left():.0f} s left, needs ~{need:.0f})"))
        return None
    start = time.monotonic()
    try:
        with budget.limit(cap):
            return fn()
    except Exception as err:  # a failed section is a row, and the script goes on
        traceback.print_exc(file=sys.stderr)
        message = f"{type(err).__name__}: {err}".replace("\n", " ").replace("|", "/")[:240]
        report.add(Row(section, case, "failed", note=f"{message} (after {time.monotonic() - start:.0f} s)"))
        return None
    finally:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


# ---- timing and ceilings ---------------------------------------------------------------------------------


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds_per_call(fn: Callable[[], Any], device: torch.device, warmup: int = 2, iters: int = 3,
                     repeats: int = 3) -> float:
    """Median over ``repeats`` of the mean time of ``iters`` calls, after ``warmup`` calls (device-synchronised)."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(iters):
                fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3 / iters)
        else:
            t0 = time.perf_counter()
            for _ in range(iters):
                fn()
            times.append((time.perf_counter() - t0) / iters)
    return statistics.median(times)


def matmul_rate(device: torch.device, n: int, dtype: torch.dtype) -> float:
    """FLOP/s of an n^3 matrix product of random (not zero) matrices."""
    gen = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, dtype=dtype, generator=gen)
    b = torch.randn(n, n, device=device, dtype=dtype, generator=gen)
    t = seconds_per_call(lambda: a @ b, device, warmup=3, iters=10, repeats=3)
    return 2 * n**3 / t


def copy_bandwidth(device: torch.device, nbytes: int) -> float:
    """Bytes/s of a large device-to-device copy, counting bytes read plus bytes written."""
    src = torch.rand(nbytes // 4, device=device)
    dst = torch.empty_like(src)
    t = seconds_per_call(lambda: dst.copy_(src), device, warmup=2, iters=5, repeats=3)
    return 2 * nbytes / t


def attention_backends(report: Report, device: torch.device, rate: float) -> None:
    """TFLOP/s of SDPA's fused backends at the ViT-L shapes (which one torch picks is its own choice; a
    faster one here is a lead for the next change, not something the fast path uses yet)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    for label, (batch, n) in {"CLIP-L@336": (64, 577), "DINOv2-L@518": (32, 1370)}.items():
        q, k, v = (torch.randn(batch, 16, n, 64, device=device, dtype=torch.bfloat16) for _ in range(3))
        flops = 4 * batch * 16 * n * n * 64
        for backend in ("FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION"):
            if not hasattr(SDPBackend, backend):
                continue
            try:
                with sdpa_kernel([getattr(SDPBackend, backend)]):
                    t = seconds_per_call(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v), device)
            except RuntimeError as err:
                report.add(Row("machine", f"SDPA {label}", backend.lower(), note=f"unavailable: {err}"[:120]))
                continue
            report.add(Row("machine", f"SDPA {label}", backend.lower(), flops / t / 1e12, "TFLOP/s", rate / 1e12,
                           100 * flops / t / rate, note=f"(B={batch}, 16 heads, N={n}, d=64) bf16"))


# ---- ViT cases -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VitCase:
    name: str
    family: str  # clip | dinov2 | siglip
    image_size: int
    patch: int
    hidden: int
    layers: int
    heads: int
    inter: int
    batch: int
    native: int  # the checkpoint's own resolution (position embeddings are interpolated from it)

    @property
    def stats(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        return {"clip": (OPENAI_MEAN, OPENAI_STD), "dinov2": (IMAGENET_MEAN, IMAGENET_STD),
                "siglip": (HALF, HALF)}[self.family]

    @property
    def prefix(self) -> int:
        return 0 if self.family == "siglip" else 1

    def flops(self, layers_run: int) -> float:
        """FLOPs per image: patch embedding + per block (QKV, out, fc1, fc2 products + QK^T and AV)."""
        patches = (self.image_size // self.patch) ** 2
        n, d = patches + self.prefix, self.hidden
        embed = 2 * patches * 3 * self.patch**2 * d
        block = 2 * n * (4 * d * d + 2 * d * self.inter) + 4 * n * n * d
        return embed + layers_run * block


def vit_cases(tiny: bool) -> list[VitCase]:
    if tiny:
        return [VitCase("clip_tiny_64", "clip", 64, 8, 64, 4, 4, 256, 8, 64),
                VitCase("dinov2_tiny_56", "dinov2", 56, 8, 64, 4, 4, 256, 8, 64),
                VitCase("siglip_tiny_64", "siglip", 64, 8, 64, 4, 4, 256, 8, 64)]
    return [VitCase("clip_l14_336", "clip", 336, 14, 1024, 24, 16, 4096, 64, 336),
            VitCase("dinov2_l14_224", "dinov2", 224, 14, 1024, 24, 16, 4096, 128, 518),
            VitCase("dinov2_l14_518", "dinov2", 518, 14, 1024, 24, 16, 4096, 32, 518),
            VitCase("siglip_l16_256", "siglip", 256, 16, 1024, 24, 16, 4096, 128, 256)]


def random_tower(case: VitCase, device: torch.device) -> torch.nn.Module:
    """A float32 random-weight transformers tower of ``case``'s shape, built on ``device``."""
    import transformers

    common = {"hidden_size": case.hidden, "num_hidden_layers": case.layers, "num_attention_heads": case.heads,
              "patch_size": case.patch, "image_size": case.native}
    if case.family == "clip":
        config, cls = transformers.CLIPVisionConfig(intermediate_size=case.inter, hidden_act="quick_gelu",
                                                    **common), transformers.CLIPVisionModel
    elif case.family == "siglip":
        config, cls = transformers.SiglipVisionConfig(intermediate_size=case.inter, **common), \
            transformers.SiglipVisionModel
    else:
        config, cls = transformers.Dinov2Config(mlp_ratio=case.inter // case.hidden, **common), transformers.Dinov2Model
    torch.manual_seed(0)
    with torch.device(device):  # random init on the GPU: seconds instead of a minute on the CPU
        model = cls(config)
    return model.to(device, torch.float32).eval()


def spec_of(case: VitCase, weights: str = "random-init") -> Any:
    from vislaw.encoders import EncoderSpec

    mean, std = case.stats
    return EncoderSpec(kind="hf", weights=weights, image_size=case.image_size, patch=case.patch, mean=mean,
                       std=std, name=case.name)


def rel_err(a: torch.Tensor, ref: torch.Tensor) -> float:
    return float((a.float() - ref.float()).norm() / ref.float().norm())


@dataclass
class VitState:
    """What later sections reuse of a model section."""

    case: VitCase
    model: torch.nn.Module
    encoder: Any
    x: torch.Tensor
    reference: torch.Tensor  # float32 transformers tokens of x[:4], layer -2
    rates: dict[str, float] = field(default_factory=dict)


def model_section(report: Report, case: VitCase, device: torch.device, rate: float,
                  baselines: bool = True) -> VitState:
    """Images/s of plain transformers bf16 and transformers + autocast (``baselines``), and of vislaw's fast
    path with its attention preference (cuDNN first on CUDA) and with torch's default SDPA order, + errors."""
    from vislaw.encoders.fastvit import exact_fp32
    from vislaw.encoders.hf import HFEncoder

    t0 = time.monotonic()
    model = random_tower(case, device)
    encoder = HFEncoder(spec_of(case), model).eval()
    build_s = time.monotonic() - t0
    mean, std = (torch.tensor(v, device=device).view(1, 3, 1, 1) for v in case.stats)
    gen = torch.Generator(device=device).manual_seed(1)
    x = torch.rand(case.batch, 3, case.image_size, case.image_size, device=device, generator=gen)
    normalised = (x - mean) / std
    kwargs = encoder._forward_kwargs  # interpolate_pos_encoding where the resolution is not the native one
    amp = torch.bfloat16 if device.type == "cuda" else torch.float32
    plain = copy.deepcopy(model).to(amp) if device.type == "cuda" else model
    prefix = case.prefix

    def hf_plain() -> torch.Tensor:
        return plain(pixel_values=normalised.to(amp), output_hidden_states=True, **kwargs).hidden_states[-2]

    def hf_autocast() -> torch.Tensor:
        with torch.autocast(device.type, dtype=amp, enabled=device.type == "cuda"):
            return model(pixel_values=normalised, output_hidden_states=True, **kwargs).hidden_states[-2]

    def fast() -> torch.Tensor:
        with torch.autocast(device.type, dtype=amp, enabled=device.type == "cuda"):
            return encoder.tokens(x)[-2]

    def fast_default_attention() -> torch.Tensor:
        preference, encoder.fast.attention = encoder.fast.attention, "default"
        try:
            return fast()
        finally:
            encoder.fast.attention = preference

    with torch.inference_mode():
        with exact_fp32():
            reference = model(pixel_values=normalised[:4], output_hidden_states=True, **kwargs).hidden_states[-2]
        reference = reference[:, prefix:].float()
        errors = {"fast": rel_err(fast()[:4], reference)}
        state = VitState(case, model, encoder, x, reference)
        variants = []
        if baselines:
            errors.update(plain=rel_err(hf_plain()[:4, prefix:], reference),
                          autocast=rel_err(hf_autocast()[:4, prefix:], reference))
            variants += [(f"transformers {str(amp).removeprefix('torch.')} SDPA", "plain", hf_plain, case.layers),
                         ("vislaw before: transformers+autocast", "autocast", hf_autocast, case.layers)]
        attention = encoder.fast.attention if encoder.fast is not None else "-"
        variants.append(("vislaw fast (eager)", "fast", fast, case.layers - 1))
        if device.type == "cuda" and encoder.fast is not None:
            errors["fast_default"] = rel_err(fast_default_attention()[:4], reference)
            variants.append(("vislaw fast (eager), torch's default SDPA order (run 1)", "fast_default",
                             fast_default_attention, case.layers - 1))
        for label, key, fn, layers_run in variants:
            t = seconds_per_call(fn, device)
            flops = case.flops(layers_run)
            rate_img = case.batch / t
            state.rates[key] = rate_img
            note = f"batch {case.batch}, {layers_run} blocks, {flops / 1e9:.1f} GFLOP/img"
            if key == "fast":
                note += f"; fast path: {'on' if encoder.fast is not None else 'OFF: ' + encoder.fast_reason}"
                note += f"; build+self-check {build_s:.1f} s"
                if device.type == "cuda" and encoder.fast is not None:
                    note += f"; SDPA preference: {encoder.fast.attention}"
                    if encoder.fast.attention != attention:
                        note += f" (the {attention} preference FAILED its first-run check: see the log)"
            report.add(Row("model", case.name, label, rate_img, "img/s", rate / flops, 100 * rate_img * flops / rate,
                           accuracy=f"rel.err {errors[key]:.1e}", note=note,
                           extra={"seconds_per_batch": t, "flops_per_image": flops, "rel_err": errors[key]}))
    del plain
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return state


def compile_section(report: Report, state: VitState, device: torch.device, rate: float, mode: str | None,
                    double_batch: bool = False) -> None:
    """The fast path with its blocks compiled; compile time reported separately from the rate."""
    import torch._dynamo

    case, encoder = state.case, state.encoder
    torch._dynamo.reset()  # a second compile of the same function with another mode must not reuse the first
    encoder.compile_blocks(mode)

    def fast() -> torch.Tensor:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            return encoder.tokens(state.x)[-2]

    with torch.inference_mode():
        t0 = time.monotonic()
        fast()
        sync(device)
        compile_s = time.monotonic() - t0
        t = seconds_per_call(fast, device)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            err = rel_err(encoder.tokens(state.x[:4])[-2], state.reference)  # padded to the compiled batch
    flops = case.flops(case.layers - 1)
    rate_img = case.batch / t
    state.rates[f"compiled:{mode or 'default'}"] = rate_img
    attention = getattr(encoder.fast, "attention", "-")
    report.add(Row("compile", case.name, f"vislaw fast + torch.compile {mode or 'default'}, attention {attention}",
                   rate_img, "img/s",
                   rate / flops, 100 * rate_img * flops / rate, accuracy=f"rel.err {err:.1e}",
                   note=f"batch {case.batch}; compile {compile_s:.0f} s (once per shape)",
                   extra={"seconds_per_batch": t, "compile_s": compile_s, "rel_err": err}))
    if double_batch:  # a larger batch: fuller waves for the matrix products (one more compilation)
        x2 = torch.cat([state.x, state.x])

        def fast2() -> torch.Tensor:
            with torch.autocast(device.type, dtype=torch.bfloat16):
                return encoder.tokens(x2)[-2]

        with torch.inference_mode():
            fast2()
            t2 = seconds_per_call(fast2, device)
        rate2 = 2 * case.batch / t2
        report.add(Row("compile", case.name, f"vislaw fast + torch.compile {mode or 'default'}, batch {2 * case.batch}",
                       rate2, "img/s", rate / flops, 100 * rate2 * flops / rate,
                       note=f"batch {2 * case.batch}", extra={"seconds_per_batch": t2}))


# ---- end to end ------------------------------------------------------------------------------------------


def write_jpegs(root: Path, count: int, distinct: int, sides: tuple[int, int], seed: int = 0) -> list[Path]:
    """``count`` JPEG files of SPair-like sizes; ``distinct`` different images, repeated under new names
    (decoding costs the same; writing 2,000 distinct JPEGs would cost more time than it tells)."""
    rng = np.random.default_rng(seed)
    blobs = []
    for _ in range(distinct):
        w, h = (int(v) for v in rng.integers(sides[0], sides[1] + 1, 2))
        coarse = Image.fromarray(rng.integers(0, 256, (h // 16 + 1, w // 16 + 1, 3), dtype=np.uint8))
        smooth = np.asarray(coarse.resize((w, h), Image.Resampling.BICUBIC)).astype(np.int16)
        noisy = np.clip(smooth + rng.integers(-12, 13, smooth.shape), 0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(noisy).save(buffer, "JPEG", quality=90)
        blobs.append(buffer.getvalue())
    paths = []
    for i in range(count):
        path = root / f"img{i:05d}.jpg"
        path.write_bytes(blobs[i % distinct])
        paths.append(path)
    return paths


def decode_rate(paths: list[Path], size: int, batch: int, threads: int, pin: bool, processes: bool = False,
                device: torch.device | None = None) -> float:
    """Images/s of decoding and framing alone (the loader's ceiling); processes: the pool is started first;
    ``device``: `vislaw.jpeg` decodes and frames on it instead (nvJPEG on a GPU)."""
    from vislaw import jpeg, loader
    from vislaw.features import _framed_batches

    if device is not None:
        for _ in jpeg.framed_batches(paths[: 2 * batch], batch, size, "pad", device):  # decoder's first use
            pass
        sync(device)
        t0 = time.monotonic()
        for _ in jpeg.framed_batches(paths, batch, size, "pad", device):
            pass
        sync(device)
        return len(paths) / (time.monotonic() - t0)
    if processes:
        loader.start_pool(threads)
    t0 = time.monotonic()
    for _ in _framed_batches(paths, batch, size, "pad", threads, pin, processes):
        pass
    return len(paths) / (time.monotonic() - t0)


def write_rate(report: Report, root: Path, case: VitCase, images: int, raw: bool) -> None:
    """Bytes/s of writing ``images`` rows of float16 tokens into a cache-like HDF5 file from pinned host
    memory: the extraction's writer (chunk offsets + os.pwrite, ``raw``) or plain h5py writes (run 1's)."""
    import h5py
    from tqdm import tqdm

    from vislaw import features

    tokens_per_image = (case.image_size // case.patch) ** 2
    batch = torch.randn(case.batch, tokens_per_image, case.hidden).to(torch.float16)
    if torch.cuda.is_available():
        batch = batch.pin_memory()
    out = root / f"write_{'raw' if raw else 'h5py'}.h5"
    offsets = features._chunk_offsets
    if not raw:
        features._chunk_offsets = lambda *_: None  # type: ignore[assignment]  # h5py writes
    os.sync()  # no earlier dirty pages in the way (see e2e_section)
    try:
        t0 = time.monotonic()
        with h5py.File(out, "w") as h5, tqdm(disable=True) as bar, features._TokenWriter(h5, images, bar) as writer:
            for start in range(0, images, case.batch):
                writer.put(start, batch[: min(case.batch, images - start)])
            raw_used = writer.offsets is not None
        seconds = time.monotonic() - t0
    finally:
        features._chunk_offsets = offsets
    size = out.stat().st_size
    out.unlink()
    report.add(Row("e2e", case.name, f"HDF5 write only, {'os.pwrite at chunk offsets' if raw_used else 'h5py'}",
                   size / seconds / 1e9, "GB/s",
                   note=f"{images} images x {tokens_per_image}x{case.hidden} float16 = {size / 1e9:.2f} GB in "
                        f"{seconds:.2f} s = {images / seconds:,.0f} img/s (the writer's ceiling)",
                   extra={"seconds": seconds, "bytes": size, "images_per_s": images / seconds}))


def e2e_section(report: Report, state: VitState, device: torch.device, root: Path, paths: list[Path],
                threads: int | None, label: str, model_key: str, processes: bool | None = None,
                decoder: str = "pil") -> Path:
    """Images/s through `extract_to_h5` (JPEG -> framing workers -> model -> HDF5), beside model-only.
    ``threads``: framing workers (None: the library's default); ``processes``: as extract_to_h5 takes it;
    ``decoder``: "pil" (those workers) or "device" (`vislaw.jpeg`: nvJPEG and framing on the GPU)."""
    from vislaw import loader
    from vislaw.features import extract_to_h5

    case, encoder = state.case, state.encoder
    ids = [p.stem for p in paths]
    use_processes = (device.type == "cuda" and loader.available()) if processes is None else processes
    workers = threads if threads is not None else (loader.default_workers() if use_processes else
                                                   min(16, os.cpu_count() or 1))
    kind = "processes" if use_processes else "threads"
    feeder = "nvJPEG + framing on the GPU" if decoder == "device" else f"{workers} framing {kind}"
    out = root / f"cache_{decoder}_{workers}{kind}_{model_key.replace(':', '_')}.h5"
    warm = paths[: 2 * case.batch]  # also starts the framing processes (kept for the process's later calls)
    kw = {"batch_size": case.batch, "device": device, "loader_threads": workers, "encoder": encoder,
          "loader_processes": use_processes, "compile_mode": None, "decoder": decoder}
    extract_to_h5(encoder.spec, warm, root / "warm.h5", image_ids=ids[: len(warm)], dataset_fingerprint="warmup", **kw)
    sync(device)
    # Every row starts with no dirty pages: run 1-3's later e2e rows were slowed by the kernel writing back
    # the earlier rows' caches (2.4 GB each), not by the pipeline. The write-back of this row's own cache
    # is timed after it (the "sync" figure: what a user waits for only if they wait for the disk).
    os.sync()
    t0 = time.monotonic()
    extract_to_h5(encoder.spec, paths, out, image_ids=ids, dataset_fingerprint="bench", **kw)
    seconds = time.monotonic() - t0
    t1 = time.monotonic()
    os.sync()
    sync_s = time.monotonic() - t1
    rate_img = len(paths) / seconds
    model_only = state.rates[model_key]
    report.add(Row("e2e", case.name, f"{label}, {feeder}", rate_img, "img/s", model_only,
                   100 * rate_img / model_only,
                   note=f"{len(paths)} JPEGs -> HDF5 {out.stat().st_size / 1e9:.2f} GB in {seconds:.1f} s, then "
                        f"{sync_s:.1f} s to write it back to disk (os.sync); bound = model-only {model_key}",
                   extra={"seconds": seconds, "sync_s": sync_s, "images": len(paths), "bytes": out.stat().st_size}))
    return out


class _FixedTokens:
    """An encoder stand-in that returns one fixed token batch: the pipeline's rate without the model."""

    def __init__(self, encoder: Any, batch: torch.Tensor) -> None:
        self.spec, self.fast, self.num_prefix_tokens = encoder.spec, None, encoder.num_prefix_tokens
        with torch.inference_mode():
            self.out = encoder.tokens(batch)[encoder.spec.layer].clone()

    def to(self, _device: Any) -> _FixedTokens:
        return self

    def tokens(self, batch: torch.Tensor) -> dict[int, torch.Tensor]:
        return {self.spec.layer: self.out[: len(batch)]}


def e2e_probe(report: Report, state: VitState, device: torch.device, root: Path, paths: list[Path],
              same_shape: list[Path]) -> None:
    """Which part caps end to end: the same extraction without disk writes, without the model, and on JPEGs
    of one shape (the device decoder frames each distinct shape separately)."""
    from vislaw import features

    pwrite = features._TokenWriter._pwrite
    features._TokenWriter._pwrite = lambda self, start, array: None  # type: ignore[method-assign]
    try:
        for decoder in ("pil", "device"):
            e2e_section(report, state, device, root, paths, None, "probe: no disk writes", "fast", decoder=decoder)
    finally:
        features._TokenWriter._pwrite = pwrite  # type: ignore[method-assign]
    model = state.encoder
    state.encoder = _FixedTokens(model, state.x)
    try:
        for decoder in ("pil", "device"):
            e2e_section(report, state, device, root, paths, None, "probe: no model (fixed tokens)", "fast",
                        decoder=decoder)
    finally:
        state.encoder = model
    e2e_section(report, state, device, root, same_shape, None, "probe: JPEGs of one shape", "fast", decoder="device")


def decoder_equality(report: Report, case: VitCase, device: torch.device, pil_cache: Path, device_cache: Path,
                     paths: list[Path]) -> None:
    """The full-size decoder check: pixels of nvJPEG + GPU framing against Pillow's, and the two caches
    (same model, same bf16 path) against each other, with the C of 2,000 synthetic pairs scored from each."""
    import h5py

    from vislaw import jpeg
    from vislaw.encoders.frame import framed_pixels
    from vislaw.scores.correspondence import CorrespondenceProtocol, c_record, evaluate_pairs

    sample = paths[:64]
    gpu = torch.cat([b for _, b in jpeg.framed_batches(sample, 32, case.image_size, "pad", device)]).cpu()
    cpu = np.stack([framed_pixels(p, case.image_size, "pad").transpose(2, 0, 1) for p in sample])
    diff = np.abs(gpu.numpy().astype(int) - cpu.astype(int))
    report.add(Row("equal", case.name, "pixels: nvJPEG + GPU framing vs Pillow (64 JPEGs)", float(diff.mean()),
                   "levels (mean)", note=f"max {diff.max()}, {100 * (diff > 0).mean():.1f} % of values differ"))
    n = min(256, len(paths))
    with h5py.File(pil_cache, "r") as a, h5py.File(device_cache, "r") as b:
        x, y = a["tokens"][:n].astype(np.float32), b["tokens"][:n].astype(np.float32)
    err = float(np.linalg.norm(y - x) / np.linalg.norm(x))
    protocol = CorrespondenceProtocol()
    pairs = synthetic_pairs(n, 2000, protocol.frame_size, seed=7)
    grid = (case.image_size // case.patch,) * 2
    c_pil = evaluate_pairs(torch.from_numpy(x).to(device), grid, pairs, protocol)
    c_dev = evaluate_pairs(torch.from_numpy(y).to(device), grid, pairs, protocol)
    main = protocol.alphas[0]
    flips = int((c_pil.correct[main] != c_dev.correct[main]).sum())
    n_kp = int(c_pil.kp_mask.sum())
    passed = err <= 3e-2
    report.add(Row("equal", case.name, f"caches: nvJPEG decoder vs Pillow loader (bf16 on gpu, {n} images)",
                   c_record(c_dev, protocol)["C"] - c_record(c_pil, protocol)["C"], "dC",
                   accuracy="PASS" if passed else "FAIL",
                   note=f"features rel.L2 {err:.1e} (limit 3e-2, the bf16 path's own); "
                        f"C {c_record(c_pil, protocol)['C']:.2f}; {flips} of {n_kp} keypoints differ "
                        f"(2,000 synthetic pairs; reported)"))


def profile_section(report: Report, state: VitState, device: torch.device) -> None:
    """Where a compiled batch's GPU time goes: kernels grouped into matrix products, attention, the rest."""
    from torch.profiler import ProfilerActivity, profile

    encoder = state.encoder

    def fast() -> torch.Tensor:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            return encoder.tokens(state.x)[-2]

    cuda = device.type == "cuda"
    with torch.inference_mode():
        fast()
        sync(device)
        with profile(activities=[ProfilerActivity.CUDA if cuda else ProfilerActivity.CPU]) as prof:
            for _ in range(2):
                fast()
            sync(device)

    def spent(event: Any) -> float:  # microseconds on the device (self time on a CPU)
        return float(getattr(event, "device_time_total", 0.0) or 0.0) if cuda else float(event.self_cpu_time_total)

    groups: dict[str, float] = {}
    for event in prof.key_averages():
        name = event.key.lower()
        us = spent(event)
        if any(k in name for k in ("attention", "fmha", "flash", "cudnn", "sdpa")):
            group = "attention"
        elif any(k in name for k in ("gemm", "xmma", "cutlass", "sm90", "matmul", "nvjet", "addmm", "linear")):
            group = "matrix products"
        elif "triton" in name:
            group = "fused elementwise (triton)"
        else:
            group = "other"
        groups[group] = groups.get(group, 0.0) + us
    total = sum(groups.values())
    for group, us in sorted(groups.items(), key=lambda kv: -kv[1]):
        report.add(Row("profile", state.case.name, group, us / 2 / 1e3, "ms/batch", note=f"{100 * us / total:.0f} % of "
                       f"GPU time; batch {state.case.batch}, compiled blocks" if total else ""))
    for event in sorted(prof.key_averages(), key=lambda e: -spent(e))[:6]:
        report.add(Row("profile", state.case.name, f"kernel {event.key[:60]}", spent(event) / 2 / 1e3, "ms/batch",
                       note=f"{event.count // 2} calls per batch"))


# ---- C scoring -------------------------------------------------------------------------------------------


def synthetic_pairs(n_images: int, n_pairs: int, frame: float, seed: int = 0, max_kps: int = 20,
                    self_fraction: float = 0.5) -> Any:
    """SPair-sized pairs: 1..max_kps keypoints each (SPair averages ~10), 18 categories. A share
    ``self_fraction`` of them, drawn at random, pair an image with itself (same keypoints, a box around
    them), so that part of the keypoints are found and C is not near zero; the rest are random."""
    from vislaw.scores.correspondence import PairBatch

    rng = np.random.default_rng(seed)
    src = rng.integers(0, n_images, n_pairs)
    trg = (src + rng.integers(1, max(2, n_images), n_pairs)) % n_images
    counts = rng.integers(1, max_kps + 1, n_pairs)
    mask = np.arange(max_kps)[None, :] < counts[:, None]
    src_kps = rng.uniform(0.1 * frame, 0.9 * frame, (n_pairs, max_kps, 2))
    trg_kps = rng.uniform(0, frame, (n_pairs, max_kps, 2))
    corner = rng.uniform(0, 0.6 * frame, (n_pairs, 2))
    bbox = np.concatenate([corner, corner + rng.uniform(0.1 * frame, 0.4 * frame, (n_pairs, 2))], axis=1)
    same = rng.random(n_pairs) < self_fraction
    trg[same] = src[same]
    trg_kps[same] = src_kps[same]
    side = rng.uniform(0.2 * frame, 0.9 * frame, (n_pairs, 1))
    centre = src_kps.mean(axis=1)
    bbox[same] = np.concatenate([centre - side / 2, centre + side / 2], axis=1)[same]
    return PairBatch(
        src_index=src, trg_index=trg, src_kps=src_kps, trg_kps=trg_kps, kp_mask=mask, trg_bbox=bbox,
        categories=[SPAIR_CATEGORIES[i] for i in rng.integers(0, len(SPAIR_CATEGORIES), n_pairs)],
        kp_ids=np.where(mask, np.arange(max_kps)[None, :], -1),
    )


def predicted(features: torch.Tensor, grid: tuple[int, int], pairs: Any, protocol: Any) -> np.ndarray:
    """(P, K, 2) predicted target points (padding included), as numpy on the CPU."""
    from vislaw.scores.correspondence import predict_keypoints

    device = features.device
    out = predict_keypoints(features, grid, torch.as_tensor(pairs.src_index, device=device),
                            torch.as_tensor(pairs.trg_index, device=device),
                            torch.as_tensor(np.asarray(pairs.src_kps, dtype=np.float32), device=device), protocol)
    return out.double().cpu().numpy()


def subset(pairs: Any, n: int) -> Any:
    from vislaw.scores.correspondence import PairBatch

    return PairBatch(src_index=pairs.src_index[:n], trg_index=pairs.trg_index[:n], src_kps=pairs.src_kps[:n],
                     trg_kps=pairs.trg_kps[:n], kp_mask=pairs.kp_mask[:n], trg_bbox=pairs.trg_bbox[:n],
                     categories=list(pairs.categories[:n]), kp_ids=pairs.kp_ids[:n])


def c_section(report: Report, device: torch.device, bandwidth: float, cache: Path | None, case: VitCase,
              n_pairs: int, cpu_pairs: int) -> None:
    """C scoring of ``n_pairs`` pairs from the e2e cache (or random float16 tokens if there is none)."""
    from vislaw.features import open_cache
    from vislaw.scores.correspondence import CorrespondenceProtocol, c_record, evaluate_pairs

    grid = (case.image_size // case.patch,) * 2
    read_s = 0.0
    if cache is not None:
        import h5py

        t0 = time.monotonic()
        with h5py.File(cache, "r") as h5:
            protocol = json.loads(h5.attrs["protocol"])
        with open_cache(cache, protocol) as features_cache:
            features = features_cache.read(features_cache.image_ids)
        read_s = time.monotonic() - t0
        source = f"e2e cache {cache.name}"
    else:
        rng = np.random.default_rng(0)
        features = rng.standard_normal((1800, grid[0] * grid[1], case.hidden), dtype=np.float32).astype(np.float16)
        source = "random float16 tokens (no e2e cache)"
    n_images, tokens, channels = features.shape
    pairs = synthetic_pairs(n_images, n_pairs, 840.0)
    protocol = CorrespondenceProtocol()
    t0 = time.monotonic()
    on_device = torch.from_numpy(features).to(device)
    sync(device)
    upload_s = time.monotonic() - t0
    t0 = time.monotonic()
    result = evaluate_pairs(on_device, grid, pairs, protocol)
    record = c_record(result, protocol)
    score_s = time.monotonic() - t0
    total = read_s + upload_s + score_s
    moved = n_pairs * tokens * channels * 2  # each pair's target tokens read once, float16
    bound = moved / bandwidth
    report.add(Row("C", f"{n_pairs:,} pairs, {grid[0]}x{grid[1]}x{channels}", f"evaluate_pairs on {device.type}",
                   total, "s", bound, 100 * bound / total, accuracy=f"C={record['C']:.2f}",
                   note=f"{source}: read {read_s:.2f} s + upload {upload_s:.2f} s + score {score_s:.2f} s; "
                        f"bound = {moved / 1e9:.1f} GB / copy bandwidth",
                   extra={"read_s": read_s, "upload_s": upload_s, "score_s": score_s, "C": record["C"]}))
    if device.type == "cuda" and cpu_pairs:
        part = subset(pairs, cpu_pairs)
        t0 = time.monotonic()
        on_cpu = evaluate_pairs(torch.from_numpy(features), grid, part, protocol)
        cpu_s = time.monotonic() - t0
        flips = int((on_cpu.correct[protocol.alphas[0]] != result.correct[protocol.alphas[0]][:cpu_pairs]).sum())
        gpu_c = c_record(subset_result(result, cpu_pairs), protocol)["C"]
        cpu_c = c_record(on_cpu, protocol)["C"]
        report.add(Row("C", f"{cpu_pairs:,} of those pairs", "evaluate_pairs on cpu", cpu_s * n_pairs / cpu_pairs, "s",
                       note=f"time scaled to {n_pairs:,} pairs ({cpu_s:.1f} s measured, {os.cpu_count()} cores)",
                       accuracy=f"{'PASS' if flips == 0 else 'DIFF'}: C cpu {cpu_c:.4f} gpu {gpu_c:.4f}, "
                                f"{flips} keypoint(s) differ",
                       extra={"flips": flips, "cpu_C": cpu_c, "gpu_C": gpu_c}))


def subset_result(result: Any, n: int) -> Any:
    from vislaw.scores.correspondence import CorrespondenceResult

    return CorrespondenceResult(correct={a: c[:n] for a, c in result.correct.items()}, kp_mask=result.kp_mask[:n],
                                categories=result.categories[:n],
                                kp_ids=None if result.kp_ids is None else result.kp_ids[:n])


# ---- stage 1 ---------------------------------------------------------------------------------------------


def stage1_section(report: Report, device: torch.device, rate: float, tiny: bool) -> None:
    """One stage-1 step as `vislaw.train` takes it (projector learns, LM frozen), and with logits only where
    the loss needs them (``logits_to_keep``): tokens/s and peak memory."""
    import transformers

    from vislaw.scores.alignment import token_logliks
    from vislaw.train import Projector, build_batch, sequence_logliks

    if tiny:
        shape = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
                 "num_key_value_heads": 2, "vocab_size": 1000}
        batch, n_visual, channels, text = 4, 16, 64, 8
    else:  # Qwen2-0.5B's shape
        shape = {"hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24, "num_attention_heads": 14,
                 "num_key_value_heads": 2, "vocab_size": 151_936}
        batch, n_visual, channels, text = 16, 576, 1024, 32
    config = transformers.Qwen2Config(max_position_embeddings=4096, tie_word_embeddings=True, **shape)
    torch.manual_seed(0)
    with torch.device(device):
        llm = transformers.Qwen2ForCausalLM(config)
    amp = torch.bfloat16 if device.type == "cuda" else torch.float32
    llm = llm.to(device, amp).eval().requires_grad_(False)
    tokenizer = SimpleNamespace(pad_token_id=0, bos_token_id=1, eos_token_id=2)
    projector = Projector(channels, shape["hidden_size"]).to(device)
    optimizer = torch.optim.AdamW(projector.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    visual = torch.randn(batch, n_visual, channels, generator=gen).to(device, torch.float16)
    texts = [(torch.randint(3, shape["vocab_size"], (text,), generator=gen).tolist(), [True] * text)] * batch
    length = 1 + n_visual + text

    def loss_of(keep: bool) -> torch.Tensor:
        with torch.autocast(device.type, dtype=amp, enabled=device.type == "cuda"):
            if keep:  # vislaw.train since run 1: logits from the first scored position on
                return -sequence_logliks(llm, projector, visual, texts, tokenizer).mean()
            embeds, labels, scored, attention = build_batch(llm, projector, visual, texts, tokenizer)
            logits = llm(inputs_embeds=embeds, attention_mask=attention).logits  # run 1's: every position
            return -token_logliks(logits, labels, scored).mean()

    def step(keep: bool) -> None:
        loss = loss_of(keep)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(projector.parameters(), 1.0)
        optimizer.step()

    with torch.no_grad():
        losses = {keep: float(loss_of(keep)) for keep in (False, True)}  # same projector: must agree

    n_params = sum(p.numel() for p in llm.parameters())
    d, layers, vocab = shape["hidden_size"], shape["num_hidden_layers"], shape["vocab_size"]
    body = n_params - vocab * d  # tied embeddings: the LM head is the embedding matrix
    for keep in (False, True):
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        t = seconds_per_call(lambda: step(keep), device, warmup=2, iters=2, repeats=2)
        peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
        head_positions = (text + 1) if keep else length
        # forward + backward to the inputs (frozen weights: no weight gradients) ~ 2 x forward
        forward = 2 * body * length + 2 * d * vocab * head_positions + 4 * layers * length * length * d
        flops_token = 2 * forward / length
        tokens_s = batch * length / t
        report.add(Row("stage1", f"Qwen2-{n_params / 1e9:.2f}B shape, batch {batch} x {length} tokens",
                       "before: logits at every position (run 1's sequence_logliks)" if not keep
                       else "train.sequence_logliks: logits from the first scored position (logits_to_keep)",
                       tokens_s, "tok/s", rate / flops_token, 100 * tokens_s * flops_token / rate,
                       accuracy=f"loss {losses[keep]:.4f}" + (f" (vs {losses[False]:.4f})" if keep else ""),
                       note=f"{t * 1e3:.0f} ms/step, peak {peak:.1f} GiB; bound ~2x forward FLOPs",
                       extra={"seconds_per_step": t, "peak_gib": peak, "flops_per_token": flops_token}))


# ---- equality: speed does not change results --------------------------------------------------------------


def equality_section(report: Report, device: torch.device, root: Path,
                     families: tuple[str, ...] = ("clip", "dinov2", "siglip")) -> bool:
    """Tiny CLIP/DINOv2/SigLIP checkpoints: extraction (fast path and plain transformers) and C scoring on the
    CPU, and on the GPU if there is one; True when every comparison passes."""
    import transformers

    from vislaw.encoders import EncoderSpec
    from vislaw.encoders.hf import HFEncoder
    from vislaw.features import extract_to_h5, open_cache
    from vislaw.scores.correspondence import CorrespondenceProtocol, c_record, evaluate_pairs

    classes = {"clip": ("CLIPVisionConfig", "CLIPVisionModel", OPENAI_MEAN, OPENAI_STD, {"hidden_act": "quick_gelu"}),
               "dinov2": ("Dinov2Config", "Dinov2Model", IMAGENET_MEAN, IMAGENET_STD, {"layerscale_value": 0.3}),
               "siglip": ("SiglipVisionConfig", "SiglipVisionModel", HALF, HALF, {})}
    paths = write_jpegs(root, 24, 24, (40, 90), seed=3)
    ids = [p.stem for p in paths]
    protocol = CorrespondenceProtocol()
    pairs = synthetic_pairs(len(paths), 300, protocol.frame_size, seed=5)
    ok = True

    def read(path: Path) -> np.ndarray:
        import h5py

        with h5py.File(path, "r") as h5:
            expect = json.loads(h5.attrs["protocol"])
        with open_cache(path, expect) as cache:
            return cache.read(ids).astype(np.float32)

    for family, (config_cls, model_cls, mean, std, extra) in classes.items():
        if family not in families:
            continue
        torch.manual_seed(0)
        config = getattr(transformers, config_cls)(hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                                                   num_attention_heads=4, patch_size=8, image_size=64, **extra)
        model = getattr(transformers, model_cls)(config).eval()
        weights = root / f"tiny_{family}"
        model.save_pretrained(weights)
        spec = EncoderSpec(kind="hf", weights=str(weights), image_size=64, patch=8, mean=mean, std=std,
                           name=f"tiny_{family}")
        kw = {"image_ids": ids, "dataset_fingerprint": "equality", "batch_size": 5, "loader_threads": 3,
              "decoder": "pil"}
        extract_to_h5(spec, paths, root / f"{family}_cpu.h5", device="cpu", **kw)
        plain = HFEncoder(spec, getattr(transformers, model_cls).from_pretrained(weights, dtype=torch.float32).eval(),
                          fast=False)
        extract_to_h5(spec, paths, root / f"{family}_ref.h5", device="cpu", encoder=plain, **kw)
        cpu, ref = read(root / f"{family}_cpu.h5"), read(root / f"{family}_ref.h5")
        err = float(np.linalg.norm(cpu - ref) / np.linalg.norm(ref))
        passed = err <= 1e-3
        ok &= passed
        report.add(Row("equal", f"tiny {family}", "cpu: fast path vs plain transformers (fp16 caches)", err,
                       "rel.L2", accuracy="PASS" if passed else "FAIL", note="limit 1e-3 (float16 storage)"))
        grid = spec.grid
        c_cpu = evaluate_pairs(torch.from_numpy(cpu), grid, pairs, protocol)
        main = protocol.alphas[0]
        if device.type != "cuda":
            report.add(Row("equal", f"tiny {family}", "C on cpu", c_record(c_cpu, protocol)["C"], "C",
                           note="no GPU: the GPU comparisons run where there is one"))
            continue
        c_same = evaluate_pairs(torch.from_numpy(cpu).to(device), grid, pairs, protocol)
        flips = int((c_same.correct[main] != c_cpu.correct[main]).sum())
        mask = np.asarray(pairs.kp_mask)
        at_cpu = predicted(torch.from_numpy(cpu), grid, pairs, protocol)
        shift = float(np.abs(predicted(torch.from_numpy(cpu).to(device), grid, pairs, protocol) - at_cpu)[mask].max())
        passed = flips == 0 and shift < 1e-2
        ok &= passed
        report.add(Row("equal", f"tiny {family}", "C of the cpu cache: scored on gpu vs cpu",
                       c_record(c_same, protocol)["C"] - c_record(c_cpu, protocol)["C"], "dC",
                       accuracy="PASS" if passed else "FAIL",
                       note=f"C {c_record(c_cpu, protocol)['C']:.2f}; {flips} keypoint(s) differ (limit 0); "
                            f"predictions move {shift:.1e} px at most (limit 1e-2)"))
        n_kp = int(c_cpu.kp_mask.sum())

        def on_gpu(name: str, **options: Any) -> tuple[np.ndarray, float, Any, int]:
            """A GPU extraction of the same images: features, rel.L2 to the CPU's, its C result, keypoint flips."""
            extract_to_h5(spec, paths, root / f"{family}_{name}.h5", device=device, **{**kw, **options})
            features = read(root / f"{family}_{name}.h5")
            result = evaluate_pairs(torch.from_numpy(features).to(device), grid, pairs, protocol)
            return (features, float(np.linalg.norm(features - cpu) / np.linalg.norm(cpu)), result,
                    int((result.correct[main] != c_cpu.correct[main]).sum()))

        def dc(result: Any) -> float:
            return c_record(result, protocol)["C"] - c_record(c_cpu, protocol)["C"]

        # The same function on the GPU in float32: must give the CPU's numbers up to float32 rounding.
        _, ferr, c_gpu32, flips = on_gpu("gpu32", compute_dtype=torch.float32)
        passed = ferr <= 1e-3 and flips <= 1
        ok &= passed
        report.add(Row("equal", f"tiny {family}", "gpu fp32 extraction + gpu C vs cpu extraction + cpu C",
                       dc(c_gpu32), "dC", accuracy="PASS" if passed else "FAIL",
                       note=f"features rel.L2 {ferr:.1e} (limit 1e-3, float16 storage); {flips} of {n_kp} "
                            f"keypoints differ (limit 1)"))
        # The production GPU path (bf16): its features differ by bf16 rounding; C's change is reported.
        gpu, ferr, c_gpu, flips = on_gpu("gpu")
        moved = np.linalg.norm(predicted(torch.from_numpy(gpu).to(device), grid, pairs, protocol) - at_cpu, axis=-1)
        passed = ferr <= 3e-2
        ok &= passed
        report.add(Row("equal", f"tiny {family}", "gpu bf16 extraction + gpu C vs cpu fp32 extraction + cpu C",
                       dc(c_gpu), "dC", accuracy="PASS" if passed else "FAIL",
                       note=f"features rel.L2 {ferr:.1e} (limit 3e-2: bf16 rounding); {flips} of {n_kp} keypoints "
                            f"differ, median prediction moves {np.median(moved[mask]):.2g} px (reported, no limit)"))
        # The opt-in device decoder (nvJPEG + framing on the GPU) through the same bf16 path: against the
        # CPU's float32 cache, and against the Pillow loader's bf16 cache (the decoder's rounding alone).
        from vislaw import jpeg

        if jpeg.available(device.type):
            nv, ferr, c_nv, flips = on_gpu("gpu_nvjpeg", decoder="device")
            derr = float(np.linalg.norm(nv - gpu) / np.linalg.norm(gpu))
            passed = ferr <= 3e-2
            ok &= passed
            report.add(Row("equal", f"tiny {family}", "gpu bf16, nvJPEG decoder + gpu C vs cpu fp32 extraction + "
                           "cpu C", dc(c_nv), "dC", accuracy="PASS" if passed else "FAIL",
                           note=f"features rel.L2 {ferr:.1e} vs cpu (limit 3e-2), {derr:.1e} vs the Pillow loader's "
                                f"gpu bf16 cache; {flips} of {n_kp} keypoints differ (reported)"))
    return ok


# ---- main ------------------------------------------------------------------------------------------------


SECTIONS = ("machine", "equal", "model", "baselines", "e2e", "probe", "C", "stage1", "compile", "batch", "profile",
            "autotune")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny configs (CPU-sized), every section")
    parser.add_argument("--cpu-check", action="store_true", help="only the equality section; exit 1 on a failure")
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--budget-s", type=float, default=230.0, help="wall-clock budget after imports")
    parser.add_argument("--out", type=Path, default=Path(os.environ["OUT"]) if os.environ.get("OUT") else None)
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile section")
    parser.add_argument("--only", default=None,
                        help=f"comma-separated sections to run, of {', '.join(SECTIONS)} (default: all). The "
                             "matrix rate is always measured (every bound needs it); 'machine' adds the copy "
                             "bandwidth and SDPA rows, 'baselines' the transformers/autocast model rows, "
                             "'autotune' the max-autotune compile row")
    parser.add_argument("--equal-families", default="clip,dinov2,siglip",
                        help="tiny towers the equality section checks (comma-separated)")
    args = parser.parse_args()
    only = set(SECTIONS) if args.only is None else {x.strip() for x in args.only.split(",") if x.strip()}
    if not only <= set(SECTIONS):
        parser.error(f"--only: unknown section(s) {sorted(only - set(SECTIONS))}; known: {', '.join(SECTIONS)}")
    if args.no_compile:
        only -= {"compile", "autotune"}
    families = tuple(x.strip() for x in args.equal_families.split(",") if x.strip())

    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    tiny = args.tiny or device.type == "cpu"
    budget = Budget(args.budget_s)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.processor() or 'cpu'})"
    meta = {"device_name": name, "torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version(), "cpus": os.cpu_count(), "mode": "tiny" if tiny else "full",
            "sections": ",".join(s for s in SECTIONS if s in only),
            "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    report = Report(args.out, meta)
    print(f"device: {name}; torch {torch.__version__}, transformers {transformers.__version__}, "
          f"{os.cpu_count()} CPUs; budget {args.budget_s:.0f} s; sections {meta['sections']}", flush=True)
    scratch = tempfile.TemporaryDirectory(prefix="gpu_speed_")
    root = Path(scratch.name)
    threads = min(16, os.cpu_count() or 1)
    started = time.monotonic()

    def mark(what: str) -> None:
        print(f"[{time.monotonic() - started:6.1f} s] {what}", file=sys.stderr, flush=True)

    if args.cpu_check:
        (root / "equal").mkdir()
        ok = run_section(report, budget, "equal", "tiny towers", 600, 0,
                         lambda: equality_section(report, device, root / "equal", families))
        print("\n" + report.table())
        return 0 if ok else 1

    # machine ceilings
    ceilings: dict[str, float] = {}

    def machine() -> None:
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        n = 8192 if device.type == "cuda" else 512
        ceilings["rate"] = matmul_rate(device, n, dtype)
        report.add(Row("machine", name, f"{n}^3 {str(dtype).removeprefix('torch.')} matmul", ceilings["rate"] / 1e12,
                       "TFLOP/s", note="random operands, median of 3 x 10"))
        if "machine" in only or "C" in only:
            ceilings["bandwidth"] = copy_bandwidth(device, 2 << 30 if device.type == "cuda" else 64 << 20)
            report.add(Row("machine", name, "device copy (read + write)", ceilings["bandwidth"] / 1e9, "GB/s"))

    run_section(report, budget, "machine", name, 30, 0, machine)
    if device.type == "cuda" and "machine" in only:
        run_section(report, budget, "machine", "attention", 20, 10,
                    lambda: attention_backends(report, device, ceilings.get("rate", float("nan"))))
    rate = ceilings.get("rate", float("nan"))
    bandwidth = ceilings.get("bandwidth", float("nan"))
    report.meta.update({"matmul_tflops": rate / 1e12, "copy_gbps": bandwidth / 1e9})
    mark("machine")

    if "equal" in only:
        (root / "equal").mkdir()
        run_section(report, budget, "equal", "tiny towers", 60, 10,
                    lambda: equality_section(report, device, root / "equal", families))
        mark("equal")

    compiling = device.type == "cuda" and "compile" in only
    states: dict[str, VitState] = {}
    cache: Path | None = None

    def end_to_end(first: VitState) -> Path | None:
        """The e2e rows on the first tower (CLIP@336): loader and writer ceilings, then extraction eager
        and (if compiled) compiled with the default loader, and compiled with run 1's framing threads."""
        from vislaw import jpeg, loader

        count, distinct, sides = (128, 16, (60, 120)) if tiny else (2048, 128, (250, 500))
        (root / "jpeg").mkdir()
        paths = run_section(report, budget, "e2e", "write JPEGs", 30, 10,
                            lambda: write_jpegs(root / "jpeg", count, distinct, sides))
        mark("jpegs")
        if not paths:
            return None
        workers = loader.default_workers()
        size, batch = first.case.image_size, first.case.batch
        run_section(report, budget, "e2e", first.case.name, 20, 5, lambda: report.add(Row(
            "e2e", first.case.name, f"decode + frame only, {threads} threads",
            decode_rate(paths, size, batch, threads, device.type == "cuda"), "img/s",
            note="run 1's loader: the ceiling of threads (no model)")))
        if loader.available():
            run_section(report, budget, "e2e", first.case.name, 20, 5, lambda: report.add(Row(
                "e2e", first.case.name, f"decode + frame only, {workers} processes",
                decode_rate(paths, size, batch, workers, device.type == "cuda", processes=True), "img/s",
                note="vislaw.loader: the ceiling of the GPU's loader (no model)")))
        gpu_decoder = jpeg.available(device.type)  # on a CPU (--tiny): the same path with libjpeg-turbo
        if gpu_decoder:
            run_section(report, budget, "e2e", first.case.name, 20, 5, lambda: report.add(Row(
                "e2e", first.case.name, "decode + frame only, nvJPEG + framing on the GPU",
                decode_rate(paths, size, batch, 0, False, device=device), "img/s",
                note="vislaw.jpeg: the ceiling of the device decoder (no model)")))
        for raw in (True, False):
            run_section(report, budget, "e2e", first.case.name, 20, 5,
                        lambda raw=raw: write_rate(report, root, first.case, len(paths), raw))
        mark("loader and writer ceilings")
        if "probe" in only:
            (root / "jpeg1").mkdir()
            same = write_jpegs(root / "jpeg1", count, 1, (sides[1], sides[1]), seed=1)
            run_section(report, budget, "probe", first.case.name, 60, 10,
                        lambda: e2e_probe(report, first, device, root, paths, same))
            mark("e2e probe")
        fast = first.encoder.fast
        compiled_fn = None
        if fast is not None and fast.compiled is not None:  # eager first: the blocks uncompiled for now
            from vislaw.encoders.fastvit import block_forward

            compiled_fn, fast._block_fn, fast.compiled = (fast._block_fn, fast.compiled), block_forward, None
        out = run_section(report, budget, "e2e", first.case.name, 45, 10,
                          lambda: e2e_section(report, first, device, root, paths, None, "vislaw fast (eager)", "fast"))
        mark("e2e eager")
        if gpu_decoder:
            out_device = run_section(report, budget, "e2e", first.case.name, 45, 10,
                                     lambda: e2e_section(report, first, device, root, paths, None,
                                                         "vislaw fast (eager)", "fast", decoder="device"))
            mark("e2e eager, nvJPEG")
            if out is not None and out_device is not None:
                run_section(report, budget, "equal", first.case.name, 30, 5,
                            lambda: decoder_equality(report, first.case, device, out, out_device, paths))
                mark("decoder equality")
        if compiled_fn is not None and "compiled:default" in first.rates:
            fast._block_fn, fast.compiled = compiled_fn
            label = "vislaw fast + torch.compile default"
            if gpu_decoder:
                run_section(report, budget, "e2e", first.case.name, 45, 15,
                            lambda: e2e_section(report, first, device, root, paths, None, label, "compiled:default",
                                                decoder="device"))
                mark("e2e compiled, nvJPEG")
            run_section(report, budget, "e2e", first.case.name, 45, 15,
                        lambda: e2e_section(report, first, device, root, paths, None, label, "compiled:default"))
            mark("e2e compiled")
            run_section(report, budget, "e2e", first.case.name, 30, 10,
                        lambda: e2e_section(report, first, device, root, paths, threads, label, "compiled:default",
                                            processes=False))
            mark("e2e compiled, threads")
        else:
            run_section(report, budget, "e2e", first.case.name, 30, 10,
                        lambda: e2e_section(report, first, device, root, paths, threads, "vislaw fast (eager)",
                                            "fast", processes=False))
            mark("e2e threads")
        return out

    if {"model", "e2e", "compile"} & only:
        for index, case in enumerate(vit_cases(tiny)):
            state = run_section(report, budget, "model", case.name, 45, 15,
                                lambda case=case: model_section(report, case, device, rate, "baselines" in only))
            mark(f"model {case.name}")
            if state is None:
                continue
            states[case.name] = state
            if compiling:  # compiled right after, while the tower is on the device
                run_section(report, budget, "compile", case.name, 60, 20,
                            lambda state=state: compile_section(report, state, device, rate, None,
                                                                double_batch="batch" in only))
                mark(f"compile {case.name}")
                if "profile" in only and case.name in ("clip_l14_336", "dinov2_l14_224"):
                    run_section(report, budget, "profile", case.name, 20, 5,
                                lambda state=state: profile_section(report, state, device))
                    mark(f"profile {case.name}")
            if index == 0 and "e2e" in only:  # e2e before the other towers: it matters more than they do
                cache = end_to_end(state)
            if index > 0:
                state.model = state.encoder = None  # type: ignore[assignment]  # free the device's memory
                if device.type == "cuda":
                    torch.cuda.empty_cache()

    if "model" in only and "baselines" in only:
        if importlib.util.find_spec("diffusers") is None:
            report.add(Row("model", "sd15_unet", "skipped",
                           note="diffusers is not installed here: no Stable Diffusion U-Net row (carry it as a wheel)"))
        else:
            report.add(Row("model", "sd15_unet", "skipped", note="diffusers is installed, but this script times the "
                                                                 "ViT towers only (no U-Net row yet)"))
    first = next(iter(states.values()), None)
    if "C" in only:
        run_section(report, budget, "C", "synthetic pairs", 60, 10,
                    lambda: c_section(report, device, bandwidth, cache, first.case if first else vit_cases(tiny)[0],
                                      SPAIR_TEST_PAIRS, 2000 if device.type == "cuda" else 0))
        mark("C")
    if "stage1" in only:
        run_section(report, budget, "stage1", "qwen2", 45, 10, lambda: stage1_section(report, device, rate, tiny))
        mark("stage1")
    if device.type == "cuda" and "autotune" in only and first is not None:
        run_section(report, budget, "compile", first.case.name, max(30.0, budget.left() - 10), 100,
                    lambda: compile_section(report, first, device, rate, "max-autotune-no-cudagraphs"))

    print(f"\n## bench/gpu_speed.py on {name} (torch {torch.__version__}, transformers {transformers.__version__})\n")
    print(report.table(), flush=True)
    print("\n" + targets(report), flush=True)
    scratch.cleanup()
    return 0


def targets(report: Report) -> str:
    """The issue's targets, read off the rows."""
    lines = ["issue 8 targets:"]
    for row in report.rows:
        if row.section in ("model", "compile") and "fast" in row.variant and row.pct is not None:
            lines.append(f"- {row.case} {row.variant}: {row.pct:.0f}% of the FLOP bound (target 65%)")
        if row.section == "e2e" and row.pct is not None:
            lines.append(f"- {row.case} e2e ({row.variant}): {row.pct:.0f}% of model-only (target 85%)")
        if row.section == "C" and row.variant.endswith("cuda") and row.value is not None:
            lines.append(f"- C scoring {row.case}: {row.value:.1f} s (target < 60 s)")
    verdicts = [row.accuracy.split(":")[0] for row in report.rows if row.section in ("equal", "C") and row.accuracy
                and row.accuracy.split(":")[0] in ("PASS", "FAIL", "DIFF")]
    lines.append(f"- speed does not change results: {verdicts.count('PASS')} PASS, "
                 f"{len(verdicts) - verdicts.count('PASS')} FAIL/DIFF (equal and C rows)")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
