"""Kind ``hf``: transformers vision towers (CLIP, SigLIP incl. fixed-resolution SigLIP2, DINOv2, AutoModel).

Tokens come from ``output_hidden_states``: ``hidden_states[0]`` is the embedding output and
``hidden_states[k + 1]`` block k's, so spec layer ``-2`` is ``hidden_states[-2]`` (the paper's penultimate
layer, before any final LayerNorm). No image processor is used (see `vislaw.encoders.spec`).

CLIP, SigLIP and DINOv2 towers run through `vislaw.encoders.fastvit` (the same function with fused weights,
stopping after the deepest requested layer, in the autocast dtype with bf16/fp16 weights on a GPU);
`HFEncoder.reference_tokens` is the plain transformers forward pass it is tested against, and the one used
for any tower the fast path does not know.

options:
    model_class: transformers class name to load with (default: chosen from the checkpoint's model_type).
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Sequence
from typing import Any

import torch

from vislaw.encoders.base import Encoder, check_patch, require_stats, resolve_layer, unit_range
from vislaw.encoders.fastvit import FastViT, build_fastvit
from vislaw.encoders.registry import register_encoder
from vislaw.encoders.spec import EncoderConfigError, EncoderSpec, hub_id, local_weights

# model_type of a checkpoint's config.json -> the class that loads its vision tower. Full two-tower
# checkpoints (model_type "clip", "siglip") load their vision half through the *VisionModel class.
# Fixed-resolution SigLIP2 checkpoints (siglip2-*-patch16-256) are stored as "siglip".
_VISION_CLASSES = {
    "clip": "CLIPVisionModel",
    "clip_vision_model": "CLIPVisionModel",
    "siglip": "SiglipVisionModel",
    "siglip_vision_model": "SiglipVisionModel",
    "dinov2": "Dinov2Model",
    "dinov2_with_registers": "Dinov2WithRegistersModel",
}
# NaFlex SigLIP2 takes pre-patchified inputs with a mask and shapes: not a plain (B, 3, H, W) tower.
_UNSUPPORTED = {"siglip2": "NaFlex SigLIP2 is not supported; use a fixed-resolution siglip2-*-patch16-<res> checkpoint"}


class HFEncoder(Encoder):
    """A transformers vision tower. ``fast=False`` keeps the plain transformers forward pass."""

    accepts_uint8 = True

    def __init__(self, spec: EncoderSpec, model: torch.nn.Module, fast: bool = True) -> None:
        super().__init__(spec)
        self.model = model
        config = model.config
        self.num_layers = int(config.num_hidden_layers)
        check_patch(spec, _as_int(config.patch_size))
        # CLIP/SigLIP need an explicit flag to run at a resolution other than the checkpoint's;
        # DINOv2 always interpolates its position embeddings and has no such argument.
        accepts_flag = "interpolate_pos_encoding" in inspect.signature(model.forward).parameters
        native = _as_int(getattr(config, "image_size", spec.image_size))
        self._forward_kwargs: dict[str, Any] = (
            {"interpolate_pos_encoding": True} if accepts_flag and native != spec.image_size else {}
        )
        self.fast: FastViT | None = None
        self.fast_reason = "disabled"
        if fast:
            self.fast, self.fast_reason = build_fastvit(model, spec.mean, spec.std, spec.image_size,
                                                        self._forward_kwargs)
            if self.fast is None:
                print(f"{spec.key('weights')}: plain transformers forward pass ({self.fast_reason})", file=sys.stderr)

    def _tokens(self, x: torch.Tensor, layers: tuple[int, ...]) -> dict[int, torch.Tensor]:
        if self.fast is None:
            return self._reference(x, layers)
        blocks = {layer: resolve_layer(self.spec, layer, self.num_layers) for layer in layers}
        device = x.device.type
        # Under autocast (extraction on a GPU) run in its dtype with cast weights and autocast off.
        if torch.is_autocast_enabled(device):
            dtype = torch.get_autocast_dtype(device)
        else:
            dtype = x.dtype if x.is_floating_point() else torch.float32
        with torch.autocast(device, enabled=False):
            out = self.fast.run(x, max(blocks.values()), set(blocks.values()), dtype)
        return {layer: self.split_prefix(out[block]) for layer, block in blocks.items()}

    def reference_tokens(self, x: torch.Tensor, layers: Sequence[int] | None = None) -> dict[int, torch.Tensor]:
        """`tokens` through the plain transformers forward pass (all layers, ``output_hidden_states``)."""
        return self._reference(unit_range(x), self.checked_layers(x, layers))

    def _reference(self, x: torch.Tensor, layers: tuple[int, ...]) -> dict[int, torch.Tensor]:
        out = self.model(pixel_values=self.normalize(unit_range(x)), output_hidden_states=True, **self._forward_kwargs)
        hidden = out.hidden_states  # embeddings + one per block
        return {layer: self.split_prefix(hidden[layer if layer < 0 else layer + 1]) for layer in layers}

    def compile_blocks(self, mode: str | None = None) -> bool:
        """Compile the fast path's blocks (see `FastViT.compile_blocks`); False when there is no fast path."""
        if self.fast is None:
            return False
        self.fast.compile_blocks(mode)
        return True


def _as_int(value: Any) -> int:
    return int(value[0] if isinstance(value, (tuple, list)) else value)


def _vision_class(spec: EncoderSpec, source: str, local_only: bool) -> type:
    import transformers

    name = spec.options.get("model_class")
    if name is None:
        try:
            config = transformers.AutoConfig.from_pretrained(source, local_files_only=local_only)
        except (OSError, ValueError) as err:
            raise EncoderConfigError(f"{spec.key('weights')}: cannot read a transformers config from {source!r}: {err}") from err
        if config.model_type in _UNSUPPORTED:
            raise EncoderConfigError(f"{spec.key('weights')}: {_UNSUPPORTED[config.model_type]}")
        name = _VISION_CLASSES.get(config.model_type, "AutoModel")
    cls = getattr(transformers, name, None)
    if cls is None:
        raise EncoderConfigError(f"{spec.key('options')}: model_class {name!r} is not a transformers class")
    return cls


@register_encoder("hf")
def build_hf(spec: EncoderSpec) -> HFEncoder:
    require_stats(spec)
    if spec.weights is None:
        raise EncoderConfigError(f"{spec.key('weights')}: required for kind 'hf' (hub id or local path)")
    path = local_weights(spec)
    source = str(path) if path is not None else hub_id(spec.weights)
    local_only = path is not None
    cls = _vision_class(spec, source, local_only)
    try:
        # float32 explicitly: transformers 5 defaults to the checkpoint's stored dtype; GPU runs autocast.
        model = cls.from_pretrained(source, local_files_only=local_only, dtype=torch.float32)
    except OSError as err:
        raise EncoderConfigError(f"{spec.key('weights')}: cannot load {source!r} with {cls.__name__}: {err}") from err
    return HFEncoder(spec, model.eval())
