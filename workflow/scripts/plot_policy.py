"""Adapter of rule plot_policy: the policy's Recall@3 by budget against random order."""

import sys

sys.stderr = open(snakemake.log[0], "w", buffering=1)  # noqa: F821 (snakemake is injected)

import pandas as pd  # noqa: E402

from vislaw.plots import plot_policy_recall  # noqa: E402

plot_policy_recall(
    pd.read_csv(snakemake.input.simulation),  # noqa: F821
    snakemake.params.groups,  # noqa: F821
    snakemake.output[0],  # noqa: F821
)
