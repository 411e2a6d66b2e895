"""Adapter of rule measurements: A, C and the measured benchmark scores, one row per setting; and every
evaluation (score, chance, n, exact match), one row per (setting, benchmark)."""

import sys

sys.stderr = open(snakemake.log[0], "w", buffering=1)  # noqa: F821 (snakemake is injected)

from vislaw.aggregate import evaluation_table, measured_table  # noqa: E402

inp, params, out = snakemake.input, snakemake.params, snakemake.output  # noqa: F821
measured_table(inp.ac, params.evals, params.benchmarks, out.measurements)
evaluation_table(params.evals, out.evaluations)
