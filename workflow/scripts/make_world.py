"""Adapter of rule make_world: generate the mini-world (captions, QA benchmarks, corpus, SPair-format pairs)."""

import sys

sys.stderr = open(snakemake.log[0], "w", buffering=1)  # noqa: F821 (snakemake is injected)

from vislaw.data.world import make_world  # noqa: E402

# params.world: the config's `world:` mapping (unknown keys raise); output.data: the folder, replaced atomically.
make_world(snakemake.output.data, snakemake.params.world)  # noqa: F821
