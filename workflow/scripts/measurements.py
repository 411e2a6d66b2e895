"""Adapter of rule measurements: A, C and the measured benchmark scores, one row per setting."""

import sys

sys.stderr = open(snakemake.log[0], "w", buffering=1)  # noqa: F821 (snakemake is injected)

from vislaw.jobs import measured_table  # noqa: E402

measured_table(snakemake.input.ac, snakemake.params.evals, snakemake.params.benchmarks, snakemake.output[0])  # noqa: F821
