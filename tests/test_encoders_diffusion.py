"""Kind ``diffusers`` (vislaw.encoders.diffusion): DIFT-style features of tiny random-weight pipelines of each
family, saved and loaded like the hub's folders, against references computed with diffusers' own pieces."""

from __future__ import annotations

import dataclasses
import importlib.util
import math
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")

from vislaw.encoders import EncoderConfigError, create_encoder  # noqa: E402
from vislaw.encoders.diffusion import _noise_scale, merge_2x2  # noqa: E402
from vislaw.features import extract_to_h5  # noqa: E402

from .tiny_checkpoints import DIFFUSION_FAMILIES, diffusion_spec, save_diffusion_pipeline  # noqa: E402


@pytest.fixture(scope="module")
def pipes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("diffusion")
    return {family: save_diffusion_pipeline(family, root) for family in DIFFUSION_FAMILIES}


def _images(count: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.rand(count, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def _load(family: str, path: Path):
    from diffusers import DiffusionPipeline

    absent = {"text_encoder_3": None, "tokenizer_3": None} if family == "sd3" else {}  # saved without T5
    return DiffusionPipeline.from_pretrained(path, local_files_only=True, dtype=torch.float32, **absent)


def _run_capturing(module: torch.nn.Module, target: torch.nn.Module, *args, **kwargs):
    """A full forward pass of ``module`` (no early stop), returning ``target``'s output."""
    seen = []
    handle = target.register_forward_hook(lambda m, a, out: seen.append(out))
    try:
        module(*args, **kwargs)
    finally:
        handle.remove()
    return seen[0]


def _fixed_noise(shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    return torch.randn(1, *shape, generator=torch.Generator().manual_seed(seed))[0]


def test_merge_2x2_concatenates_each_group_in_reading_order() -> None:
    tokens = torch.arange(16, dtype=torch.float32).view(1, 16, 1)  # a 4x4 grid, token value = its index
    merged = merge_2x2(tokens, 4)
    assert merged[0].tolist() == [[0, 1, 4, 5], [2, 3, 6, 7], [8, 9, 12, 13], [10, 11, 14, 15]]
    with pytest.raises(ValueError, match="3x3"):
        merge_2x2(torch.zeros(1, 9, 2), 3)


@pytest.mark.parametrize(("family", "tokens", "width"),
                         [("sd", 64, 32), ("sdxl", 64, 32), ("sdim", 64, 32), ("dit", 16, 64), ("sd3", 16, 64)])
def test_each_family_gives_the_promised_grid(family: str, tokens: int, width: int, pipes: dict[str, Path]) -> None:
    # U-Nets: the first up-block's output, 32 channels on an 8x8 grid; transformers: 16-wide tokens on 8x8,
    # merged 2x2 into 4x4 tokens of 64.
    encoder = create_encoder(diffusion_spec(family, pipes[family]))
    assert encoder.grid == ((8, 8) if tokens == 64 else (4, 4))
    out = encoder.tokens(_images())[-1]
    assert out.shape == (3, tokens, width) and torch.isfinite(out).all()


@pytest.mark.parametrize("timestep", [1, 500])
def test_sd_tokens_equal_a_full_pass_with_diffusers_own_noise_and_text_encoder(timestep: int,
                                                                               pipes: dict[str, Path]) -> None:
    from diffusers import DDPMScheduler

    spec = diffusion_spec("sd", pipes["sd"])
    encoder = create_encoder(dataclasses.replace(spec, options={**spec.options, "timestep": timestep}))
    images = _images()
    pipe = _load("sd", pipes["sd"])
    with torch.no_grad():
        latents = pipe.vae.encode(images * 2 - 1).latent_dist.mean * pipe.vae.config.scaling_factor
        noise = _fixed_noise(latents.shape[1:]).expand_as(latents)
        noisy = DDPMScheduler.from_config(pipe.scheduler.config).add_noise(latents, noise, torch.tensor([timestep]))
        ids = pipe.tokenizer("", padding="max_length", max_length=pipe.tokenizer.model_max_length,
                             return_tensors="pt").input_ids
        empty = pipe.text_encoder(ids).last_hidden_state.expand(3, -1, -1)
        expected = _run_capturing(pipe.unet, pipe.unet.up_blocks[0], noisy, torch.tensor([timestep] * 3),
                                  encoder_hidden_states=empty)
        got = encoder.tokens(images)[-1]
    assert expected.shape == (3, 32, 8, 8)
    torch.testing.assert_close(got, expected.flatten(2).transpose(1, 2), rtol=1e-4, atol=1e-5)


def test_sd3_tokens_equal_a_full_pass_with_rectified_flow_noise(pipes: dict[str, Path]) -> None:
    encoder = create_encoder(diffusion_spec("sd3", pipes["sd3"]))
    images = _images()
    pipe = _load("sd3", pipes["sd3"])
    with torch.no_grad():
        vae = pipe.vae.config
        latents = (pipe.vae.encode(images * 2 - 1).latent_dist.mean - vae.shift_factor) * vae.scaling_factor
        sigma = 1 / 1000
        noisy = (1 - sigma) * latents + sigma * _fixed_noise(latents.shape[1:])
        embeds, _, pooled, _ = pipe.encode_prompt("", "", "", device="cpu", do_classifier_free_guidance=False)
        last = _run_capturing(pipe.transformer, pipe.transformer.transformer_blocks[-1], hidden_states=noisy,
                              encoder_hidden_states=embeds.expand(3, -1, -1), pooled_projections=pooled.expand(3, -1),
                              timestep=torch.ones(3))[-1]
        got = encoder.tokens(images)[-1]
    # 2x2 merge written out: the token at merged cell (r, c) holds cells (2r, 2c), (2r, 2c+1), (2r+1, 2c), (2r+1, 2c+1).
    grid = last.view(3, 8, 8, -1)
    expected = torch.stack([torch.cat([grid[:, 2 * r, 2 * c], grid[:, 2 * r, 2 * c + 1], grid[:, 2 * r + 1, 2 * c],
                                       grid[:, 2 * r + 1, 2 * c + 1]], dim=-1)
                            for r in range(4) for c in range(4)], dim=1)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_dit_tokens_equal_a_full_pass_with_the_null_class(pipes: dict[str, Path]) -> None:
    from diffusers import DDPMScheduler

    encoder = create_encoder(diffusion_spec("dit", pipes["dit"]))
    images = _images()
    pipe = _load("dit", pipes["dit"])
    with torch.no_grad():
        latents = pipe.vae.encode(images * 2 - 1).latent_dist.mean * pipe.vae.config.scaling_factor
        noise = _fixed_noise(latents.shape[1:]).expand_as(latents)
        noisy = DDPMScheduler.from_config(pipe.scheduler.config).add_noise(latents, noise, torch.tensor([1]))
        last = _run_capturing(pipe.transformer, pipe.transformer.transformer_blocks[-1], noisy,
                              timestep=torch.tensor([1] * 3), class_labels=torch.tensor([10] * 3))
        got = encoder.tokens(images)[-1]
    torch.testing.assert_close(got, merge_2x2(last, 8), rtol=1e-4, atol=1e-5)


def test_dit_reads_the_null_class_and_sdxl_an_uncropped_image(pipes: dict[str, Path]) -> None:
    dit = create_encoder(diffusion_spec("dit", pipes["dit"]))
    assert dit.cond_class_labels.tolist() == [10]  # 10 classes: the label dropped for guidance is index 10
    sdxl = create_encoder(diffusion_spec("sdxl", pipes["sdxl"]))
    assert sdxl.cond_time_ids.tolist() == [[32.0, 32.0, 0.0, 0.0, 32.0, 32.0]]
    assert sdxl.added == ("text_embeds", "time_ids") and sdxl.cond_text_embeds.shape == (1, 32)
    sdim = create_encoder(diffusion_spec("sdim", pipes["sdim"]))
    assert sdim.cond_encoder_hidden_states.shape == (1, 1, 32) and not sdim.cond_encoder_hidden_states.any()


def test_features_do_not_depend_on_the_batch(pipes: dict[str, Path]) -> None:
    encoder = create_encoder(diffusion_spec("sd", pipes["sd"]))
    images = _images(4)
    with torch.no_grad():
        whole = encoder.tokens(images)[-1]
        alone = encoder.tokens(images[2:3])[-1]
    torch.testing.assert_close(alone[0], whole[2], rtol=1e-4, atol=1e-5)


def test_ensemble_averages_the_seeded_noise_draws(pipes: dict[str, Path]) -> None:
    base = diffusion_spec("dit", pipes["dit"])
    images = _images(2)
    ensemble = create_encoder(dataclasses.replace(base, options={**base.options, "ensemble": 2, "seed": 5}))
    with torch.no_grad():
        got = ensemble.tokens(images)[-1]
        clean = ensemble.latents(images)
        members = [ensemble._read(ensemble.signal_scale * clean + ensemble.noise_scale * ensemble.noise[k])
                   for k in range(2)]
        single = create_encoder(base).tokens(images)[-1]
    torch.testing.assert_close(got, (members[0] + members[1]) / 2)
    assert not torch.allclose(members[0], members[1]) and not torch.allclose(got, single)


def test_noise_scales_follow_the_training_schedule() -> None:
    # Stable Diffusion's scaled_linear betas: sqrt-spaced from 0.00085 to 0.012 over 1000 steps, by hand.
    betas = [(math.sqrt(0.00085) + k * (math.sqrt(0.012) - math.sqrt(0.00085)) / 999) ** 2 for k in range(2)]
    abar = (1 - betas[0]) * (1 - betas[1])
    sd = {"_class_name": "PNDMScheduler", "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
          "num_train_timesteps": 1000}
    signal, noise = _noise_scale(diffusion_spec("sd", Path(".")), sd, 1)
    assert signal == pytest.approx(math.sqrt(abar), rel=1e-6) and noise == pytest.approx(math.sqrt(1 - abar), rel=1e-5)
    assert noise == pytest.approx(0.0413, abs=1e-4)
    assert _noise_scale(diffusion_spec("sd3", Path(".")), {"_class_name": "FlowMatchEulerDiscreteScheduler",
                                                           "num_train_timesteps": 1000}, 1) == (0.999, 0.001)
    with pytest.raises(EncoderConfigError, match=r"encoders\.tiny_sd\.options: timestep 1000 is beyond"):
        _noise_scale(diffusion_spec("sd", Path(".")), sd, 1000)


@pytest.mark.parametrize(
    ("family", "change", "message"),
    [
        ("sd", {"options": {"block": "up4"}}, r"tiny_sd\.options: block 'up4' for a U-Net must be up1\.\.up3"),
        ("sd3", {"options": {"block": "up1"}}, r"encoders\.tiny_sd3\.options: block 'up1' for a transformer"),
        ("sd", {"options": {"block": "up1", "steps": 3}}, r"encoders\.tiny_sd\.options: unknown option 'steps'"),
        ("sd", {"options": {"timestep": 1}}, r"encoders\.tiny_sd\.options: kind 'diffusers' needs options\.block"),
        ("sd", {"patch": 8}, r"encoders\.tiny_sd\.patch: spec says 8 but the model's is 4"),
        ("dit", {"patch": 4}, r"encoders\.tiny_dit\.patch: spec says 4 but the model's is 8"),
        ("dit", {"options": {"block": "last_merge2x2", "prompt": "a cat"}}, r"tiny_dit\.options: a class-conditional"),
        ("sd", {"options": {"block": "up1", "ensemble": 0}}, r"tiny_sd\.options: ensemble must be an integer >= 1"),
        ("dit", {"image_size": 36, "patch": 8}, r"encoders\.tiny_dit\.image_size: 36 px must be a multiple of 8"),
        ("sd", {"options": {"block": "up1", "skip": ["text_encoder"]}}, r"tiny_sd\.options: the pipeline's text_enc"),
        ("sd", {"weights": "no/such/folder"}, r"encoders\.tiny_sd\.weights: path 'no/such/folder' does not exist"),
    ],
)
def test_bad_entries_name_the_key(family: str, change: dict, message: str, pipes: dict[str, Path]) -> None:
    spec = dataclasses.replace(diffusion_spec(family, pipes[family]), **change)
    with pytest.raises(EncoderConfigError, match=message):
        create_encoder(spec)


def test_missing_diffusers_names_the_extra(monkeypatch: pytest.MonkeyPatch, pipes: dict[str, Path]) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "diffusers" else real(name, *a))
    with pytest.raises(EncoderConfigError, match=r"encoders\.tiny_sd\.kind: kind 'diffusers' needs the optional"):
        create_encoder(diffusion_spec("sd", pipes["sd"]))


def _write_images(root: Path) -> list[Path]:
    from PIL import Image

    rng = np.random.default_rng(0)
    paths = []
    for index, size in enumerate([(40, 30), (32, 32), (20, 50)]):  # framed (padded) to 32 px
        path = root / f"img{index}.png"
        Image.fromarray(rng.integers(0, 256, (*size[::-1], 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def test_extraction_writes_the_cache_through_the_feature_path(pipes: dict[str, Path], tmp_path: Path) -> None:
    paths = _write_images(tmp_path)
    spec = diffusion_spec("sdxl", pipes["sdxl"])
    out = tmp_path / "sdxl.h5"
    protocol = extract_to_h5(spec, paths, out, batch_size=2, device="cpu")
    assert protocol["grid"] == [8, 8]
    with h5py.File(out) as h5:
        tokens = h5["tokens"][:]
    assert tokens.shape == (3, 64, 32) and tokens.dtype == np.float16
    from vislaw.encoders import load_framed

    with torch.no_grad():
        expected = create_encoder(spec).tokens(load_framed([paths[2]], 32, "pad"))[-1][0]
    np.testing.assert_allclose(tokens[2], expected.numpy(), rtol=2e-3, atol=2e-3)


@pytest.mark.parametrize(
    ("name", "down", "grid"),
    [
        # SD1.5 / SD2.1 / SD image variations: four levels, three down-samplers; SDXL: three levels, two.
        ("sd15_unet.runway", ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",), (24, 24)),
        ("sd21_unet.stability", ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",), (24, 24)),
        ("sdim_unet.lambdalabs", ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",), (24, 24)),
        ("sdxl_unet.stability", ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"), (32, 32)),
        ("dit_xl2_512.facebook", None, (16, 16)),
        ("sd3_medium_mmdit.stability", None, (16, 16)),
    ],
)
def test_paper_specs_fit_their_models_block_structure(name: str, down: tuple[str, ...] | None,
                                                      grid: tuple[int, int]) -> None:
    # The real architectures' block layouts (narrow widths): each catalog spec's patch is the stride its
    # block has there, so its grid is the paper's token count (576 = 24^2, 1024 = 32^2, 256 = 16^2).
    import diffusers

    from vislaw.encoders import named_spec
    from vislaw.encoders.diffusion import DiffusersEncoder

    spec = named_spec(name)
    # Stable Diffusion's VAE: four blocks, so latents are 1/8 of the image.
    vae = diffusers.AutoencoderKL(down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
                                  block_out_channels=[8] * 4, layers_per_block=1, norm_num_groups=8)
    if down is not None:
        up = tuple(block.replace("Down", "Up") for block in reversed(down))
        denoiser = diffusers.UNet2DConditionModel(down_block_types=down, up_block_types=up,
                                                  block_out_channels=[8] * len(down), layers_per_block=1,
                                                  norm_num_groups=8, cross_attention_dim=8, attention_head_dim=2)
    else:
        denoiser = diffusers.DiTTransformer2DModel(num_attention_heads=1, attention_head_dim=8, in_channels=4,
                                                   num_layers=1, patch_size=2, sample_size=8)
    encoder = DiffusersEncoder(spec, vae, denoiser, {}, {"_class_name": "DDPMScheduler"})
    assert encoder.grid == grid and encoder.noise.shape[-1] == spec.image_size // 8


@pytest.mark.parametrize("family", ["sd", "sd3"])
def test_bf16_compute_is_within_rounding(family: str, pipes: dict[str, Path], tmp_path: Path) -> None:
    # The GPU's path (bf16 autocast through the VAE and the denoiser), run on the CPU.
    paths = _write_images(tmp_path)
    spec = diffusion_spec(family, pipes[family])
    extract_to_h5(spec, paths, tmp_path / "full.h5", device="cpu")
    extract_to_h5(spec, paths, tmp_path / "bf16.h5", device="cpu", compute_dtype=torch.bfloat16)
    with h5py.File(tmp_path / "full.h5") as full_h5, h5py.File(tmp_path / "bf16.h5") as low_h5:
        full = full_h5["tokens"][:].astype(np.float32)
        low = low_h5["tokens"][:].astype(np.float32)
    error = np.linalg.norm(low - full) / np.linalg.norm(full)
    assert 0 < error < 3e-2  # above 0: the denoiser did run in bf16


def test_a_vae_marked_force_upcast_encodes_in_float32_under_autocast(pipes: dict[str, Path]) -> None:
    # SDXL's VAE config sets force_upcast (it overflows in float16): under the GPU's autocast its latents must
    # be the float32 ones; a VAE without the flag follows autocast (bf16 here, on the CPU).
    encoder = create_encoder(diffusion_spec("sd", pipes["sd"])).eval()
    x = _images()
    with torch.inference_mode():
        full = encoder.latents(x)
        encoder.vae.register_to_config(force_upcast=False)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = encoder.latents(x)
        encoder.vae.register_to_config(force_upcast=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            upcast = encoder.latents(x)
    assert low.dtype == torch.bfloat16 and not torch.equal(low.float(), full)
    assert upcast.dtype == torch.float32 and torch.equal(upcast, full)
