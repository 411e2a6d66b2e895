"""Adapter of rule summary: results/<name>/summary.md with the run's tables and plots."""

import json
import os
import sys

sys.stderr = open(snakemake.log[0], "w", buffering=1)  # noqa: F821 (snakemake is injected)

import pandas as pd  # noqa: E402

from vislaw.report import build_summary, write_summary  # noqa: E402

inp, params, out = snakemake.input, snakemake.params, snakemake.output  # noqa: F821
has = set(inp.keys())
titles = ["measured vs predicted", "fitted AC surfaces", "R^2 and Q^2 by feature set", "AC policy recall"]
text = build_summary(
    name=params.name,
    measurements_path=params.measurements,
    groups=params.groups,
    predict_with=params.predict_with,
    summary_dir=os.path.dirname(out[0]),
    law={k: pd.read_csv(inp[k]) for k in ("r2", "summary", "coefficients", "predictions")} if "r2" in has else None,
    simulation=pd.read_csv(inp.simulation) if "simulation" in has else None,
    plots=dict(zip(titles, inp.plots)) if "plots" in has else None,
    ac=pd.read_csv(inp.ac) if "ac" in has else None,
    measurements=pd.read_csv(inp.measurements) if "ac" in has else None,
    policy=json.loads(open(inp.policy).read()) if "policy" in has else None,
    evaluations=pd.read_csv(inp.evaluations) if "evaluations" in has else None,
)
write_summary(out[0], text)
