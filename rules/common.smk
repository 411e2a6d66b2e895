# Config, checks that fail `snakemake -n` early, and paths shared by the rules.
import re

from vislaw.law import min_points
from vislaw.measurements import (
    MeasurementsError,
    check_enough_scored,
    load_measurements,
)
from vislaw.provenance import code_hash

OUT = f"results/{config['name']}"
BENCHMARKS = list(config["benchmarks"])
GROUPS = {name: entry["group"] for name, entry in config["benchmarks"].items()}


def check_measurements():
    """Read the measurements table at parse time: a bad table fails the dry run, naming file and line."""
    try:
        table = load_measurements(config["measurements"], BENCHMARKS)
        check_enough_scored(
            table,
            min_points(config["law"]["feature_sets"]),
            f"the law's feature sets {config['law']['feature_sets']} (config key 'law.feature_sets')",
        )
    except MeasurementsError as err:
        raise WorkflowError(f"config key 'measurements': {err}") from None
    return table


MEASUREMENTS = check_measurements()


def all_targets():
    world = [f"{OUT}/data"] if "world" in config else []
    return world + [
        f"{OUT}/summary.md",
        f"{OUT}/plots/law_fit.png",
        f"{OUT}/plots/law_surface.png",
        f"{OUT}/plots/r2_comparison.png",
        f"{OUT}/plots/policy_recall.png",
    ]
