"""Adapter: rule extract_features -> vislaw.features.extract_to_h5 (one (encoder, dataset) cache)."""

import sys

import torch

from vislaw.features import extract_to_h5

sys.stderr = open(snakemake.log[0], "w", buffering=1)  # noqa: F821  (the progress bar goes to the log)
torch.set_num_threads(snakemake.threads)  # noqa: F821
extract_to_h5(
    snakemake.params.spec,  # noqa: F821  (EncoderSpec.to_dict(): a plain dict, so params changes rerun the rule)
    snakemake.input.images,  # noqa: F821
    snakemake.output[0],  # noqa: F821
    image_ids=snakemake.params.get("image_ids"),  # noqa: F821
    dataset_fingerprint=snakemake.params.get("dataset_fingerprint"),  # noqa: F821
    batch_size=snakemake.params.get("batch_size", 32),  # noqa: F821
)
