"""Adapter of rule prepare_data: the config's data block as a data folder in the mini-world's layout."""

import sys

sys.stderr = open(snakemake.log[0], "w", buffering=1)  # noqa: F821 (snakemake is injected)

from vislaw.data.prepare import prepare_data  # noqa: E402

# params.data: the config's `data:` mapping (defaults filled by the schema); output.data: the folder, replaced
# atomically. A bad file or record raises DataSourceError naming the config key, the file and the record.
prepare_data(snakemake.output.data, snakemake.params.data)  # noqa: F821
