"""Adapter of rule ac_table: one row per encoder with its A and C scores and their protocols."""

import sys

sys.stderr = open(snakemake.log[0], "w", buffering=1)  # noqa: F821 (snakemake is injected)

from vislaw.aggregate import ac_table  # noqa: E402

inputs = {kind: list(paths) for kind, paths in snakemake.input.items()}  # noqa: F821
ac_table(snakemake.params.encoders, inputs, snakemake.output[0])  # noqa: F821
