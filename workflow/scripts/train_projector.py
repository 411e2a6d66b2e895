"""Adapter of rule train_projector: the stage-1 projector of one encoder."""

import sys

sys.stderr = open(snakemake.log[0], "w", buffering=1)  # noqa: F821 (snakemake is injected)

import torch  # noqa: E402

from vislaw.jobs import train_projector  # noqa: E402

torch.set_num_threads(snakemake.threads)  # noqa: F821
train_projector(
    snakemake.params.spec,  # noqa: F821
    snakemake.input.data,  # noqa: F821
    snakemake.input.llm,  # noqa: F821
    snakemake.input.features,  # noqa: F821
    snakemake.params.settings,  # noqa: F821
    snakemake.output[0],  # noqa: F821
)
