"""Kind ``diffusers``: DIFT-style features of diffusion models (optional extra ``diffusion``: diffusers).

METHOD.md's protocol: VAE-encode the framed image, add noise at timestep ``t`` (1), run the denoiser once
with the empty prompt, and take the first up-sampling block's output (U-Nets: SD1.5, SD2.1, SD image
variations, SDXL) or the last transformer block's output with each 2x2 group of patch tokens merged into one
token (DiT, SD3). One pass serves every image: the conditioning of the empty prompt is computed once when the
encoder is built, and the text encoders are then dropped.

What is fixed here, and why:
- The latent is the VAE posterior's mean, not a sample of it (DIFT samples): features must not depend on
  the batch an image lands in. For the same reason the noise is one fixed draw per ensemble member
  (seeded by ``options.seed``), the same for every image; at t = 1 it is ~4 % of the latent's scale.
- Noise follows the schedule the denoiser was trained on: variance-preserving DDPM
  (``sqrt(abar_t) x0 + sqrt(1 - abar_t) eps``, abar from the pipeline's scheduler config) for U-Nets and
  DiT, whatever sampler the pipeline ships with; rectified flow (``(1 - s) x0 + s eps``, s = t / T) for
  SD3's flow-matching scheduler.
- "Empty prompt" per family: the text encoders' embedding of ``options.prompt`` (SD, SDXL, SD3; SDXL's
  size conditioning says an uncropped image of the input size); the null class for the class-conditional
  DiT; zeros, the unconditional embedding of its classifier-free guidance, for SD image variations (which is
  conditioned on an image, not text).
- The denoiser stops at the block read (a forward hook ends the pass), so the layers after it cost nothing.

options:
    block: ``upK`` (a U-Net's K-th up-sampling block, 1-based: ``up1`` is the first), ``last`` or
        ``last_merge2x2`` (a transformer's last block, optionally with 2x2 token merging). Required.
    timestep: the denoising timestep t (default 1). prompt: the conditioning text (default ``""``).
    ensemble: average the features over this many noise draws (DIFT's ensemble; default 1). seed: the
        noise's seed (default 0).
    skip: pipeline components not to load (e.g. ``[text_encoder_3, tokenizer_3]``: SD3 without T5-XXL, whose
        part of the empty prompt's embedding is then zeros, as diffusers does without it).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from vislaw.encoders.base import Encoder, check_patch, require_stats
from vislaw.encoders.diffusion_options import TRANSFORMER_BLOCKS, UP_BLOCK, check_diffusers_options, int_option
from vislaw.encoders.registry import register_encoder
from vislaw.encoders.spec import EncoderConfigError, EncoderSpec, hub_id, local_weights

_UNUSED_COMPONENTS = ("safety_checker", "feature_extractor", "image_encoder")


class _Captured(Exception):
    """Raised by the read block's forward hook: carries its output and ends the denoiser's pass."""

    def __init__(self, output: Any) -> None:
        super().__init__()
        self.output = output


class DiffusersEncoder(Encoder):
    """A diffusion model's denoiser read at one block, DIFT-style (see the module docstring).

    ``conditioning``: the denoiser's tensor arguments for the empty prompt, each with batch size 1; those
    named in ``added`` go into a U-Net's ``added_cond_kwargs`` (SDXL). ``schedule``: the pipeline's scheduler
    config, which says how the denoiser was trained to see noise.
    """

    def __init__(self, spec: EncoderSpec, vae: nn.Module, denoiser: nn.Module,
                 conditioning: Mapping[str, torch.Tensor], schedule: Mapping[str, Any],
                 added: tuple[str, ...] = ()) -> None:
        super().__init__(spec)
        options = spec.options
        self.vae = vae
        self.denoiser = denoiser
        self.num_layers = 1  # one read point, named by options.block
        self.block = str(options.get("block", ""))
        self.timestep = int_option(spec, "timestep", 1, low=0)
        self.ensemble = int_option(spec, "ensemble", 1, low=1)
        self.signal_scale, self.noise_scale = _noise_scale(spec, schedule, self.timestep)
        self.is_unet = hasattr(denoiser, "up_blocks")
        self.merge = self.block == "last_merge2x2"
        self._target_module()  # checks options.block; looked up again per pass (not registered twice)
        self.vae_scale = 2 ** (len(vae.config.block_out_channels) - 1)
        check_patch(spec, self._stride())
        latent_side, rem = divmod(spec.image_size, self.vae_scale)
        if rem or (not self.is_unet and latent_side % self._token_stride()):
            raise EncoderConfigError(
                f"{spec.key('image_size')}: {spec.image_size} px must be a multiple of {self._stride()} "
                "for this model"
            )
        channels = int(vae.config.latent_channels)
        generator = torch.Generator().manual_seed(int_option(spec, "seed", 0, low=0))
        # Buffers, so that .to(device) moves them with the model.
        noise = torch.randn(self.ensemble, channels, latent_side, latent_side, generator=generator)
        self.register_buffer("noise", noise, persistent=False)
        self.conditioning_names = tuple(conditioning)
        self.added = added
        for name, value in conditioning.items():
            self.register_buffer(f"cond_{name}", value.detach().clone(), persistent=False)

    def _target_module(self) -> nn.Module:
        key = self.spec.key("options")
        if self.is_unet:
            match = UP_BLOCK.match(self.block)
            count = len(self.denoiser.up_blocks)
            if match is None or not 1 <= int(match.group(1)) <= count:
                raise EncoderConfigError(f"{key}: block {self.block!r} for a U-Net must be up1..up{count}")
            return self.denoiser.up_blocks[int(match.group(1)) - 1]
        if self.block not in TRANSFORMER_BLOCKS:
            raise EncoderConfigError(
                f"{key}: block {self.block!r} for a transformer must be one of {TRANSFORMER_BLOCKS}"
            )
        return self.denoiser.transformer_blocks[-1]

    def _token_stride(self) -> int:
        """Latent pixels per token of a transformer's read block (its patch, times 2 when merged)."""
        return int(self.denoiser.config.patch_size) * (2 if self.merge else 1)

    def _stride(self) -> int:
        """Input pixels per feature cell at the read block."""
        if not self.is_unet:
            return self.vae_scale * self._token_stride()
        downs = sum(getattr(block, "downsamplers", None) is not None for block in self.denoiser.down_blocks)
        index = int(UP_BLOCK.match(self.block).group(1))
        ups = sum(getattr(block, "upsamplers", None) is not None for block in self.denoiser.up_blocks[:index])
        return self.vae_scale * 2 ** max(downs - ups, 0)

    def latents(self, x: torch.Tensor) -> torch.Tensor:
        """Framed images in [0, 1] -> the denoiser's clean latents (posterior mean, shifted and scaled).

        A VAE whose config sets ``force_upcast`` (SDXL's, which overflows in float16) encodes in float32 with
        autocast off, as diffusers' own pipelines upcast it.
        """
        pixels = self.normalize(x)
        if self.vae.config.get("force_upcast", False):
            with torch.autocast(pixels.device.type, enabled=False):
                posterior = self.vae.encode(pixels.float()).latent_dist
        else:
            posterior = self.vae.encode(pixels).latent_dist
        shift = self.vae.config.get("shift_factor", None) or 0.0
        return (posterior.mean - shift) * float(self.vae.config.scaling_factor)

    def _tokens(self, x: torch.Tensor, layers: tuple[int, ...]) -> dict[int, torch.Tensor]:
        clean = self.latents(x)
        total = None
        for member in range(self.ensemble):
            noisy = self.signal_scale * clean + self.noise_scale * self.noise[member].to(clean.dtype)
            features = self._read(noisy)
            total = features if total is None else total + features
        tokens = total / self.ensemble
        if tokens.shape[1] != self.grid[0] * self.grid[1]:
            raise EncoderConfigError(
                f"{self.spec.key('patch')}: block {self.block!r} gives {tokens.shape[1]} tokens, the spec promises "
                f"a {self.grid[0]}x{self.grid[1]} grid"
            )
        return {layer: tokens for layer in layers}

    def run_denoiser(self, noisy: torch.Tensor) -> Any:
        """The denoiser's pass on noisy latents with the empty prompt's conditioning and the timestep."""
        batch = noisy.shape[0]
        kwargs: dict[str, Any] = {}
        for name in self.conditioning_names:
            value = _repeat(getattr(self, f"cond_{name}"), batch)
            if name in self.added:
                kwargs.setdefault("added_cond_kwargs", {})[name] = value
            else:
                kwargs[name] = value
        timestep = torch.full((batch,), self.timestep, device=noisy.device, dtype=torch.long)
        if self.is_unet:
            return self.denoiser(noisy, timestep, **kwargs)
        if "pooled_projections" in kwargs:
            timestep = timestep.float()  # SD3 embeds a float timestep
        return self.denoiser(hidden_states=noisy, timestep=timestep, **kwargs)

    def _read(self, noisy: torch.Tensor) -> torch.Tensor:
        """One denoiser pass on noisy latents, stopped at the read block: (B, h*w, D) tokens, row-major."""

        def capture(module: nn.Module, args: Any, output: Any) -> None:
            raise _Captured(output)

        handle = self._target_module().register_forward_hook(capture)
        try:
            self.run_denoiser(noisy)
        except _Captured as captured:
            output = captured.output
        else:  # pragma: no cover - the hook always fires on a forward pass through the block
            raise RuntimeError(f"{self.spec.key('options')}: block {self.block!r} was never run")
        finally:
            handle.remove()
        if self.is_unet:
            return output.flatten(2).transpose(1, 2)  # (B, C, h, w) -> (B, h*w, C)
        hidden = output[-1] if isinstance(output, tuple) else output  # SD3 blocks: (context, image tokens)
        side = noisy.shape[-1] // int(self.denoiser.config.patch_size)
        return merge_2x2(hidden, side) if self.merge else hidden


