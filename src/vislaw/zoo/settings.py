"""The mini zoo's settings without torch: architectures, objectives and their training defaults.

The Snakefile reads these to plan the DAG (each mini encoder's input size, patch, normalisation and
architecture), and every SLURM job re-plans it, so this module imports no torch: planning stays fast.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

OBJECTIVES = ("contrastive", "selfsup", "denoise", "supervised", "random")
MEAN = (0.5, 0.5, 0.5)  # every mini encoder normalises [0, 1] pixels to [-1, 1]
STD = (0.5, 0.5, 0.5)
PATCH = 8  # both backbones: one feature cell per 8x8 pixels
ARCH_DEFAULTS: dict[str, dict[str, Any]] = {
    # dim 64 / depth 4: small enough that a few hundred steps fit the 60-s-per-setting budget on one core.
    # stem: widths of the stride-2 convs before the last one that makes the tokens (an "early convolutions"
    # ViT, Xiao et al. 2021: it trains far faster on little data than a linear patchify); [] = plain patchify.
    "vit": {"arch": "vit", "dim": 64, "depth": 4, "heads": 2, "mlp_ratio": 2.0, "stem": [16, 32], "image_size": 96},
    # Three stride-2 stem convs reach stride 8; the residual blocks then widen the receptive field.
    "cnn": {"arch": "cnn", "dim": 64, "depth": 4, "stem": [16, 32], "image_size": 96},
    # stem: [width at stride 4] (the space-to-depth "latent"); dim: stride 8 (the features); deep: stride 16.
    # depth is fixed (the four stride-8 readouts above), so it is not a key.
    "unet": {"arch": "unet", "dim": 64, "deep": 96, "stem": [48], "image_size": 96},
}


class ArchitectureError(ValueError):
    """An architecture dict names an unknown backbone or carries unknown keys."""


def resolve_architecture(options: Mapping[str, Any]) -> dict[str, Any]:
    """``options`` with the backbone's defaults filled in; unknown backbones or keys raise.

    ``options`` may carry keys that are not architecture (``objective``, ``seed``): they are ignored here.
    """
    name = options.get("arch")
    if name not in ARCH_DEFAULTS:
        raise ArchitectureError(f"arch must be one of {sorted(ARCH_DEFAULTS)}, got {name!r}")
    defaults = ARCH_DEFAULTS[name]
    arch = {key: options.get(key, default) for key, default in defaults.items()}
    if isinstance(arch.get("stem"), tuple):
        arch["stem"] = list(arch["stem"])
    return arch


# Settings every objective reads, then each objective's own defaults (sized for <= 60 s on one core).
COMMON_DEFAULTS: dict[str, Any] = {
    "seed": 0, "steps": 150, "batch_size": 32, "lr": 2e-3, "weight_decay": 0.05, "warmup_frac": 0.1,
    "grad_clip": 1.0, "log_every": 10, "limit_images": None,
}
# CNNs by default: in this budget the ViTs' patch tokens stay at random-weight correspondence whatever the
# objective (bench/zoo_c_scores.py), while the CNNs' learn it; the ViT stays available (``arch: vit``).
# denoise trains the U-Net (DIFT's backbone family) on its own output; supervised reads ``points`` points per
# object within ``jitter`` half-extents of its centre, ``offset_weight`` weighs predicting that offset and
# ``position_weight`` predicting the point's place in the image.
_CNN = {"arch": "cnn"}
OBJECTIVE_DEFAULTS: dict[str, dict[str, Any]] = {
    "contrastive": {"arch": _CNN, "image_size": 96, "embed_dim": 64, "text_dim": 64, "max_words": 48,
                    "pool": "cls"},
    "selfsup": {"arch": _CNN, "image_size": 96, "view_size": 48, "embed_dim": 64, "temperature": 0.1,
                "image_weight": 0.25, "steps": 200, "channel_shuffle": 0.0},
    "denoise": {"arch": {"arch": "unet"}, "image_size": 96, "noise": [0.0, 2.0], "mask_ratio": 0.5,
                "mask_patch": 8, "colour_jitter": True, "target": "rgb", "predict": "noise", "steps": 120},
    "supervised": {"arch": _CNN, "image_size": 96, "points": 4, "jitter": 0.5, "offset_weight": 1.0,
                   "position_weight": 0.0},
    "random": {"arch": {"arch": "vit"}, "image_size": 96, "steps": 0},
}


def training_config(objective: str, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The full config of one run: common defaults < the objective's defaults < ``overrides``.

    Unknown keys raise (a typo must not silently train with a default). ``arch`` is resolved to the full
    architecture dict, with the ViT's position-embedding grid matching ``image_size``.
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    config = {**COMMON_DEFAULTS, **OBJECTIVE_DEFAULTS[objective], **dict(overrides or {})}
    unknown = sorted(set(config) - set(COMMON_DEFAULTS) - set(OBJECTIVE_DEFAULTS[objective]))
    if unknown:
        raise ValueError(f"unknown {objective} training setting(s) {unknown}; known: "
                         f"{sorted({*COMMON_DEFAULTS, *OBJECTIVE_DEFAULTS[objective]})}")
    config["arch"] = resolve_architecture({**dict(config["arch"]), "image_size": int(config["image_size"])})
    if objective == "random":
        config["steps"] = 0
    return config
