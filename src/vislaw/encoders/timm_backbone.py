"""Kind ``timm``: any timm model through ``forward_intermediates`` (ViTs, ConvNets, ...).

Layer k is ``feature_info[k]`` (a ViT block or a CNN stage), negative from the end, taken before the final
norm (``norm=False``) like transformers' hidden states. ``patch`` is the stride at that layer.

weights: a local checkpoint file (loaded through timm's pretrained path, so its filters resample position
    embeddings), ``"pretrained"`` for timm's own weights of ``options.model`` (from the hub cache), or
    ``None`` for random init seeded by ``options.seed`` (the random-weight baselines).
options:
    model: timm model name (``vit_small_patch16_224``, ``resnet18``, ``vit_large_patch14_dinov2.lvd142m``).
    model_kwargs: extra ``timm.create_model`` arguments (``depth``, ``embed_dim``, ...).
    seed: random-init seed (default 0).
"""

from __future__ import annotations

from typing import Any

import torch

from vislaw.encoders.base import Encoder, check_patch, require_stats, resolve_layer
from vislaw.encoders.registry import register_encoder
from vislaw.encoders.spec import LIBRARY_PRETRAINED, EncoderConfigError, EncoderSpec, local_weights


class TimmEncoder(Encoder):
    def __init__(self, spec: EncoderSpec, model: torch.nn.Module) -> None:
        super().__init__(spec)
        self.model = model
        self.num_layers = len(model.feature_info)
        index = resolve_layer(spec, spec.layer, self.num_layers)
        check_patch(spec, int(model.feature_info[index]["reduction"]))
        self.num_prefix_tokens = int(getattr(model, "num_prefix_tokens", 0))

    def _tokens(self, x: torch.Tensor, layers: tuple[int, ...]) -> dict[int, torch.Tensor]:
        indices = [resolve_layer(self.spec, layer, self.num_layers) for layer in layers]
        kwargs: dict[str, Any] = {"return_prefix_tokens": True} if not self.spec.drop_prefix else {}
        maps = self.model.forward_intermediates(
            self.normalize(x), indices=indices, intermediates_only=True, output_fmt="NCHW", **kwargs
        )
        out = {}
        for layer, feature in zip(layers, maps, strict=True):
            prefix = None
            if isinstance(feature, tuple):
                feature, prefix = feature
            if tuple(feature.shape[-2:]) != self.grid:
                raise EncoderConfigError(
                    f"{self.spec.key('patch')}: layer {layer} gives a {tuple(feature.shape[-2:])} grid, "
                    f"the spec promises {self.grid}"
                )
            tokens = feature.flatten(2).transpose(1, 2)  # (B, C, h, w) -> (B, h*w, C), row-major
            out[layer] = tokens if prefix is None else torch.cat([prefix, tokens], dim=1)
        return out


@register_encoder("timm")
def build_timm(spec: EncoderSpec) -> TimmEncoder:
    import timm

    require_stats(spec)
    model_name = spec.options.get("model")
    if not model_name:
        raise EncoderConfigError(f"{spec.key('options')}: kind 'timm' needs options.model (a timm model name)")
    kwargs = dict(spec.options.get("model_kwargs", {}))
    path = local_weights(spec)
    if path is not None:
        # custom_load only for JAX .npz files: some timm versions default it on for ViTs, and then read
        # a PyTorch/safetensors file as npz. The state-dict route also runs the model's checkpoint filter.
        overlay = {"file": str(path), "custom_load": path.suffix == ".npz"}
        kwargs.update(pretrained=True, pretrained_cfg_overlay=overlay)
    else:
        kwargs["pretrained"] = spec.weights == LIBRARY_PRETRAINED
    try:
        # fork_rng: seeding random init must not touch the caller's global RNG stream.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(spec.options.get("seed", 0)))
            model = timm.create_model(model_name, **kwargs)
    except RuntimeError as err:  # unknown model name, mismatched state dict
        raise EncoderConfigError(f"{spec.key('options')}: timm cannot build {model_name!r}: {err}") from err
    # ViTs: run at the spec's resolution (resamples position embeddings of loaded weights).
    patch_embed = getattr(model, "patch_embed", None)
    if patch_embed is not None and hasattr(model, "set_input_size"):
        if tuple(patch_embed.img_size) != (spec.image_size, spec.image_size):
            model.set_input_size(img_size=(spec.image_size, spec.image_size))
    return TimmEncoder(spec, model.eval())
