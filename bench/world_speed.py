"""Time the default mini-world: ``python bench/world_speed.py [outdir]``.

The issue's budget is 30 s on one core. Wall time counts waiting on a busy machine, so CPU time (this
process only) is printed beside it; run it on an idle machine for the figure that matters.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from vislaw.data.world import WorldParams, make_world


def main() -> None:
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(scratch) / "data"
        wall, cpu = time.perf_counter(), time.process_time()
        manifest = make_world(out, WorldParams())
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    counts = manifest["counts"]
    n_images = counts["caption_train"] + counts["caption_probe"] + sum(q["test"] for q in counts["qa"].values())
    n_images += sum(counts["spair"]["images"].values())
    print(f"default mini-world: {n_images} images, {sum(counts['spair']['pairs'].values())} pairs")
    print(f"wall {wall:.1f} s, cpu {cpu:.1f} s (budget 30 s on one core)")


if __name__ == "__main__":
    main()