def merge_2x2(tokens: torch.Tensor, side: int) -> torch.Tensor:
    """(B, side*side, D) row-major tokens -> (B, (side/2)^2, 4D): each 2x2 group's four tokens concatenated,
    in the order top-left, top-right, bottom-left, bottom-right."""
    batch, count, dim = tokens.shape
    if count != side * side or side % 2:
        raise ValueError(f"cannot merge {count} tokens as a {side}x{side} grid into 2x2 groups")
    half = side // 2
    grid = tokens.reshape(batch, half, 2, half, 2, dim).permute(0, 1, 3, 2, 4, 5)
    return grid.reshape(batch, half * half, 4 * dim)


def _repeat(value: torch.Tensor, batch: int) -> torch.Tensor:
    return value.expand(batch, *value.shape[1:])


def _noise_scale(spec: EncoderSpec, scheduler_config: Mapping[str, Any], timestep: int) -> tuple[float, float]:
    """(x0 scale, noise scale) at ``timestep`` for the schedule the denoiser was trained with."""
    from diffusers import DDPMScheduler

    steps = int(scheduler_config.get("num_train_timesteps", 1000))
    if timestep >= steps:
        raise EncoderConfigError(f"{spec.key('options')}: timestep {timestep} is beyond the schedule's {steps} steps")
    if scheduler_config.get("_class_name", "").startswith("FlowMatch"):
        sigma = timestep / steps
        return 1.0 - sigma, sigma
    ddpm = DDPMScheduler.from_config(scheduler_config)
    abar = float(ddpm.alphas_cumprod[timestep])
    return abar**0.5, (1.0 - abar) ** 0.5


