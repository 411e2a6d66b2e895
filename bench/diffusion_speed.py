"""Extraction throughput of the diffusion settings at the paper's sizes, with random weights.

Builds each denoiser and VAE at its published architecture (widths, depths, block layout; random weights,
which throughput does not care about) and runs the real extraction path (`vislaw.features.extract_to_h5`
with a prebuilt `vislaw.encoders.diffusion.DiffusersEncoder`: PNG decode, framing, VAE, denoiser up to the
read block, HDF5 write). Prints images/s and MB/s of float16 tokens, and the seconds one image spends in the
VAE's encoder, in the denoiser up to the read block, and in the denoiser's whole pass (what stopping at the
read block saves). The conditioning is the
empty prompt's shape filled with zeros (its text encoders run once per encoder build, not per image).

    python bench/diffusion_speed.py [--cases sd15,dit] [--images 4] [--batch-size 2] [--threads N]

Cases: sd15 (SD1.5 U-Net @768, up1), sdxl (SDXL U-Net @512, up1), dit (DiT-XL/2 @512, last block merged),
sd3 (SD3-medium MMDiT @512, last block merged). The default is sd15 and dit; SDXL's and SD3's denoisers
hold 2.6 and 2.0 billion parameters (10 and 8 GB in float32).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from extract_speed import _sync, write_images  # noqa: E402

from vislaw.encoders import named_spec  # noqa: E402
from vislaw.encoders.diffusion import DiffusersEncoder  # noqa: E402
from vislaw.features import extract_to_h5  # noqa: E402

SD_VAE = {"block_out_channels": [128, 256, 512, 512], "down_block_types": ["DownEncoderBlock2D"] * 4,
          "up_block_types": ["UpDecoderBlock2D"] * 4, "layers_per_block": 2, "scaling_factor": 0.18215}
DDPM_SD = {"_class_name": "DDPMScheduler", "beta_start": 0.00085, "beta_end": 0.012,
           "beta_schedule": "scaled_linear", "num_train_timesteps": 1000}
DDPM_DIT = {"_class_name": "DDPMScheduler", "beta_start": 0.0001, "beta_end": 0.02, "beta_schedule": "linear",
            "num_train_timesteps": 1000}
FLOW = {"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000}


def build(case: str) -> tuple[str, DiffusersEncoder]:
    """(label, encoder) of one case, at the architecture of the checkpoint its catalog spec names."""
    import diffusers

    if case == "sd15":  # UNet2DConditionModel's defaults are SD1.x's architecture
        spec = named_spec("sd15_unet.runway")
        vae = diffusers.AutoencoderKL(**SD_VAE)
        denoiser = diffusers.UNet2DConditionModel(cross_attention_dim=768)
        conditioning: dict[str, Any] = {"encoder_hidden_states": torch.zeros(1, 77, 768)}
        schedule, added = DDPM_SD, ()
    elif case == "sdxl":
        spec = named_spec("sdxl_unet.stability")
        vae = diffusers.AutoencoderKL(**{**SD_VAE, "scaling_factor": 0.13025})
        denoiser = diffusers.UNet2DConditionModel(
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            block_out_channels=(320, 640, 1280), transformer_layers_per_block=(1, 2, 10),
            attention_head_dim=(5, 10, 20), cross_attention_dim=2048, use_linear_projection=True,
            addition_embed_type="text_time", addition_time_embed_dim=256,
            projection_class_embeddings_input_dim=2816)
        conditioning = {"encoder_hidden_states": torch.zeros(1, 77, 2048), "text_embeds": torch.zeros(1, 1280),
                        "time_ids": torch.tensor([[512.0, 512.0, 0.0, 0.0, 512.0, 512.0]])}
        schedule, added = DDPM_SD, ("text_embeds", "time_ids")
    elif case == "dit":
        spec = named_spec("dit_xl2_512.facebook")
        vae = diffusers.AutoencoderKL(**SD_VAE)
        denoiser = diffusers.DiTTransformer2DModel(num_attention_heads=16, attention_head_dim=72, in_channels=4,
                                                   out_channels=8, num_layers=28, sample_size=64, patch_size=2,
                                                   num_embeds_ada_norm=1000)
        conditioning, schedule, added = {"class_labels": torch.tensor([1000])}, DDPM_DIT, ()
    elif case == "sd3":
        spec = named_spec("sd3_medium_mmdit.stability")
        vae = diffusers.AutoencoderKL(**{**SD_VAE, "latent_channels": 16, "scaling_factor": 1.5305,
                                         "shift_factor": 0.0609})
        denoiser = diffusers.SD3Transformer2DModel(
            sample_size=128, patch_size=2, in_channels=16, num_layers=24, attention_head_dim=64,
            num_attention_heads=24, joint_attention_dim=4096, caption_projection_dim=1536,
            pooled_projection_dim=2048, out_channels=16, pos_embed_max_size=192)
        conditioning = {"encoder_hidden_states": torch.zeros(1, 333, 4096),  # 77 CLIP + 256 T5 positions
                        "pooled_projections": torch.zeros(1, 2048)}
        schedule, added = FLOW, ()
    else:
        raise SystemExit(f"unknown case {case!r} (sd15, sdxl, dit, sd3)")
    vae.decoder = None  # as the builder does: only the encoder half is used
    encoder = DiffusersEncoder(spec, vae, denoiser, conditioning, schedule, added).eval()
    return f"{case} @{spec.image_size} ({spec.options['block']}, {spec.grid[0]}x{spec.grid[1]} tokens)", encoder


def component_seconds(encoder: DiffusersEncoder, size: int, device: str) -> tuple[float, float, float]:
    """Seconds for one image of: the VAE's encoder, the denoiser up to the read block (what extraction
    runs), and the denoiser's whole pass (what it would run without the early stop)."""
    x = torch.rand(1, 3, size, size, device=device)
    # as extract_to_h5 computes: bf16 autocast on a GPU, float32 on the CPU
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device == "cuda" else contextlib.nullcontext()
    with torch.inference_mode(), autocast:
        start = time.perf_counter()
        noisy = encoder.latents(x)
        _sync(device)
        vae = time.perf_counter() - start
        start = time.perf_counter()
        encoder._read(noisy)
        _sync(device)
        read = time.perf_counter() - start
        start = time.perf_counter()
        encoder.run_denoiser(noisy)
        _sync(device)
    return vae, read, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default="sd15,dit")
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, {args.images} images, "
          f"batch {args.batch_size}")
    print("| case | device | build s | images/s | MB/s | VAE s/image | denoiser to the block | whole denoiser |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory() as tmp:
        for case in args.cases.split(","):
            start = time.perf_counter()
            label, encoder = build(case)
            built = time.perf_counter() - start
            paths = write_images(Path(tmp), args.images, encoder.spec.image_size)
            for device in devices:
                encoder = encoder.to(device)
                out = Path(tmp) / f"{case}_{device}.h5"
                start = time.perf_counter()
                extract_to_h5(encoder.spec, paths, out, batch_size=args.batch_size, device=device, encoder=encoder)
                seconds = time.perf_counter() - start
                megabytes = out.stat().st_size / 1e6
                vae, read, whole = component_seconds(encoder, encoder.spec.image_size, device)
                print(f"| {label} | {device} | {built:.1f} | {args.images / seconds:.2f} "
                      f"| {megabytes / seconds:.1f} | {vae:.2f} | {read:.2f} | {whole:.2f} |", flush=True)
            del encoder


if __name__ == "__main__":
    main()
