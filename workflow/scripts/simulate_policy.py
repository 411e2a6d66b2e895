"""Adapter of rule simulate_policy: Monte-Carlo recall of the AC policy against random order."""

import sys

sys.stderr = open(snakemake.log[0], "w", buffering=1)  # noqa: F821 (snakemake is injected)

from vislaw.io import write_csv  # noqa: E402
from vislaw.measurements import load_measurements  # noqa: E402
from vislaw.policy import simulate_measurements  # noqa: E402

params = snakemake.params  # noqa: F821
measurements = load_measurements(snakemake.input.measurements, params.benchmarks)  # noqa: F821
simulation = simulate_measurements(measurements, params.trials, params.seed, params.max_budget)
write_csv(snakemake.output.simulation, simulation)  # noqa: F821
print(f"{params.trials} runs per benchmark over {len(params.benchmarks)} benchmarks", file=sys.stderr)
