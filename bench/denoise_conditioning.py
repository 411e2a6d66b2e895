"""Does conditioning the mini zoo's denoising U-Net on captions or images make its features semantic? (issue 6)

Stable Diffusion's U-Net features name what they show because training conditions the U-Net on captions by
cross-attention to a frozen pretrained text encoder: to use the word "star", the features where the star lies
must match that word. This trains the default world's denoise_96 recipe (same objective, noise, masks and seed;
no colour jitter, and 240 steps instead of 120 unless ``--steps``) with that conditioning added: after the
stride-16 block and after the stride-8 up-block, cross-attention (zero-initialised output, so training starts
from the plain U-Net) to the token states of a frozen contrastive checkpoint's caption encoder (the CLIP text
tower's analogue). Each image's caption lists what is in it ("a small pink cross, a medium blue triangle";
``--where``: the world's full caption, positions included); a fraction ``--drop`` of captions is replaced by
the empty prompt, and features are read with the empty prompt, as DIFT reads Stable Diffusion's. ``--plain``
trains the same U-Net without the conditioning (the control). ``--image`` conditions instead on one token: the
frozen contrastive checkpoint's image embedding of the clean image (Stable Diffusion Image Variations, the
paper's SDim, attends to CLIP's image embedding in place of the caption); its features are read with the
image's own embedding, and dropped conditions are a zero embedding.

Prints the final denoising loss and, for the stride-16 (``mid16``) and stride-8 (``up8``) layers, linear
probes of place, colour and category at each object's cell of the 2 x 2-pooled grid
(`object_probe.place_table`), from those layers' caches, written to ``--out``
(``features/<name>_<layer>/<set>.h5``, ``data`` and ``llm`` linked to the run's) for ``bench/mllm_recipe.py
--results OUT``. Figures: bench/MLLM_NOTES.md, sessions 13 (captions) and 19 (images).

    PYTHONPATH=src python bench/denoise_conditioning.py --results results/default [--plain | --image] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import h5py
import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from object_probe import place_table  # noqa: E402

from vislaw.data.datasets import image_set  # noqa: E402
from vislaw.zoo.arch import MiniUNet  # noqa: E402
from vislaw.zoo.data import load_caption_set, to_unit  # noqa: E402
from vislaw.zoo.objectives import Denoise, normalise  # noqa: E402
from vislaw.zoo.settings import training_config  # noqa: E402
from vislaw.zoo.text import CaptionEncoder, encode_captions  # noqa: E402
from vislaw.zoo.train import _optimise  # noqa: E402

LAYERS = ("mid16", "up8")


class CrossAttention(nn.Module):
    """A U-Net block's map attends to the caption's token states; the output starts at zero."""

    def __init__(self, width: int, text_dim: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(8, width)
        self.attention = nn.MultiheadAttention(width, 4, kdim=text_dim, vdim=text_dim, batch_first=True)
        nn.init.zeros_(self.attention.out_proj.weight)
        nn.init.zeros_(self.attention.out_proj.bias)

    def forward(self, x: torch.Tensor, states: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        queries = self.norm(x).flatten(2).transpose(1, 2)
        out, _ = self.attention(queries, states, states, key_padding_mask=pad)
        return x + out.transpose(1, 2).reshape_as(x)


class CaptionedUNet(MiniUNet):
    """The mini U-Net with cross-attention after ``mid16`` and ``up8`` to ``self.context`` (token states and
    their padding mask), set by the caller before each pass; ``None``: the plain U-Net."""

    def __init__(self, dim: int, deep: int, stem: tuple[int, ...], text_dim: int) -> None:
        super().__init__(dim, deep, stem)
        self.cross16 = CrossAttention(deep, text_dim)
        self.cross8 = CrossAttention(dim, text_dim)
        self.context: tuple[torch.Tensor, torch.Tensor] | None = None
        # forward hooks put the attention after each block's output, so MiniUNet's own passes run unchanged
        self.mid16.register_forward_hook(lambda _block, _inputs, out: self._attend(self.cross16, out))
        self.up8.register_forward_hook(lambda _block, _inputs, out: self._attend(self.cross8, out))

    def _attend(self, cross: CrossAttention, out: torch.Tensor) -> torch.Tensor:
        return out if self.context is None else cross(out, *self.context)


class CaptionedDenoise(Denoise):
    """Denoise's loss, each batch conditioned on its captions (a fraction ``drop`` replaced by the empty prompt)."""

    def __init__(self, backbone: CaptionedUNet, data, settings, states: torch.Tensor, pad: torch.Tensor,
                 empty: tuple[torch.Tensor, torch.Tensor], drop: float) -> None:
        super().__init__(backbone, data, settings)
        self.states, self.pad, self.empty, self.drop = states, pad, empty, drop
        # its own stream, so the noise and masks are the control's draw for draw
        self.drop_generator = torch.Generator().manual_seed(int(settings["seed"]))

    def loss(self, index: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        states, pad = self.states[index].clone(), self.pad[index].clone()
        dropped = torch.rand(len(index), generator=self.drop_generator) < self.drop
        states[dropped], pad[dropped] = self.empty[0], self.empty[1]
        self.backbone.context = (states, pad)
        try:
            return super().loss(index, gen)
        finally:
            self.backbone.context = None


def object_list(record: dict) -> str:
    """What is in the image, without where: "a small pink cross, a medium blue triangle"."""
    return ", ".join(f"a {o['size']} {o['colour']} {o['category']}" for o in record["objects"])


def token_states(zoo: Path, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Per-token states of the frozen caption encoder of contrastive checkpoint ``zoo``: (N, L, D), pad mask (N, L)."""
    config = json.loads((zoo / "zoo.json").read_text())["config"]
    vocabulary = json.loads((zoo / "vocabulary.json").read_text())
    heads = torch.load(zoo / "heads.pt", weights_only=True)
    max_words, dim = int(config["max_words"]), int(config["text_dim"])
    encoder = CaptionEncoder(len(vocabulary), max_words, dim=dim, out_dim=int(config["embed_dim"]))
    encoder.load_state_dict({k.removeprefix("text."): v for k, v in heads.items() if k.startswith("text.")})
    ids = encode_captions(captions, vocabulary, max_words)
    ids[ids.eq(0).all(1), 0] = 1  # the empty prompt: one unknown word (an all-padding row attends to nothing)
    pad = ids == 0
    with torch.no_grad():
        states = encoder.norm(encoder.encoder(encoder.embed(ids) + encoder.pos[:, :max_words],
                                              src_key_padding_mask=pad))
    return states, pad, dim


def image_embedder(zoo: Path):
    """The frozen contrastive checkpoint ``zoo``'s image embedding (its image_proj of the pooled tokens) as a
    function of normalised pixels -> (B, 1, D) token states; and D."""
    from vislaw.zoo.objectives import split_tokens
    from vislaw.zoo.train import load_backbone

    backbone, record = load_backbone(zoo)
    backbone.eval()
    heads = torch.load(zoo / "heads.pt", weights_only=True)
    weight, bias = heads["image_proj.weight"], heads["image_proj.bias"]
    pool = str(record["config"]["pool"])

    def embed(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            pooled, _ = split_tokens(backbone, backbone.forward_tokens(x), pool)
            return (pooled @ weight.T + bias)[:, None, :]

    return embed, int(weight.shape[0])


def write_caches(out: Path, results: Path, unet: CaptionedUNet, empty: tuple[torch.Tensor, torch.Tensor],
                 conditioned: bool, name: str, embed=None) -> None:
    """``features/<name>_<layer>/<set>.h5`` (image_ids, tokens) of the stride-8 grid, as the run's caches."""
    from PIL import Image

    out.mkdir(parents=True, exist_ok=True)
    for link in ("data", "llm"):
        if not (out / link).exists():
            (out / link).symlink_to((results / link).resolve())
    indices = range(1, len(LAYERS) + 1)  # MiniUNet.LAYERS' positions of mid16 and up8
    for dataset in ("caption_train", "caption_probe", "qa_test"):
        images = image_set(results / "data", dataset)
        tokens = {layer: [] for layer in LAYERS}
        for start in range(0, len(images.paths), 100):
            chunk = images.paths[start : start + 100]
            pixels = np.stack([np.asarray(Image.open(path).convert("RGB")) for path in chunk])
            x = normalise(torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255)
            if embed is not None:  # the image's own embedding, as SDim's features are read
                unet.context = (embed(x), torch.zeros(len(x), 1, dtype=torch.bool))
            else:
                unet.context = ((empty[0].expand(len(x), -1, -1), empty[1].expand(len(x), -1)) if conditioned
                                else None)
            with torch.no_grad():
                maps = unet.features(x, indices)  # both layers from one pass
            for index, layer in zip(indices, LAYERS, strict=True):
                tokens[layer].append(maps[index].numpy())
        for layer, chunks in tokens.items():
            folder = out / "features" / f"{name}_{layer}"
            folder.mkdir(parents=True, exist_ok=True)
            with h5py.File(folder / f"{dataset}.h5", "w") as cache:
                cache["image_ids"] = np.array(images.ids, dtype=object)
                cache["tokens"] = np.concatenate(chunks).astype(np.float16)
    unet.context = None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, required=True, help="a finished run, e.g. results/default")
    parser.add_argument("--text-encoder", default="contrastive_96",
                        help="the contrastive zoo checkpoint whose caption encoder (--image: image embedding) "
                             "conditions the U-Net")
    arm = parser.add_mutually_exclusive_group()
    arm.add_argument("--plain", action="store_true", help="no conditioning (the control)")
    arm.add_argument("--image", action="store_true",
                        help="condition on the contrastive checkpoint's image embedding (SDim) instead of captions")
    parser.add_argument("--where", action="store_true", help="condition on the full captions, positions included")
    parser.add_argument("--drop", type=float, default=0.1, help="fraction of captions replaced by the empty prompt")
    parser.add_argument("--steps", type=int, default=240)
    parser.add_argument("--noise", type=float, nargs=2, help="noise range (default: the denoise recipe's)")
    parser.add_argument("--out", type=Path, help="where the two layers' caches go (default: a new temporary folder)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    # no colour jitter in either arm: a jittered image no longer shows the colours its caption names
    overrides = {"steps": args.steps, "colour_jitter": False, **({"noise": args.noise} if args.noise else {})}
    settings = training_config("denoise", overrides)
    records = json.loads((args.results / "data" / "captions" / "train.json").read_text())
    data = load_caption_set(args.results / "data", None)
    embed = None
    if args.image:
        embed, text_dim = image_embedder(args.results / "zoo" / args.text_encoder)
        images = data.images
        states = torch.cat([embed(normalise(to_unit(images[i : i + 200]))) for i in range(0, len(images), 200)])
        pad = torch.zeros(len(states), 1, dtype=torch.bool)
        empty = (torch.zeros(1, text_dim), torch.zeros(1, dtype=torch.bool))
        states, pad = torch.cat([states, empty[0][None]]), torch.cat([pad, empty[1][None]])
    else:
        captions = list(data.captions) if args.where else [object_list(r) for r in records]
        states, pad, text_dim = token_states(args.results / "zoo" / args.text_encoder, captions + [""])
        empty = (states[-1], pad[-1])
    arch = settings["arch"]
    torch.manual_seed(int(settings["seed"]))
    # the U-Net's own weights are drawn first, so both arms start from the default recipe's initial U-Net
    unet = CaptionedUNet(arch["dim"], arch["deep"], tuple(arch["stem"]), text_dim)
    if args.plain:
        model = Denoise(unet, data, settings)
    else:
        model = CaptionedDenoise(unet, data, settings, states[:-1], pad[:-1], empty, args.drop)
    curve = _optimise(model, settings)
    name = "plain" if args.plain else "imaged" if args.image else "captioned"
    print(f"{name}: denoising loss {curve[0][1]:.3f} -> {curve[-1][1]:.3f} in {args.steps} steps", flush=True)
    out = args.out or Path(tempfile.mkdtemp(prefix=f"denoise_conditioning_{name}_"))
    write_caches(out, args.results, unet, empty, not args.plain, name, embed if not args.plain else None)
    side_px = float(json.loads((args.results / "data" / "manifest.json").read_text())["params"]["image_size"])
    place_table(out, records, side_px)


if __name__ == "__main__":
    main()
