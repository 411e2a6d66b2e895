"""Adapter of rule plot_law: measured vs predicted, and the fitted surfaces over (A, C)."""

import sys

sys.stderr = open(snakemake.log[0], "w", buffering=1)  # noqa: F821 (snakemake is injected)

import pandas as pd  # noqa: E402

from vislaw.measurements import load_measurements  # noqa: E402
from vislaw.plots import plot_law_surfaces, plot_measured_vs_predicted  # noqa: E402

inp, params, out = snakemake.input, snakemake.params, snakemake.output  # noqa: F821
plot_measured_vs_predicted(pd.read_csv(inp.predictions), pd.read_csv(inp.r2), params.predict_with, out.fit)
plot_law_surfaces(
    load_measurements(inp.measurements, params.benchmarks),
    pd.read_csv(inp.coefficients),
    pd.read_csv(inp.normalisation),
    params.predict_with,
    out.surface,
)