def _conditioning(spec: EncoderSpec, pipe: Any) -> tuple[dict[str, torch.Tensor], tuple[str, ...]]:
    """The denoiser's tensor arguments for the spec's prompt (batch 1), by pipeline family, and the names
    among them that a U-Net takes in ``added_cond_kwargs``."""
    prompt = spec.options.get("prompt", "")  # a string: check_diffusers_options
    key = spec.key("options")
    components = pipe.components
    # Below, a text tower the pipeline has is loaded; T5 (SD3's text_encoder_3) alone may be left out.
    for name in ("text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2"):
        if name in components and components[name] is None:
            raise EncoderConfigError(
                f"{key}: the pipeline's {name} is not loaded, and the prompt's embedding needs it"
            )
    if "unet" in components and "text_encoder_2" in components:  # SDXL
        embeds, _, pooled, _ = pipe.encode_prompt(prompt, device="cpu", num_images_per_prompt=1,
                                                  do_classifier_free_guidance=False)
        side = float(spec.image_size)
        # SDXL's micro-conditioning: original size, crop's top-left corner, target size (an uncropped image).
        time_ids = torch.tensor([[side, side, 0.0, 0.0, side, side]])
        added = ("text_embeds", "time_ids")
        return {"encoder_hidden_states": embeds, "text_embeds": pooled, "time_ids": time_ids}, added
    if "unet" in components and "text_encoder" in components:  # SD 1.x / 2.x
        embeds = pipe.encode_prompt(prompt, "cpu", 1, False)[0]
        return {"encoder_hidden_states": embeds}, ()
    if "unet" in components and "text_encoder" not in components:  # SD image variations: no text tower at all
        if prompt:
            raise EncoderConfigError(f"{key}: an image-variations model takes no text prompt, only the empty one")
        width = int(pipe.unet.config.cross_attention_dim)
        return {"encoder_hidden_states": torch.zeros(1, 1, width)}, ()
    if "transformer" in components and "text_encoder" in components:  # SD3 (MMDiT)
        embeds, _, pooled, _ = pipe.encode_prompt(prompt, prompt, prompt, device="cpu", num_images_per_prompt=1,
                                                  do_classifier_free_guidance=False)
        return {"encoder_hidden_states": embeds, "pooled_projections": pooled}, ()
    if "transformer" in components and getattr(pipe.transformer.config, "num_embeds_ada_norm", None):  # DiT
        if prompt:
            raise EncoderConfigError(f"{key}: a class-conditional DiT takes no text prompt, only the empty one")
        null_class = int(pipe.transformer.config.num_embeds_ada_norm)  # the label dropped for guidance
        return {"class_labels": torch.tensor([null_class])}, ()
    raise EncoderConfigError(
        f"{spec.key('weights')}: {type(pipe).__name__} is not a supported diffusion pipeline "
        "(Stable Diffusion 1/2, SDXL, SD image variations, DiT, SD3)"
    )


