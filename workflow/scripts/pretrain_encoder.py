"""Adapter of rule pretrain_encoder: one mini-zoo encoder, trained on the mini-world."""

import sys

sys.stderr = open(snakemake.log[0], "w", buffering=1)  # noqa: F821 (snakemake is injected)

import torch  # noqa: E402

from vislaw.jobs import pretrain_encoder  # noqa: E402

torch.set_num_threads(snakemake.threads)  # noqa: F821
pretrain_encoder(
    snakemake.params.objective,  # noqa: F821
    snakemake.input.world,  # noqa: F821
    snakemake.params.config,  # noqa: F821
    snakemake.output[0],  # noqa: F821
)
