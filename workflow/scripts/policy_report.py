"""Adapter of rule policy_report: the policy's rounds and its recommendation."""

import sys

sys.stderr = open(snakemake.log[0], "w", buffering=1)  # noqa: F821 (snakemake is injected)

from vislaw.aggregate import policy_report  # noqa: E402

policy_report(
    snakemake.input.ac,  # noqa: F821
    list(snakemake.input.rounds),  # noqa: F821
    snakemake.params.evals,  # noqa: F821
    snakemake.params.settings,  # noqa: F821
    snakemake.output.rounds,  # noqa: F821
    snakemake.output.report,  # noqa: F821
)
