"""Adapter of rule summary: results/<name>/summary.md with the run's tables and plots."""

import os
import sys

sys.stderr = open(snakemake.log[0], "w", buffering=1)  # noqa: F821 (snakemake is injected)

import pandas as pd  # noqa: E402

from vislaw.report import build_summary, write_summary  # noqa: E402

inp, params, out = snakemake.input, snakemake.params, snakemake.output  # noqa: F821
titles = ["measured vs predicted", "fitted AC surfaces", "R^2 and Q^2 by feature set", "AC policy recall"]
text = build_summary(
    name=params.name,
    measurements_path=params.measurements,
    groups=params.groups,
    r2=pd.read_csv(inp.r2),
    summary=pd.read_csv(inp.summary),
    coefficients=pd.read_csv(inp.coefficients),
    predictions=pd.read_csv(inp.predictions),
    simulation=pd.read_csv(inp.simulation),
    predict_with=params.predict_with,
    plots=dict(zip(titles, inp.plots)),
    summary_dir=os.path.dirname(out[0]),
)
write_summary(out[0], text)
