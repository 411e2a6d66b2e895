"""Adapter of checkpoint policy_round: the AC policy's next picks."""

import sys

sys.stderr = open(snakemake.log[0], "w", buffering=1)  # noqa: F821 (snakemake is injected)

from vislaw.aggregate import policy_round  # noqa: E402

policy_round(
    snakemake.input.ac,  # noqa: F821
    snakemake.params.evals,  # noqa: F821
    snakemake.params.round,  # noqa: F821
    snakemake.params.settings,  # noqa: F821
    snakemake.output[0],  # noqa: F821
)
