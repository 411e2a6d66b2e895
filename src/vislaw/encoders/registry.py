"""The encoder registry: builders by kind, specs by name (timm's register/create/list, but strict).

- ``@register_encoder("hf")`` registers the builder of a kind: ``builder(spec) -> Encoder``.
- ``register_spec("clip_vit_l14.openai", EncoderSpec(...))`` registers a named spec (timm's ``arch.tag`` +
  pretrained cfg) that config entries start from (``spec: clip_vit_l14.openai``).
- ``create_encoder(spec_or_name, **overrides)`` builds one; ``list_encoders(pattern)`` lists named specs.

Registering a name twice raises (timm only warns): a silently replaced builder would change features
without any spec changing.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from vislaw.encoders.spec import EncoderConfigError, EncoderSpec, local_weights

if TYPE_CHECKING:
    from vislaw.encoders.base import Encoder

Builder = Callable[[EncoderSpec], "Encoder"]
B = TypeVar("B", bound=Builder)

# The registry itself: the only module-level state in vislaw.encoders.
_REGISTRY: dict[str, dict[str, Any]] = {"kinds": {}, "specs": {}}
# The built-in kinds' modules, imported (and so registered) on first build: they need torch, transformers or
# timm, and the Snakefile checks every spec to plan the DAG (each SLURM job plans it again) without them.
BUILTIN_KINDS: dict[str, str] = {
    "hf": "vislaw.encoders.hf",
    "timm": "vislaw.encoders.timm_backbone",
    "concat": "vislaw.encoders.concat",
    "mini": "vislaw.encoders.mini",
    "diffusers": "vislaw.encoders.diffusion",
}


def register_encoder(kind: str) -> Callable[[B], B]:
    """Decorator registering ``builder(spec) -> Encoder`` for ``kind``; a second registration raises."""

    def decorate(builder: B) -> B:
        if kind in _REGISTRY["kinds"]:
            raise ValueError(f"encoder kind {kind!r} is already registered ({_REGISTRY['kinds'][kind].__module__})")
        _REGISTRY["kinds"][kind] = builder
        return builder

    return decorate


def register_spec(name: str, spec: EncoderSpec) -> EncoderSpec:
    """Register a named spec (``family.tag``); a second registration of ``name`` raises."""
    if name in _REGISTRY["specs"]:
        raise ValueError(f"encoder spec {name!r} is already registered")
    if "/" in name or name.startswith("."):
        # timm's parse_model_name lesson: a path-like name must never be mistaken for a registered one.
        raise ValueError(f"encoder spec name {name!r} looks like a path; use 'family.tag'")
    _REGISTRY["specs"][name] = dataclasses.replace(spec, name=spec.name or name)
    return spec


def encoder_kinds() -> list[str]:
    return sorted({*_REGISTRY["kinds"], *BUILTIN_KINDS})


def _builder(kind: str) -> Builder | None:
    if kind not in _REGISTRY["kinds"] and kind in BUILTIN_KINDS:
        import importlib

        importlib.import_module(BUILTIN_KINDS[kind])  # registers the kind
    return _REGISTRY["kinds"].get(kind)


def list_encoders(pattern: str = "*") -> list[str]:
    """Registered named specs matching a shell-style ``pattern`` (``"mini_*"``), sorted."""
    return sorted(name for name in _REGISTRY["specs"] if fnmatch.fnmatchcase(name, pattern))


def named_spec(name: str) -> EncoderSpec:
    try:
        return _REGISTRY["specs"][name]
    except (KeyError, TypeError):
        known = ", ".join(list_encoders()) or "none"
        raise KeyError(f"unknown encoder spec {name!r} (registered: {known})") from None


def create_encoder(spec_or_name: EncoderSpec | str, **overrides: Any) -> Encoder:
    """Build an encoder from a spec or a registered spec name, with field overrides (``image_size=336``).

    Raises `EncoderConfigError` naming the config key for an unknown kind, and whatever the builder raises
    (also naming keys) for missing weights or an out-of-range layer.
    """
    if isinstance(spec_or_name, str):
        try:
            spec = named_spec(spec_or_name)
        except KeyError as err:
            raise EncoderConfigError(f"encoders.{spec_or_name}.spec: {err.args[0]}") from None
    else:
        spec = spec_or_name
    if overrides:
        spec = dataclasses.replace(spec, **overrides)
    builder = _builder(spec.kind)
    if builder is None:
        raise EncoderConfigError(
            f"{spec.key('kind')}: Unknown encoder kind {spec.kind!r} (known: {', '.join(encoder_kinds())})"
        )
    encoder = builder(spec)
    encoder.eval()
    return encoder


def check_spec(spec: EncoderSpec) -> EncoderSpec:
    """Parse-time checks that need no model: registered kind, known grid, existing local weights, and the
    ``diffusers`` kind's options.

    For ``common.smk`` so that ``snakemake -n`` fails on a bad entry instead of a GPU job hours later.
    Layer range and patch are checked when the model is built (they need its architecture).
    """
    if spec.kind not in encoder_kinds():
        raise EncoderConfigError(
            f"{spec.key('kind')}: Unknown encoder kind {spec.kind!r} (known: {', '.join(encoder_kinds())})"
        )
    spec.grid  # noqa: B018  (raises naming 'patch' when the grid is unknown)
    if spec.kind == "diffusers":
        from vislaw.encoders.diffusion_options import check_diffusers_options  # torch-free

        check_diffusers_options(spec)
    local_weights(spec)  # a local path must exist
    for part in spec.parts:
        check_spec(part)
    return spec
