"""What the zoo's tokens say about one object: linear probes at the glyph of each glyph-bearing object.

For every object of the stage-1 training images that carries a glyph, prints the held-out accuracy (70/30
split) of a linear probe for the object's glyph (the default world: 30 classes, chance 3 %) and category
(8 classes, chance 12 %), read from:

- the image's pixels: a 16 x 16 grey window centred on the glyph, its ink's polarity aligned (white ink on
  dark objects, black on light ones); what a reader of the image could get, the probe's upper bound;
- each encoder's cached patch token (``caption_train`` cache of a finished run) of the cell holding the
  glyph's centre, and the 2 x 2 cells around that centre (the glyph straddles cells).

Issue 6's diagnostics: is the glyph benchmark a perception failure? If the pixels say which glyph and the
tokens do not, the encoder threw it away and no stage-2 recipe can read it.

A second table asks the same of the spatial benchmark: for every object with a clear place in its image (the
spatial question's answer: on the left, on the right, at the top, at the bottom; chance 25 %), probes of the
place, colour and category from the token of the cell holding its centre on the grid the MLLM sees (the
encoder's tokens averaged over 2 x 2 cells, as stage 1 pools them).

    PYTHONPATH=src python bench/object_probe.py --results results/default
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mllm_diagnostics import probe_accuracy  # noqa: E402
from mllm_recipe import cached  # noqa: E402

from vislaw.data.text import location  # noqa: E402
from vislaw.train import grid_side, pool_tokens  # noqa: E402

WINDOW = 16  # pixels: two patches of the mini zoo (stride 8), about a large object's glyph


def pixel_windows(data: Path, items: list[tuple[str, dict]]) -> np.ndarray:
    """(N, WINDOW * WINDOW) grey windows centred on each glyph, mean removed, signed so the ink is positive."""
    half = WINDOW // 2
    out = []
    for image, obj in items:
        grey = np.asarray(Image.open(data / image).convert("L"), dtype=np.float32) / 255.0
        grey = np.pad(grey, half, mode="edge")
        x, y = (int(round(v)) + half for v in obj["glyph_xy"])
        window = grey[y - half : y + half, x - half : x + half]
        window = window - window.mean()
        # the glyph's strokes cross the window's centre: their sign there is the ink's polarity
        centre = window[half - 2 : half + 2, half - 2 : half + 2].mean()
        out.append((window if centre >= 0 else -window).ravel())
    return np.stack(out)


def token_cells(grid: np.ndarray, where: list[tuple[float, float]], side_px: float) -> tuple[np.ndarray, np.ndarray]:
    """Per object: the token of the cell holding the point (N, D) and the 2 x 2 cells nearest it (N, 4 D)."""
    side = grid.shape[1]
    cell_px = side_px / side
    one, four = [], []
    for k, (x, y) in enumerate(where):
        one.append(grid[k, min(int(y / cell_px), side - 1), min(int(x / cell_px), side - 1)])
        # the 2 x 2 block whose centre is nearest the point: cells floor(p - 1/2) and the next one
        col = int(np.clip(np.floor(x / cell_px - 0.5), 0, side - 2))
        row = int(np.clip(np.floor(y / cell_px - 0.5), 0, side - 2))
        four.append(grid[k, row : row + 2, col : col + 2].reshape(-1))
    return np.stack(one), np.stack(four)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, required=True, help="a finished run, e.g. results/default")
    args = parser.parse_args()
    data = args.results / "data"
    records = json.loads((data / "captions" / "train.json").read_text())
    side_px = float(json.loads((data / "manifest.json").read_text())["params"]["image_size"])
    # worlds from session 6 on record where each glyph is drawn
    items = [(r["image"], o) for r in records for o in r["objects"] if o.get("glyph") and o.get("glyph_xy")]
    if not items:
        raise SystemExit(f"{data / 'captions' / 'train.json'}: no objects with a glyph and its glyph_xy")
    cut = int(0.7 * len(items))
    glyphs = [o["glyph"] for _, o in items]
    categories = [o["category"] for _, o in items]

    def probe(x: np.ndarray, labels: list[str]) -> str:
        return f"{100 * probe_accuracy(x[:cut], labels[:cut], x[cut:], labels[cut:]):.0f} %"

    n_glyphs = len(set(glyphs))
    print(f"{len(items)} glyph-bearing objects ({cut} to fit, {len(items) - cut} to test), {n_glyphs} glyphs "
          f"(chance {100 / n_glyphs:.0f} %)\n")
    print("| input | glyph, the glyph's cell | glyph, 2 x 2 cells or 16 x 16 px | category, the glyph's cell |")
    print("| --- | --- | --- | --- |")
    print(f"| pixels (grey, ink polarity aligned) | - | {probe(pixel_windows(data, items), glyphs)} | - |",
          flush=True)
    where = [tuple(o["glyph_xy"]) for _, o in items]
    for cache in sorted((args.results / "features").glob("*/caption_train.h5")):
        tokens = cached(args.results, cache.parent.name, "caption_train", [image for image, _ in items]).numpy()
        side = int(round(tokens.shape[1] ** 0.5))
        one, four = token_cells(tokens.reshape(len(tokens), side, side, -1), where, side_px)
        print(f"| {cache.parent.name} | {probe(one, glyphs)} | {probe(four, glyphs)} | {probe(one, categories)} |",
              flush=True)
    place_table(args.results, records, side_px)


def place_table(results: Path, records: list[dict], side_px: float) -> None:
    image = SimpleNamespace(width=side_px, height=side_px)
    items = [(r["image"], o, place) for r in records for o in r["objects"]
             if (place := location(SimpleNamespace(cx=o["cx"], cy=o["cy"]), image)) is not None]
    cut = int(0.7 * len(items))
    labels = {"place": [p for *_, p in items], "colour": [o["colour"] for _, o, _ in items],
              "category": [o["category"] for _, o, _ in items]}
    print(f"\n{len(items)} objects with a clear place ({cut} to fit), the token of their centre's cell after 2 x 2 "
          "pooling\n")
    print("| input | place | colour | category |")
    print("| --- | --- | --- | --- |")
    for cache in sorted((results / "features").glob("*/caption_train.h5")):
        pooled = pool_tokens(cached(results, cache.parent.name, "caption_train", [image for image, _, _ in items]), 2)
        side = grid_side(pooled.shape[1])
        grid = pooled.reshape(len(pooled), side, side, -1).numpy()
        one, _ = token_cells(grid, [(o["cx"], o["cy"]) for _, o, _ in items], side_px)
        cells = [f"{100 * probe_accuracy(one[:cut], y[:cut], one[cut:], y[cut:]):.0f} %" for y in labels.values()]
        print(f"| {cache.parent.name} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
