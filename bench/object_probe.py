"""What the zoo's tokens say about one object: linear probes of the token at each object's centre cell.

For every object of the stage-1 training images that carries a glyph, takes the encoder's cached patch token
of the grid cell holding the glyph's centre (``caption_train`` cache of a finished run), and prints the
held-out accuracy (70/30 split) of a linear probe for the object's glyph (30 classes, chance 3 %) and
category (8 classes, chance 12 %). Issue 6's diagnostics: is the glyph benchmark a perception failure?

    PYTHONPATH=src python bench/object_probe.py --results results/default
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mllm_diagnostics import probe_accuracy  # noqa: E402
from mllm_recipe import cached  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, required=True, help="a finished run, e.g. results/default")
    args = parser.parse_args()
    records = json.loads((args.results / "data" / "captions" / "train.json").read_text())
    side_px = float(json.loads((args.results / "data" / "manifest.json").read_text())["params"]["image_size"])
    items = [(r["image"], o) for r in records for o in r["objects"] if o.get("glyph")]
    cut = int(0.7 * len(items))
    print(f"{len(items)} glyph-bearing objects, {len({o['glyph'] for _, o in items})} glyphs")
    for cache in sorted((args.results / "features").glob("*/caption_train.h5")):
        tokens = cached(args.results, cache.parent.name, "caption_train", [image for image, _ in items]).numpy()
        side = int(round(tokens.shape[1] ** 0.5))
        grid = tokens.reshape(len(tokens), side, side, -1)
        # the cell holding the glyph's centre (worlds from session 6 on record it), else the object's centre
        where = [o.get("glyph_xy") or (o["cx"], o["cy"]) for _, o in items]
        cells = np.stack([grid[k, min(int(y / side_px * side), side - 1), min(int(x / side_px * side), side - 1)]
                          for k, (x, y) in enumerate(where)])
        found = []
        for target in ("glyph", "category"):
            labels = [o[target] for _, o in items]
            accuracy = probe_accuracy(cells[:cut], labels[:cut], cells[cut:], labels[cut:])
            found.append(f"{target} {100 * accuracy:.0f} %")
        print(f"{cache.parent.name:24s} " + ", ".join(found), flush=True)


if __name__ == "__main__":
    main()
