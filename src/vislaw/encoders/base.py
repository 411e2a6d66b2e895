"""The one feature API every encoder kind implements.

``enc.tokens(x, layers=(-2,)) -> {layer: Tensor[B, h*w, D]}`` where ``x`` is a batch of framed images,
``(B, 3, image_size, image_size)`` RGB in [0, 1], or uint8 pixels meaning ``x / 255`` (see
`vislaw.encoders.frame`; uint8 is a quarter of the bytes to move to a GPU). Normalisation with the spec's
mean/std happens inside the encoder, so a ``concat`` can feed each part its own statistics. Patch tokens come
in row-major grid order (``enc.grid == (h, w)``); prefix (CLS/register) tokens are split off unless the spec
says ``drop_prefix: false``, in which case the first ``enc.num_prefix_tokens`` rows are the prefix.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from vislaw.encoders.spec import EncoderConfigError, EncoderSpec


class Encoder(nn.Module):
    """Base class: subclasses set ``num_layers``/``num_prefix_tokens`` and implement `_tokens`.

    ``accepts_uint8``: `_tokens` takes uint8 pixels itself; otherwise `tokens` converts them to [0, 1] first.
    """

    accepts_uint8 = False

    def __init__(self, spec: EncoderSpec) -> None:
        super().__init__()
        self.spec = spec
        self.num_layers = 0
        self.num_prefix_tokens = 0

    @property
    def grid(self) -> tuple[int, int]:
        return self.spec.grid

    def tokens(self, x: torch.Tensor, layers: Sequence[int] | None = None) -> dict[int, torch.Tensor]:
        """Patch tokens of ``layers`` (default: the spec's layer) for framed images ``x`` in [0, 1] (or uint8)."""
        layers = self.checked_layers(x, layers)
        if x.dtype == torch.uint8 and not self.accepts_uint8:
            x = unit_range(x)
        return self._tokens(x, layers)

    def checked_layers(self, x: torch.Tensor, layers: Sequence[int] | None) -> tuple[int, ...]:
        """``layers`` as a tuple (default: the spec's), after checking them and the input's shape."""
        layers = tuple(layers) if layers is not None else (self.spec.layer,)
        size = self.spec.image_size
        if x.ndim != 4 or x.shape[1] != 3 or tuple(x.shape[-2:]) != (size, size):
            raise ValueError(f"{self.spec.key('image_size')}: expected input (B, 3, {size}, {size}), got {tuple(x.shape)}")
        for layer in layers:
            resolve_layer(self.spec, layer, self.num_layers)
        return layers

    def _tokens(self, x: torch.Tensor, layers: tuple[int, ...]) -> dict[int, torch.Tensor]:
        raise NotImplementedError

    def compile_blocks(self, mode: str | None = None) -> bool:
        """Compile the forward pass with ``torch.compile`` where a kind supports it; False: nothing compiled."""
        return False

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(self.spec.mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.spec.std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        return (x - mean) / std

    def split_prefix(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, P + h*w, D) -> patch tokens, or all tokens when the spec keeps the prefix."""
        rows, cols = self.grid
        prefix = tokens.shape[1] - rows * cols
        if prefix < 0:
            raise EncoderConfigError(
                f"{self.spec.key('patch')}: the model gives {tokens.shape[1]} tokens, fewer than the "
                f"{rows}x{cols} grid the spec promises"
            )
        self.num_prefix_tokens = prefix
        return tokens if not self.spec.drop_prefix else tokens[:, prefix:]


def unit_range(x: torch.Tensor) -> torch.Tensor:
    """uint8 pixels -> float32 in [0, 1], exactly as `vislaw.encoders.frame.load_framed` computes them."""
    return x.float().div_(255.0) if x.dtype == torch.uint8 else x


def require_stats(spec: EncoderSpec) -> None:
    """Kinds that normalise need mean/std in the spec: a silent default would be wrong for half the models."""
    for stat in ("mean", "std"):
        if getattr(spec, stat) is None:
            raise EncoderConfigError(f"{spec.key(stat)}: required for kind {spec.kind!r} (3 values, RGB)")


def resolve_layer(spec: EncoderSpec, layer: int, num_layers: int) -> int:
    """Block index ``layer`` (negative from the end) -> 0-based index, or an error naming the config key."""
    if not -num_layers <= layer < num_layers:
        raise EncoderConfigError(
            f"{spec.key('layer')}: {layer} is out of range for a model with {num_layers} layers "
            f"(valid: {-num_layers}..{num_layers - 1})"
        )
    return layer % num_layers


def check_patch(spec: EncoderSpec, model_patch: int) -> None:
    """The model's patch (or stride) must be the one the spec promises: it fixes the recorded grid."""
    if spec.patch is None:
        raise EncoderConfigError(f"{spec.key('patch')}: required; the model's is {model_patch}")
    if spec.patch != model_patch:
        raise EncoderConfigError(f"{spec.key('patch')}: spec says {spec.patch} but the model's is {model_patch}")
