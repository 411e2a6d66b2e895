"""`EncoderSpec`: everything that determines an encoder's features, and nothing else.

A spec is built from one entry of the config's ``encoders:`` mapping (`spec_from_config`), possibly starting
from a registered named spec (``spec: clip_vit_l14.openai``) and overriding fields. Every error names the
config key it is about (``encoders.clip_l14.weights: ...``) so a user can find the line to fix.

Preprocessing is derived only from the spec (image_size, mean, std, frame): never from a checkpoint's image
processor, whose class (and thus behaviour) transformers chooses differently depending on what is installed.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vislaw.provenance import checkpoint_files

# How `vislaw.encoders.frame` can frame an image (its FRAME_MODES); an entry's ``frame`` may not crop (SPair's
# keypoints must stay in the frame), its ``caption_frame`` may.
FRAMES = ("pad", "stretch")
FRAME_MODES = (*FRAMES, "crop")
CAPTION_SETS = ("caption_train", "caption_probe")
# Kinds whose grid is ``image_size // patch`` cells of a patchifying or strided network: the convolution drops
# any remainder, so such a grid would cover less than the frame keypoints are mapped into (the diffusers
# kind checks its own multiple, of the VAE's and the read block's strides, when it is built).
PATCH_GRID_KINDS = ("hf", "timm", "mini")
# Fields a config entry may set directly; kind-specific settings go under ``options``.
CONFIG_FIELDS = ("kind", "spec", "weights", "image_size", "mean", "std", "patch", "layer", "drop_prefix",
                 "frame", "caption_frame", "options", "parts")
# A Hugging Face hub id: exactly ``owner/name``. Anything else (or anything starting like a path) is a path.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class EncoderConfigError(ValueError):
    """A config entry cannot be turned into a working encoder; the message starts with the config key."""


@dataclass(frozen=True)
class EncoderSpec:
    """What produces an encoder's tokens.

    kind: registered builder (``hf``, ``timm``, ``concat``, ``mini``, ``diffusers``).
    weights: hub id (``owner/name``, or ``hf-hub:owner/name`` to force it) or local path; ``None`` means the
        builder's default (random init for ``timm``, seeded by ``options.seed``).
    image_size: side of the square the image is framed into (pixels), i.e. the encoder's input resolution
        (default 224; a ``concat`` entry's, its largest part's).
    mean, std: per-channel normalisation applied to [0, 1] pixels inside the encoder.
    patch: pixels per feature cell at ``layer`` (ViT patch size, CNN stride); fixes the grid without loading
        the model, so a reader can state the protocol it expects. Checked against the model when built.
    layer: transformer block (or CNN stage) whose output is taken. ``-2`` = penultimate (the paper's);
        ``k >= 0`` = block k (0-based). Equals ``output_hidden_states[layer]`` for negative ``layer``.
    drop_prefix: drop CLS/register tokens (the paper drops CLS); ``False`` prepends them to the patch tokens.
    frame: ``pad`` = zero-pad to a square keeping aspect, then resize (METHOD's C protocol); ``stretch`` =
        resize to a square directly (only to replicate the paper code's numbers).
    caption_frame: the frame of the caption sets (stage 1's training images and A's probe) where it must differ:
        an external stage 1 frames its own way (LLaVA's, through CLIP's image processor, crops the centre), and A
        reads that projector over these caches. ``crop`` = the short side's centred square, resized; or ``pad``,
        ``stretch``. ``None``: ``frame``.
    options: kind-specific settings (``hf``: model_class; ``timm``: model, model_kwargs, seed; ``concat``:
        grid, resample; ``diffusers``: block, timestep, prompt, ensemble, seed, skip).
    parts: the specs joined by a ``concat`` spec.
    name: the config key; used in error messages and records, not part of what determines the features.
    """

    kind: str
    weights: str | None = None
    image_size: int = 224
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    patch: int | None = None
    layer: int = -2
    drop_prefix: bool = True
    frame: str = "pad"
    caption_frame: str | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    parts: tuple[EncoderSpec, ...] = ()
    name: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.kind, str) or not self.kind:
            raise EncoderConfigError(f"{self.key('kind')}: must be a non-empty string, got {self.kind!r}")
        if not isinstance(self.image_size, int) or isinstance(self.image_size, bool) or self.image_size <= 0:
            raise EncoderConfigError(f"{self.key('image_size')}: must be a positive integer, got {self.image_size!r}")
        if not isinstance(self.layer, int) or isinstance(self.layer, bool):
            raise EncoderConfigError(f"{self.key('layer')}: must be an integer, got {self.layer!r}")
        if self.patch is not None and (not isinstance(self.patch, int) or self.patch <= 0):
            raise EncoderConfigError(f"{self.key('patch')}: must be a positive integer, got {self.patch!r}")
        if self.kind in PATCH_GRID_KINDS and self.patch is not None and self.image_size % self.patch:
            side = self.image_size // self.patch
            raise EncoderConfigError(
                f"{self.key('image_size')}: {self.image_size} px is not a multiple of patch {self.patch}; "
                f"its {side}-cell grid would cover only {side * self.patch} px of the frame"
            )
        # 'crop' only as a caption set's frame (`spec_for_dataset`): a config entry's frame is refused it in
        # `spec_from_config`, as SPair's keypoints must stay in the frame
        if self.frame not in FRAME_MODES:
            raise EncoderConfigError(f"{self.key('frame')}: must be one of {FRAMES}, got {self.frame!r}")
        if self.caption_frame is not None and self.caption_frame not in FRAME_MODES:
            raise EncoderConfigError(f"{self.key('caption_frame')}: must be one of {FRAME_MODES}, "
                                     f"got {self.caption_frame!r}")
        for stat in ("mean", "std"):
            value = getattr(self, stat)
            if value is not None:
                if len(value) != 3:
                    raise EncoderConfigError(f"{self.key(stat)}: needs 3 values (RGB), got {value!r}")
                # Tuples keep the spec hashable and its JSON stable whatever sequence type came in.
                object.__setattr__(self, stat, tuple(float(v) for v in value))
        if self.std is not None and min(self.std) <= 0:
            raise EncoderConfigError(f"{self.key('std')}: values must be positive, got {self.std!r}")
        if self.parts and self.kind != "concat":
            raise EncoderConfigError(f"{self.key('parts')}: only kind 'concat' has parts (kind is {self.kind!r})")
        object.__setattr__(self, "parts", tuple(self.parts))
        object.__setattr__(self, "options", dict(self.options))

    def __hash__(self) -> int:
        return hash(self.canonical_json())

    def key(self, field_name: str) -> str:
        """The config key of one field, for error messages: ``encoders.<name>.<field>``."""
        return f"encoders.{self.name or '<unnamed>'}.{field_name}"

    @property
    def grid(self) -> tuple[int, int]:
        """Feature grid (rows, columns) the spec promises; ``concat`` uses ``options.grid`` or its first part's."""
        if self.kind == "concat":
            if "grid" in self.options:
                rows, cols = self.options["grid"]
                return int(rows), int(cols)
            if not self.parts:
                raise EncoderConfigError(f"{self.key('parts')}: a concat needs at least two parts")
            return self.parts[0].grid
        if self.patch is None:
            raise EncoderConfigError(f"{self.key('patch')}: required (it fixes the feature grid)")
        side = self.image_size // self.patch
        return side, side

    def to_dict(self, with_name: bool = True) -> dict[str, Any]:
        """JSON-ready dict; ``with_name=False`` gives only what determines the features (for protocol hashes)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            if f.name == "name" and not with_name:
                continue
            value = getattr(self, f.name)
            if f.name == "caption_frame" and value is None:
                continue  # unset: the protocols (and hashes) of specs from before the field stay as they were
            if f.name == "parts":
                value = [part.to_dict(with_name) for part in value]
            elif isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        return out

    def canonical_json(self) -> str:
        return json.dumps(self.to_dict(with_name=False), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EncoderSpec:
        """Inverse of `to_dict` (e.g. a spec passed to a Snakemake script as a param)."""
        data = dict(data)
        data["parts"] = tuple(cls.from_dict(part) for part in data.get("parts", ()))
        return cls(**data)


def spec_for_dataset(spec: EncoderSpec, dataset: str) -> EncoderSpec:
    """The spec an image set is extracted (and its cache read) with: a caption set in ``caption_frame`` where one
    is set. ``caption_frame`` itself is then dropped, so a spec that sets one keeps the other sets' protocols."""
    if spec.caption_frame is None:
        return spec
    frame = spec.caption_frame if dataset in CAPTION_SETS else spec.frame
    return dataclasses.replace(spec, frame=frame, caption_frame=None)


def is_hub_id(weights: str) -> bool:
    """True for ``owner/name`` that is not an existing local path, or anything prefixed ``hf-hub:``."""
    if weights.startswith("hf-hub:"):
        return True
    if weights.startswith((".", "/", "~")) or Path(weights).exists():
        return False
    return bool(_HUB_ID.match(weights))


# ``weights: pretrained``: the library's own weights of the named model (timm's ``pretrained=True``), from its cache
LIBRARY_PRETRAINED = "pretrained"


def local_weights(spec: EncoderSpec) -> Path | None:
    """The local checkpoint path of ``spec.weights``, or None for a hub id or `LIBRARY_PRETRAINED`; a missing path
    is an error."""
    if spec.weights is None or spec.weights == LIBRARY_PRETRAINED or is_hub_id(spec.weights):
        return None
    path = Path(spec.weights).expanduser()
    if not path.exists():
        raise EncoderConfigError(f"{spec.key('weights')}: path {spec.weights!r} does not exist")
    return path


def hub_id(weights: str) -> str:
    return weights.removeprefix("hf-hub:")


def leaf_specs(spec: EncoderSpec) -> list[EncoderSpec]:
    """The specs that load weights: ``spec`` itself, or a concat's parts (recursively), in order."""
    if spec.kind == "concat":
        return [leaf for part in spec.parts for leaf in leaf_specs(part)]
    return [spec]


def weight_files(spec: EncoderSpec) -> list[Path]:
    """Every local file the encoder's weights load from: a checkpoint file, or each file under a checkpoint
    folder (hidden ones, such as a download tool's metadata, left out), sorted; none for hub ids.

    A workflow tracks them as inputs, so that a checkpoint overwritten in place, whose path (and so the
    cache's protocol) is unchanged, still makes its caches stale. Hashing their content instead would cost
    every reader of a cache a pass over gigabytes.
    """
    files: list[Path] = []
    for leaf in leaf_specs(spec):
        path = local_weights(leaf)
        if path is None:
            continue
        found = checkpoint_files(path)
        if not found:
            raise EncoderConfigError(f"{leaf.key('weights')}: folder {leaf.weights!r} holds no files")
        files.extend(found)
    return files


def hub_revisions(spec: EncoderSpec, cache_dir: str | os.PathLike[str] | None = None) -> dict[str, str | None]:
    """Hub id -> the commit that the local Hugging Face cache resolves ``main`` to (what an offline load
    reads), or None where the cache holds no such ref. ``cache_dir`` defaults to huggingface_hub's (which
    follows HF_HUB_CACHE and HF_HOME). Reads one small file per id: nothing is downloaded.
    """
    ids = [hub_id(leaf.weights) for leaf in leaf_specs(spec) if leaf.weights and is_hub_id(leaf.weights)]
    if not ids:
        return {}
    if cache_dir is None:
        from huggingface_hub.constants import HF_HUB_CACHE

        cache_dir = HF_HUB_CACHE
    revisions: dict[str, str | None] = {}
    for repo in ids:
        ref = Path(cache_dir) / f"models--{repo.replace('/', '--')}" / "refs" / "main"
        revisions[repo] = ref.read_text().strip() if ref.is_file() else None
    return revisions


def spec_from_config(name: str, encoders: Mapping[str, Mapping[str, Any]]) -> EncoderSpec:
    """Build the spec of ``encoders[name]``; ``concat`` parts name other entries (or registered specs)."""
    return _resolve(name, encoders, stack=())


def _resolve(name: str, encoders: Mapping[str, Mapping[str, Any]], stack: tuple[str, ...]) -> EncoderSpec:
    from vislaw.encoders.registry import named_spec  # late: the registry imports this module

    if name in stack:
        raise EncoderConfigError(f"encoders.{name}.parts: cycle {' -> '.join((*stack, name))}")
    if name not in encoders:
        raise EncoderConfigError(f"encoders.{name}: no such entry")
    entry = dict(encoders[name])
    unknown = sorted(set(entry) - set(CONFIG_FIELDS))
    if unknown:
        raise EncoderConfigError(f"encoders.{name}.{unknown[0]}: unknown field (allowed: {', '.join(CONFIG_FIELDS)})")
    fields: dict[str, Any] = {}
    if "spec" in entry:
        base_name = entry.pop("spec")
        try:
            base = named_spec(base_name)
        except KeyError as err:
            raise EncoderConfigError(f"encoders.{name}.spec: {err.args[0]}") from None
        fields = {f.name: getattr(base, f.name) for f in dataclasses.fields(base)}
    if "options" in entry:
        # Options merge over the named spec's, so ``options: {seed: 1}`` keeps the base's model name.
        entry["options"] = {**fields.get("options", {}), **entry["options"]}
    if "parts" in entry:
        parts = entry["parts"]
        if not isinstance(parts, Sequence) or isinstance(parts, str) or len(parts) < 2:
            raise EncoderConfigError(f"encoders.{name}.parts: needs a list of at least two encoder names")
        entry["parts"] = tuple(_resolve_part(name, i, part, encoders, (*stack, name)) for i, part in enumerate(parts))
    fields.update(entry)
    fields["name"] = name
    if fields.get("frame") not in (None, *FRAMES):
        message = "'crop' cuts SPair's keypoints off; set caption_frame: crop for the caption sets alone" \
            if fields["frame"] == "crop" else f"must be one of {FRAMES}, got {fields['frame']!r}"
        raise EncoderConfigError(f"encoders.{name}.frame: {message}")
    if fields.get("kind") == "concat" and "image_size" not in fields and fields.get("parts"):
        # the largest part's resolution: a part is then only ever shrunk, never fed an upsampled, blurred image
        fields["image_size"] = max(part.image_size for part in fields["parts"])
    if "kind" not in fields:
        raise EncoderConfigError(f"encoders.{name}.kind: required (or name a registered spec with 'spec:')")
    try:
        return EncoderSpec(**fields)
    except TypeError as err:  # e.g. a mapping where a number belongs
        raise EncoderConfigError(f"encoders.{name}: {err}") from None


def _resolve_part(name: str, index: int, part: Any, encoders: Mapping[str, Mapping[str, Any]],
                  stack: tuple[str, ...]) -> EncoderSpec:
    from vislaw.encoders.registry import named_spec

    if isinstance(part, str) and part in encoders:
        return _resolve(part, encoders, stack)
    try:
        return dataclasses.replace(named_spec(part), name=str(part))
    except KeyError:
        raise EncoderConfigError(
            f"encoders.{name}.parts[{index}]: {part!r} is neither an entry of encoders nor a registered spec"
        ) from None
