"""A lean forward pass for transformers ViT towers (CLIP, SigLIP, DINOv2): the same function, less work.

`FastViT` copies the weights of a loaded transformers vision tower into the form a GPU runs fastest and
computes what ``model(pixel_values, output_hidden_states=True).hidden_states`` computes for the requested
layers, up to floating-point rounding:

- blocks after the deepest requested layer are never run (the paper's penultimate layer skips the last);
- Q, K and V are one matrix product (one weight of 3D rows), and attention is one
  ``F.scaled_dot_product_attention`` call on views of its output (the fused GPU kernels take the strides,
  so nothing is copied);
- DINOv2's layer scales are folded into the output projections (``diag(g) W``, ``g b``), and CLIP's
  quick-GELU ``h * sigmoid(1.702 h)`` is computed as ``silu(1.702 h) / 1.702`` with both factors folded
  into fc1 and fc2: one activation kernel instead of three;
- the per-channel normalisation (and the ``/ 255`` of uint8 pixels) is folded into the patch-embedding
  weight, and everything the embedding adds that does not depend on the pixels (conv bias, the
  normalisation's offset, CLS/register tokens, position embeddings interpolated to the spec's resolution)
  is one table made by the model's own embedding module from a black image: the embedding is affine in
  the pixels, so ``embed(normalise(x)) = W' patches(x) + embed(normalise(black))``;
- the weights are cast once per (dtype, device) and the blocks run in that dtype with autocast off, so no
  per-call weight casts and no float32 LayerNorm outputs between the matrix products;
- on CUDA, attention asks for cuDNN's fused kernel first (then flash, memory-efficient, math: torch takes
  the first whose constraints the inputs meet; `FastViT.attention`, ``"default"`` leaves torch's own order):
  on an H200 it ran at 275 TFLOP/s against flash's 190 at CLIP-L@336's shapes and 364 against 268 at
  DINOv2-L@518's. The CPU runs torch's default;
- `FastViT.compile_blocks` optionally compiles the block function with ``torch.compile``: all blocks share
  their shapes, so one compilation serves every block (the attention preference is set around the
  compiled call, so the traced graph uses the same kernel).

`build_fastvit` refuses (returns None and the reason) a tower whose structure it does not know (SwiGLU
MLPs, other activations, non-patchify embeddings), and compares the embeddings and first block with the
transformers forward pass on a random image before the fast path is used.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

QUICK_GELU = 1.702
# config.hidden_act -> the activation the fast block applies (quick_gelu becomes silu with folded scales).
ACTIVATIONS = {"quick_gelu": "silu", "gelu": "gelu", "gelu_pytorch_tanh": "gelu_tanh", "gelu_new": "gelu_tanh"}
# The first block's output must match transformers' this closely (relative L2, float32, TF32 off).
SELF_CHECK_RTOL = 1e-4
# SDPA backends on CUDA, in priority order (names of torch.nn.attention.SDPBackend members).
CUDA_ATTENTION_PRIORITY = ("CUDNN_ATTENTION", "FLASH_ATTENTION", "EFFICIENT_ATTENTION", "MATH")
# On a shape's first run, block 0 with the preferred backends must match torch's default backends this
# closely (relative L2; two bf16 attention kernels differ by ~1e-3).
ATTENTION_AGREEMENT = 2e-2
ATTENTION_DEVICES = ("cuda",)  # device types the preference applies to (the CPU keeps torch's default)
BLOCK_TENSORS = ("ln1_w", "ln1_b", "qkv_w", "qkv_b", "o_w", "o_b", "ln2_w", "ln2_b", "fc1_w", "fc1_b", "fc2_w",
                 "fc2_b")


class Unsupported(Exception):
    """The tower has a structure the fast path does not reproduce; the caller uses transformers instead."""


@dataclass(frozen=True)
class BlockShape:
    """What every block shares besides its weights (compile-time constants of `block_forward`)."""

    heads: int
    eps1: float
    eps2: float
    act: str  # one of ACTIVATIONS' values


def block_forward(x: torch.Tensor, w: tuple[torch.Tensor, ...], heads: int, eps1: float, eps2: float,
                  act: str) -> torch.Tensor:
    """One pre-norm ViT block on (B, N, D) with fused weights ``w`` (in the order of BLOCK_TENSORS)."""
    ln1_w, ln1_b, qkv_w, qkv_b, o_w, o_b, ln2_w, ln2_b, fc1_w, fc1_b, fc2_w, fc2_b = w
    batch, n, dim = x.shape
    h = F.layer_norm(x, (dim,), ln1_w, ln1_b, eps1)
    qkv = F.linear(h, qkv_w, qkv_b).view(batch, n, 3, heads, dim // heads).permute(2, 0, 3, 1, 4)
    attn = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])  # (B, heads, N, d)
    x = x + F.linear(attn.transpose(1, 2).reshape(batch, n, dim), o_w, o_b)
    h = F.linear(F.layer_norm(x, (dim,), ln2_w, ln2_b, eps2), fc1_w, fc1_b)
    if act == "silu":
        h = F.silu(h)
    else:
        h = F.gelu(h, approximate="tanh" if act == "gelu_tanh" else "none")
    return x + F.linear(h, fc2_w, fc2_b)


class _Block(nn.Module):
    """One block's fused weights as float32 buffers, so that ``.to(device)`` moves them."""

    def __init__(self, tensors: Mapping[str, torch.Tensor]) -> None:
        super().__init__()
        for name in BLOCK_TENSORS:
            self.register_buffer(name, tensors[name].detach().float().clone())

    def tensors(self) -> tuple[torch.Tensor, ...]:
        return tuple(getattr(self, name) for name in BLOCK_TENSORS)


