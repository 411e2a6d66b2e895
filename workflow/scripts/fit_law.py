"""Adapter of rule fit_law: fit the AC law and its baselines on the measurements table."""

import sys

sys.stderr = open(snakemake.log[0], "w", buffering=1)  # noqa: F821 (snakemake is injected)

from vislaw.io import write_csv  # noqa: E402
from vislaw.law import fit_law, summarize  # noqa: E402
from vislaw.measurements import load_measurements  # noqa: E402

params = snakemake.params  # noqa: F821
measurements = load_measurements(snakemake.input.measurements, list(params.groups))  # noqa: F821
result = fit_law(measurements, params.feature_sets, params.predict_with, params.seed)
output = snakemake.output  # noqa: F821
write_csv(output.r2, result.r2)
write_csv(output.summary, summarize(result.r2, params.groups))
write_csv(output.coefficients, result.coefficients)
write_csv(output.predictions, result.predictions)
write_csv(output.normalisation, result.normalisation)
print(f"fitted {len(result.r2)} (benchmark, feature set) pairs on {len(measurements.settings)} settings",
      file=sys.stderr)
