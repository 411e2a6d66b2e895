"""Kind ``mini``: the small encoders the workflow trains on the mini-world (rule ``pretrain_encoder``).

weights: the checkpoint folder written by `vislaw.zoo.train_encoder` (``zoo.json`` + ``backbone.pt``);
    required, since even the random-weight settings are "trained" (zero steps, seeded init) by that rule.
options: the architecture (`vislaw.zoo.arch`): ``arch`` (``vit``, ``cnn`` or ``unet``) and optionally its
    keys (``dim``, ``depth``, ``heads``, ``mlp_ratio``, ``stem``, ``image_size``; a U-Net has ``dim``,
    ``deep``, ``stem``, ``image_size``); every key given must equal the
    checkpoint's, so a config entry cannot silently load another architecture's weights.
mean, std: must equal the normalisation the encoder was trained with (recorded in ``zoo.json``).
patch: 8 (ViT patch, CNN and U-Net stride). layer: block index like every kind (``-2`` = penultimate block,
    before the final norm). A U-Net has four layers, the stride-8 readouts along its path (down-block,
    stride-16 middle upsampled, first up-block, stride-4 up-block pooled): ``-2`` is the first up-block, the
    block DIFT reads. A ViT run at another ``image_size`` than it was trained at resamples its position
    embeddings (bicubic), as timm does.
"""

from __future__ import annotations

from pathlib import Path

import torch

from vislaw.encoders.base import Encoder, check_patch, require_stats, resolve_layer
from vislaw.encoders.registry import register_encoder
from vislaw.encoders.spec import EncoderConfigError, EncoderSpec, local_weights


class MiniEncoder(Encoder):
    def __init__(self, spec: EncoderSpec, backbone: torch.nn.Module) -> None:
        super().__init__(spec)
        self.backbone = backbone
        self.num_layers = int(backbone.depth)
        resolve_layer(spec, spec.layer, self.num_layers)
        check_patch(spec, int(backbone.patch))
        self.num_prefix_tokens = int(backbone.num_prefix_tokens)

    def _tokens(self, x: torch.Tensor, layers: tuple[int, ...]) -> dict[int, torch.Tensor]:
        indices = {layer: resolve_layer(self.spec, layer, self.num_layers) for layer in layers}
        maps = self.backbone.features(self.normalize(x), sorted(set(indices.values())))
        out = {}
        for layer, index in indices.items():
            tokens = self.split_prefix(maps[index])
            out[layer] = tokens
        return out


@register_encoder("mini")
def build_mini(spec: EncoderSpec) -> MiniEncoder:
    from vislaw.zoo.arch import ARCH_DEFAULTS
    from vislaw.zoo.train import BACKBONE_FILE, CONFIG_FILE, load_backbone

    if spec.weights is None:
        raise EncoderConfigError(
            f"{spec.key('weights')}: kind 'mini' needs the checkpoint folder written by rule pretrain_encoder"
        )
    path = local_weights(spec)
    if path is None or not (path / CONFIG_FILE).is_file() or not (path / BACKBONE_FILE).is_file():
        raise EncoderConfigError(
            f"{spec.key('weights')}: {spec.weights!r} is not a mini-zoo checkpoint folder "
            f"(needs {CONFIG_FILE} and {BACKBONE_FILE}; written by rule pretrain_encoder)"
        )
    require_stats(spec)
    backbone, record = load_backbone(path)
    arch = record["architecture"]
    options = dict(spec.options)
    if options.get("arch") not in ARCH_DEFAULTS:
        raise EncoderConfigError(f"{spec.key('options')}: needs arch, one of {sorted(ARCH_DEFAULTS)}")
    unknown = sorted(set(options) - set(ARCH_DEFAULTS[options["arch"]]))
    if unknown:
        raise EncoderConfigError(f"{spec.key('options')}: unknown key(s) {unknown} for arch {options['arch']!r}")
    for key, value in options.items():
        if _plain(value) != _plain(arch.get(key)):
            raise EncoderConfigError(
                f"{spec.key('options')}: {key}={value!r} but the checkpoint {Path(path).name!r} has {arch.get(key)!r}"
            )
    trained = record["normalisation"]
    for stat in ("mean", "std"):
        if [round(v, 6) for v in getattr(spec, stat)] != [round(v, 6) for v in trained[stat]]:
            raise EncoderConfigError(
                f"{spec.key(stat)}: {list(getattr(spec, stat))} but the encoder was trained with {trained[stat]}"
            )
    return MiniEncoder(spec, backbone)


def _plain(value: object) -> object:
    """Lists and tuples compare equal (YAML gives lists, code may give tuples)."""
    return list(value) if isinstance(value, (list, tuple)) else value
