"""Train one mini encoder and save it as a checkpoint folder (what rule ``pretrain_encoder`` runs).

Checkpoint folder (written atomically: it appears complete or not at all):
- ``backbone.pt``: the backbone's state_dict (what kind ``mini`` loads),
- ``heads.pt``: the objective's heads (text encoder, projections, decoder), kept for inspection,
- ``zoo.json``: ``format``, ``architecture``, ``objective``, ``config`` (every training setting),
  ``normalisation`` (mean/std), ``patch``, ``num_layers``, ``loss_curve`` ([step, mean loss] per logging
  interval), ``train_seconds``, ``threads``, ``world`` (folder fingerprint of the training data) and
  ``code_hash``.

A run is a function of its config: weights are initialised under ``torch.manual_seed(seed)`` inside a
forked RNG, and batches and augmentations draw from a `torch.Generator` seeded with ``[seed, 1]``-style
keys, so the same seed gives the same weights (on the same thread count and build).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vislaw.io import atomic_dir, write_json
from vislaw.provenance import code_hash
from vislaw.zoo.arch import build_backbone
from vislaw.zoo.data import load_caption_set
from vislaw.zoo.objectives import OBJECTIVE_CLASSES
from vislaw.zoo.settings import MEAN, PATCH, STD, training_config  # noqa: F401  (re-exported)

FORMAT = "vislaw.zoo/1"
CONFIG_FILE = "zoo.json"
BACKBONE_FILE = "backbone.pt"
HEADS_FILE = "heads.pt"
_GEN_BATCHES, _GEN_AUGMENT = 1, 2  # generator stream ids

def train_encoder(objective: str, world_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str],
                  config: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Train ``objective`` on ``world_dir``'s caption-train set and write the checkpoint folder ``out_dir``.

    ``config``: overrides of `training_config`. Returns the ``zoo.json`` record.
    """
    settings = training_config(objective, config)
    seed = int(settings["seed"])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        backbone = build_backbone(settings["arch"])
        data = load_caption_set(world_dir, settings["limit_images"]) if objective != "random" else None
        model = OBJECTIVE_CLASSES[objective](backbone, data, settings) if data is not None else None
    start = time.perf_counter()
    curve = _optimise(model, settings) if model is not None and settings["steps"] > 0 else []
    seconds = time.perf_counter() - start
    record = {
        "format": FORMAT,
        "objective": objective,
        "architecture": settings["arch"],
        "config": settings,
        "normalisation": {"mean": list(MEAN), "std": list(STD)},
        "patch": PATCH,
        "num_layers": backbone.depth,
        "loss_curve": curve,
        "train_seconds": round(seconds, 3),
        "threads": torch.get_num_threads(),
        "world": _world_fingerprint(world_dir),
        "code_hash": code_hash("zoo"),
    }
    with atomic_dir(out_dir) as tmp:
        torch.save(backbone.state_dict(), tmp / BACKBONE_FILE)
        if model is not None:
            heads = {k: v for k, v in model.state_dict().items() if not k.startswith("backbone.")}
            torch.save(heads, tmp / HEADS_FILE)
            if hasattr(model, "vocabulary"):
                write_json(tmp / "vocabulary.json", list(model.vocabulary))
        write_json(tmp / CONFIG_FILE, record)
    return record


# Parameters never decayed besides norms and biases: timm's ViT `no_weight_decay` (position embeddings, class token)
# and the text tower's position table, matched by the parameter's own name. An objective may name more, by full
# name, in its own ``no_weight_decay()`` (timm's hook).
NO_WEIGHT_DECAY_NAMES = frozenset({"pos_embed", "cls_token", "pos"})


def weight_decay_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW parameter groups: matrices decayed by ``weight_decay``; norms, biases, `NO_WEIGHT_DECAY_NAMES` and the
    names of ``model.no_weight_decay()`` not."""
    named_exempt = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        exempt = param.ndim < 2 or name.rsplit(".", 1)[-1] in NO_WEIGHT_DECAY_NAMES or name in named_exempt
        (no_decay if exempt else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _optimise(model: torch.nn.Module, settings: Mapping[str, Any]) -> list[list[float]]:
    """AdamW with linear warm-up and cosine decay; returns [step, mean loss] per ``log_every`` steps."""
    seed, steps, batch = int(settings["seed"]), int(settings["steps"]), int(settings["batch_size"])
    optimizer = torch.optim.AdamW(weight_decay_groups(model, float(settings["weight_decay"])), lr=float(settings["lr"]))
    warmup = max(1, int(steps * float(settings["warmup_frac"])))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps)))
    )
    batches = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, _GEN_BATCHES]).generate_state(1)[0]))
    augment = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, _GEN_AUGMENT]).generate_state(1)[0]))
    n_images = len(model.images)
    order = torch.randperm(n_images, generator=batches)
    position, curve, window = 0, [], []
    model.train()
    for step in range(steps):
        if position + batch > n_images:  # new epoch: reshuffle (drop the ragged tail)
            order, position = torch.randperm(n_images, generator=batches), 0
        index = order[position : position + min(batch, n_images)]
        position += batch
        loss = model.loss(index, augment)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), float(settings["grad_clip"]))
        optimizer.step()
        schedule.step()
        window.append(float(loss.detach()))
        if len(window) == int(settings["log_every"]) or step == steps - 1:
            curve.append([step + 1, float(np.mean(window))])
            print(f"step {step + 1}/{steps} loss {curve[-1][1]:.4f}", file=sys.stderr)
            window = []
    model.eval()
    return curve


def _world_fingerprint(world_dir: str | os.PathLike[str]) -> dict[str, Any]:
    manifest = Path(world_dir) / "manifest.json"
    if not manifest.exists():
        return {"path_name": Path(world_dir).name, "fingerprint": None}
    data = json.loads(manifest.read_text(encoding="utf-8"))
    return {"fingerprint": data.get("fingerprint"), "captions": data.get("fingerprints", {}).get("captions")}


def read_checkpoint_record(path: str | os.PathLike[str]) -> dict[str, Any]:
    """``zoo.json`` of a checkpoint folder (FileNotFoundError / ValueError name the file)."""
    file = Path(path) / CONFIG_FILE
    record = json.loads(file.read_text(encoding="utf-8"))
    if record.get("format") != FORMAT:
        raise ValueError(f"{file}: format {record.get('format')!r}, expected {FORMAT!r}")
    return record


def load_backbone(path: str | os.PathLike[str]) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The trained backbone of a checkpoint folder (eval mode) and its record."""
    record = read_checkpoint_record(path)
    backbone = build_backbone(record["architecture"])
    state = torch.load(Path(path) / BACKBONE_FILE, map_location="cpu", weights_only=True)
    backbone.load_state_dict(state)
    return backbone.eval(), record
