"""Adapter of rule extract_features: the HDF5 feature caches of one encoder, one per image set."""

import sys

sys.stderr = open(snakemake.log[0], "w", buffering=1)  # noqa: F821 (snakemake is injected)

import torch  # noqa: E402

from vislaw.jobs import extract_features  # noqa: E402

torch.set_num_threads(snakemake.threads)  # noqa: F821
extract_features(
    snakemake.params.spec,  # noqa: F821
    snakemake.input.data,  # noqa: F821
    dict(zip(snakemake.params.datasets, snakemake.output)),  # noqa: F821
    # not a param: the batch size does not change the caches (vislaw.features.extraction_protocol leaves it
    # out), so lowering it after an out-of-memory error must not rerun every extraction and what follows
    snakemake.config["features"]["batch_size"],  # noqa: F821
)