class FastViT(nn.Module):
    """Patch embedding + blocks of a ViT tower in fused form; `run` returns the requested blocks' outputs.

    patch_w: (D, 3*p*p) acting on [0, 1] pixels, normalisation folded in; table: (1, N, D), the embedding of
    a black image (prefix rows first); pre_norm: CLIP's LayerNorm before the blocks (weight, bias, eps).
    """

    def __init__(self, patch_w: torch.Tensor, table: torch.Tensor, patch: int,
                 pre_norm: tuple[torch.Tensor, torch.Tensor, float] | None,
                 blocks: Sequence[Mapping[str, torch.Tensor]], shape: BlockShape) -> None:
        super().__init__()
        self.patch = patch
        self.shape = shape
        self.register_buffer("patch_w", patch_w.detach().float().clone())
        self.register_buffer("table", table.detach().float().clone())
        self.pre_eps = None if pre_norm is None else float(pre_norm[2])
        if pre_norm is not None:
            self.register_buffer("pre_w", pre_norm[0].detach().float().clone())
            self.register_buffer("pre_b", pre_norm[1].detach().float().clone())
        self.blocks = nn.ModuleList(_Block(b) for b in blocks)
        self._cast: dict[tuple[torch.dtype, torch.device], dict[str, Any]] = {}
        self._block_fn: Callable[..., torch.Tensor] = block_forward
        self.compiled: str | None = None
        self._batch = 0  # largest batch seen: compiled runs pad smaller batches to it instead of recompiling
        # "cudnn": CUDA_ATTENTION_PRIORITY on CUDA; "default": torch's own choice. Set to "default" (with a
        # warning) if the first run of a shape fails with the preference.
        self.attention = "cudnn"
        self._ran: set[tuple[Any, ...]] = set()  # (shape, dtype, device, compiled, attention) run once already

    def _apply(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> FastViT:
        self._cast.clear()  # casts of the old tensors are stale after .to() / .float() / ...
        return super()._apply(fn, *args, **kwargs)

    def compile_blocks(self, mode: str | None = None) -> None:
        """Run the blocks through ``torch.compile`` (``mode`` as torch.compile takes it; None: its default).

        Compilation happens at the first batch and takes tens of seconds for a ViT-L: it pays on large image
        sets only. Shapes are static, so a smaller last batch is padded rather than compiled again.
        """
        if self.compiled == (mode or "default"):
            return  # compiled already (an encoder reused across image sets)
        self._block_fn = torch.compile(block_forward, dynamic=False, mode=mode)
        self.compiled = mode or "default"

    def weights(self, dtype: torch.dtype) -> dict[str, Any]:
        """The buffers cast to ``dtype``, once per (dtype, device)."""
        key = (dtype, self.patch_w.device)
        if key not in self._cast:
            self._cast[key] = {
                "patch": self.patch_w.to(dtype),
                "patch_u8": (self.patch_w / 255.0).to(dtype),
                "table": self.table.to(dtype),
                "pre": None if self.pre_eps is None else (self.pre_w.to(dtype), self.pre_b.to(dtype)),
                "blocks": [tuple(t.to(dtype) for t in block.tensors()) for block in self.blocks],
            }
        return self._cast[key]

    def patches(self, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """(B, 3, H, W) -> (B, h*w, 3*p*p): patches in row-major order, each channel-major like the conv."""
        p = self.patch
        batch, channels, height, width = x.shape
        rows, cols = height // p, width // p
        x = x[:, :, : rows * p, : cols * p].to(dtype)
        x = x.reshape(batch, channels, rows, p, cols, p).permute(0, 2, 4, 1, 3, 5)
        return x.reshape(batch, rows * cols, channels * p * p)

    def run(self, x: torch.Tensor, last: int, keep: set[int], dtype: torch.dtype) -> dict[int, torch.Tensor]:
        """Outputs of blocks ``keep`` (0-based, each <= ``last``) for images ``x``: float in [0, 1] or uint8."""
        w = self.weights(dtype)
        real = x.shape[0]
        if self.compiled is not None and 0 < real < self._batch:
            x = torch.cat([x, x.new_zeros((self._batch - real, *x.shape[1:]))])
        self._batch = max(self._batch, x.shape[0])
        tokens = F.linear(self.patches(x, dtype), w["patch_u8"] if x.dtype == torch.uint8 else w["patch"])
        table = w["table"]
        prefix = table.shape[1] - tokens.shape[1]
        h = torch.empty((x.shape[0], table.shape[1], table.shape[2]), dtype=dtype, device=x.device)
        h[:, :prefix] = table[:, :prefix]
        torch.add(tokens, table[:, prefix:], out=h[:, prefix:])
        if w["pre"] is not None:
            h = F.layer_norm(h, (h.shape[-1],), w["pre"][0], w["pre"][1], self.pre_eps)
        s = self.shape

        def blocks() -> dict[int, torch.Tensor]:
            out: dict[int, torch.Tensor] = {}
            state = h
            with attention_preference(state.device, self.attention):
                for index in range(last + 1):
                    state = self._block_fn(state, w["blocks"][index], s.heads, s.eps1, s.eps2, s.act)
                    if index in keep:
                        out[index] = state[:real]
            return out

        key = (tuple(h.shape), dtype, h.device, self.compiled, self.attention)
        if key in self._ran or h.device.type not in ATTENTION_DEVICES or self.attention == "default":
            return blocks()
        # First run of this shape with the preference: it must run, and block 0 on two of the images must
        # agree with torch's default backends (a wrong kernel would otherwise pass silently).
        try:
            out = blocks()
            with attention_preference(h.device, self.attention):
                preferred = block_forward(h[:2], w["blocks"][0], s.heads, s.eps1, s.eps2, s.act)
            default = block_forward(h[:2], w["blocks"][0], s.heads, s.eps1, s.eps2, s.act)
            error = float((preferred.float() - default.float()).norm() / default.float().norm().clamp_min(1e-30))
            if not error <= ATTENTION_AGREEMENT:
                raise RuntimeError(f"block 0 differs from torch's default backends by {error:.1e} (relative L2)")
        except Exception as err:  # noqa: BLE001 (the kernel the preference picked failed: torch's own order)
            warnings.warn(f"fast ViT path: attention with the {self.attention} preference failed "
                          f"({type(err).__name__}: {err}); using torch's default SDPA backends", stacklevel=2)
            self.attention = "default"
            return blocks()
        self._ran.add(key)
        return out


@contextlib.contextmanager
def attention_preference(device: torch.device, preference: str = "cudnn") -> Iterator[None]:
    """SDPA backends in `CUDA_ATTENTION_PRIORITY` order on CUDA (``preference="cudnn"``); else unchanged.

    Needs ``sdpa_kernel(..., set_priority=True)`` (torch 2.6 and later); older torch keeps its own order.
    """
    if device.type not in ATTENTION_DEVICES or preference != "cudnn" or not _SET_PRIORITY:
        yield
        return
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backends = [getattr(SDPBackend, name) for name in CUDA_ATTENTION_PRIORITY if hasattr(SDPBackend, name)]
    with sdpa_kernel(backends, set_priority=True):
        yield


def _sdpa_set_priority() -> bool:
    try:
        from torch.nn.attention import sdpa_kernel
    except ImportError:
        return False
    return "set_priority" in inspect.signature(sdpa_kernel).parameters


_SET_PRIORITY = _sdpa_set_priority()


# ---- building from a transformers model ----------------------------------------------------------------


def build_fastvit(model: nn.Module, mean: Sequence[float], std: Sequence[float], image_size: int,
                  forward_kwargs: Mapping[str, Any]) -> tuple[FastViT | None, str]:
    """The fast path of a transformers tower (float32, eval mode) for [0, 1] images of ``image_size``.

    ``forward_kwargs``: what the encoder passes to ``model(...)`` (``interpolate_pos_encoding``). Returns
    (None, reason) when the structure is unknown or the first block disagrees with transformers.
    """
    try:
        fast = _build(model, mean, std, image_size, forward_kwargs)
        error = _first_block_error(fast, model, mean, std, image_size, forward_kwargs)
    except Unsupported as err:
        return None, str(err)
    if not error <= SELF_CHECK_RTOL:
        return None, f"its first block differs from transformers' by {error:.1e} (relative L2)"
    return fast, ""


def _build(model: nn.Module, mean: Sequence[float], std: Sequence[float], image_size: int,
           forward_kwargs: Mapping[str, Any]) -> FastViT:
    config = model.config
    hidden_act = getattr(config, "hidden_act", None)
    act = ACTIVATIONS.get(hidden_act) if isinstance(hidden_act, str) else None
    if act is None:
        raise Unsupported(f"activation {hidden_act!r} (known: {', '.join(sorted(ACTIVATIONS))})")
    root = getattr(model, "vision_model", model)
    embeddings = _get(root, "embeddings")
    conv = _get(embeddings, "patch_embedding", "patch_embeddings.projection")
    if not isinstance(conv, nn.Conv2d) or conv.in_channels != 3 or conv.groups != 1:
        raise Unsupported("patch embedding is not a 3-channel Conv2d")
    p = conv.kernel_size[0]
    if conv.kernel_size != (p, p) or conv.stride != (p, p) or conv.padding not in ((0, 0), "valid") \
            or conv.dilation != (1, 1):
        raise Unsupported("patch embedding is not a square patchify convolution")
    layers = _get(root, "encoder.layers", "encoder.layer")
    heads, dim = int(config.num_attention_heads), int(config.hidden_size)
    if len(layers) != int(config.num_hidden_layers) or dim % heads:
        raise Unsupported("layer count or head size does not match the config")
    attn = _get(layers[0], "self_attn", "attention.attention", "attention")
    scale = getattr(attn, "scale", getattr(attn, "scaling", None))
    if scale is not None and not math.isclose(float(scale), (dim // heads) ** -0.5, rel_tol=1e-6):
        raise Unsupported(f"attention scale {scale} is not 1/sqrt(head_dim)")
    blocks, eps = [], set()
    for layer in layers:
        tensors, eps1, eps2 = _block_tensors(layer, act)
        blocks.append(tensors)
        eps.add((eps1, eps2))
    if len(eps) != 1:
        raise Unsupported("blocks differ in LayerNorm eps")
    (eps1, eps2), = eps
    pre = getattr(root, "pre_layrnorm", None)
    pre_norm = None if pre is None else _norm(pre)

    std_t = torch.tensor(std, dtype=torch.float32, device=conv.weight.device)
    mean_t = torch.tensor(mean, dtype=torch.float32, device=conv.weight.device)
    patch_w = (conv.weight.detach().float() / std_t.view(1, 3, 1, 1)).reshape(conv.out_channels, -1)
    black = (-mean_t / std_t).view(1, 3, 1, 1).expand(1, 3, image_size, image_size).contiguous()
    accepted = inspect.signature(embeddings.forward).parameters
    kwargs = {k: v for k, v in forward_kwargs.items() if k in accepted}
    with torch.no_grad(), exact_fp32():
        table = embeddings(black.to(conv.weight.dtype), **kwargs).float()
    rows = image_size // p
    if table.ndim != 3 or table.shape[0] != 1 or table.shape[1] < rows * rows:
        raise Unsupported(f"embedding output {tuple(table.shape)} is not (1, prefix + {rows * rows}, D)")
    return FastViT(patch_w, table, p, pre_norm, blocks, BlockShape(heads, eps1, eps2, act))


def _first_block_error(fast: FastViT, model: nn.Module, mean: Sequence[float], std: Sequence[float],
                       image_size: int, forward_kwargs: Mapping[str, Any]) -> float:
    """Relative L2 difference of block 0's output, fast path vs the transformers forward pass (stopped there)."""
    device = fast.patch_w.device
    x = torch.rand(1, 3, image_size, image_size, generator=torch.Generator().manual_seed(0)).to(device)
    mean_t = torch.tensor(mean, device=device).view(1, 3, 1, 1)
    std_t = torch.tensor(std, device=device).view(1, 3, 1, 1)
    layers = _get(getattr(model, "vision_model", model), "encoder.layers", "encoder.layer")
    captured: list[torch.Tensor] = []

    class Stop(Exception):
        pass

    def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
        captured.append(output[0] if isinstance(output, (tuple, list)) else output)
        raise Stop

    handle = layers[0].register_forward_hook(hook)
    try:
        with torch.no_grad(), exact_fp32(), contextlib.suppress(Stop):
            model(pixel_values=(x - mean_t) / std_t, **forward_kwargs)
    finally:
        handle.remove()
    if not captured:
        raise Unsupported("the transformers forward pass never ran its first block")
    reference = captured[0].float()
    with torch.no_grad(), exact_fp32():
        ours = fast.run(x, 0, {0}, torch.float32)[0]
    if ours.shape != reference.shape:
        raise Unsupported(f"first block gives {tuple(ours.shape)}, transformers {tuple(reference.shape)}")
    return float((ours - reference).norm() / reference.norm().clamp_min(1e-30))


def _get(module: Any, *paths: str) -> Any:
    """The first of the dotted attribute ``paths`` that exists (module layouts differ across versions)."""
    for path in paths:
        obj = module
        for part in path.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                break
        if obj is not None:
            return obj
    raise Unsupported(f"{type(module).__name__} has none of {', '.join(paths)}")


def _linear(module: Any) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(module, nn.Linear):
        raise Unsupported(f"expected nn.Linear, found {type(module).__name__}")
    weight = module.weight.detach().float()
    bias = module.bias.detach().float() if module.bias is not None else weight.new_zeros(module.out_features)
    return weight, bias


def _norm(module: Any) -> tuple[torch.Tensor, torch.Tensor, float]:
    if not isinstance(module, nn.LayerNorm) or module.weight is None or module.bias is None:
        raise Unsupported(f"expected an affine nn.LayerNorm, found {type(module).__name__}")
    return module.weight.detach().float(), module.bias.detach().float(), float(module.eps)


def _block_tensors(layer: nn.Module, act: str) -> tuple[dict[str, torch.Tensor], float, float]:
    """One block's weights in fused form, with layer scales and quick-GELU factors folded in."""
    ln1_w, ln1_b, eps1 = _norm(_get(layer, "layer_norm1", "norm1"))
    ln2_w, ln2_b, eps2 = _norm(_get(layer, "layer_norm2", "norm2"))
    q = _linear(_get(layer, "self_attn.q_proj", "attention.q_proj", "attention.attention.query"))
    k = _linear(_get(layer, "self_attn.k_proj", "attention.k_proj", "attention.attention.key"))
    v = _linear(_get(layer, "self_attn.v_proj", "attention.v_proj", "attention.attention.value"))
    o_w, o_b = _linear(_get(layer, "self_attn.out_proj", "attention.o_proj", "attention.output.dense"))
    mlp = _get(layer, "mlp")
    if not isinstance(getattr(mlp, "fc1", None), nn.Linear) or not isinstance(getattr(mlp, "fc2", None), nn.Linear):
        raise Unsupported(f"MLP {type(mlp).__name__} is not fc1 -> activation -> fc2 (SwiGLU?)")
    fc1_w, fc1_b = _linear(mlp.fc1)
    fc2_w, fc2_b = _linear(mlp.fc2)
    scale1 = getattr(getattr(layer, "layer_scale1", None), "lambda1", None)
    scale2 = getattr(getattr(layer, "layer_scale2", None), "lambda1", None)
    if scale1 is not None:  # DINOv2: g * (W a + b) = (diag(g) W) a + g b
        g = scale1.detach().float()
        o_w, o_b = o_w * g[:, None], o_b * g
    if scale2 is not None:
        g = scale2.detach().float()
        fc2_w, fc2_b = fc2_w * g[:, None], fc2_b * g
    if act == "silu":  # quick_gelu(h) = h * sigmoid(1.702 h) = silu(1.702 h) / 1.702
        fc1_w, fc1_b = fc1_w * QUICK_GELU, fc1_b * QUICK_GELU
        fc2_w = fc2_w / QUICK_GELU
    tensors = {"ln1_w": ln1_w, "ln1_b": ln1_b, "qkv_w": torch.cat([q[0], k[0], v[0]]),
               "qkv_b": torch.cat([q[1], k[1], v[1]]), "o_w": o_w, "o_b": o_b, "ln2_w": ln2_w, "ln2_b": ln2_b,
               "fc1_w": fc1_w, "fc1_b": fc1_b, "fc2_w": fc2_w, "fc2_b": fc2_b}
    return tensors, eps1, eps2


@contextlib.contextmanager
def exact_fp32() -> Iterator[None]:
    """float32 matrix products and convolutions without TF32 (cuDNN allows TF32 by default), restored after."""
    if not torch.cuda.is_available():
        yield
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # newer torch prefers fp32_precision; the old flags still work
        saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
