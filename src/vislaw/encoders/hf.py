"""Kind ``hf``: transformers vision towers (CLIP, SigLIP incl. fixed-resolution SigLIP2, DINOv2, AutoModel).

Tokens come from ``output_hidden_states``: ``hidden_states[0]`` is the embedding output and
``hidden_states[k + 1]`` block k's, so spec layer ``-2`` is ``hidden_states[-2]`` (the paper's penultimate
layer, before any final LayerNorm). No image processor is used (see `vislaw.encoders.spec`).

options:
    model_class: transformers class name to load with (default: chosen from the checkpoint's model_type).
"""

from __future__ import annotations

import inspect
from typing import Any

import torch

from vislaw.encoders.base import Encoder, check_patch, require_stats
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
    def __init__(self, spec: EncoderSpec, model: torch.nn.Module) -> None:
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

    def _tokens(self, x: torch.Tensor, layers: tuple[int, ...]) -> dict[int, torch.Tensor]:
        out = self.model(pixel_values=self.normalize(x), output_hidden_states=True, **self._forward_kwargs)
        hidden = out.hidden_states  # embeddings + one per block
        return {layer: self.split_prefix(hidden[layer if layer < 0 else layer + 1]) for layer in layers}


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