@register_encoder("diffusers")
def build_diffusers(spec: EncoderSpec) -> DiffusersEncoder:
    if importlib.util.find_spec("diffusers") is None:
        raise EncoderConfigError(
            f"{spec.key('kind')}: kind 'diffusers' needs the optional package diffusers (pip install -e .[diffusion])"
        )
    from diffusers import DiffusionPipeline

    require_stats(spec)
    check_diffusers_options(spec)
    if spec.weights is None:
        raise EncoderConfigError(f"{spec.key('weights')}: required for kind 'diffusers' (hub id or local folder)")
    path = local_weights(spec)
    source = str(path) if path is not None else hub_id(spec.weights)
    skip = spec.options.get("skip", [])
    try:
        index = DiffusionPipeline.load_config(source, local_files_only=path is not None)
        # Components saved as absent (SD3 without T5, no safety checker) must be passed as None to load;
        # those the features never use are not loaded at all (SD1.5's safety checker is a CLIP ViT-L).
        absent = [name for name, entry in index.items()
                  if (isinstance(entry, list) and entry == [None, None]) or name in _UNUSED_COMPONENTS]
        pipe = DiffusionPipeline.from_pretrained(source, dtype=torch.float32, local_files_only=path is not None,
                                                 **{name: None for name in [*absent, *skip]})
    except (OSError, ValueError) as err:
        raise EncoderConfigError(
            f"{spec.key('weights')}: cannot load a diffusers pipeline from {source!r}: {err}"
        ) from err
    with torch.no_grad():
        conditioning, added = _conditioning(spec, pipe)
    denoiser = pipe.unet if "unet" in pipe.components else pipe.transformer
    # Only the VAE's encoder half is used; the decoder and the text encoders are freed with the pipeline.
    pipe.vae.decoder = None
    schedule = dict(pipe.scheduler.config)
    return DiffusersEncoder(spec, pipe.vae, denoiser, conditioning, schedule, added).eval()
