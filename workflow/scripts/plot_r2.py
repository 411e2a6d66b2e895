"""Adapter of rule plot_r2: R^2 and Q^2 of the feature sets by benchmark group."""

import sys

sys.stderr = open(snakemake.log[0], "w", buffering=1)  # noqa: F821 (snakemake is injected)

import pandas as pd  # noqa: E402

from vislaw.plots import plot_r2_comparison  # noqa: E402

plot_r2_comparison(
    pd.read_csv(snakemake.input.summary),  # noqa: F821
    snakemake.params.feature_sets,  # noqa: F821
    snakemake.output[0],  # noqa: F821
)
