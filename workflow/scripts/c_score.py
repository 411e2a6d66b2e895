"""Adapter of rule c_score: the correspondence score of one encoder from its cached features."""

import sys

sys.stderr = open(snakemake.log[0], "w", buffering=1)  # noqa: F821 (snakemake is injected)

import torch  # noqa: E402

from vislaw.jobs import c_score  # noqa: E402

torch.set_num_threads(snakemake.threads)  # noqa: F821
c_score(
    snakemake.params.spec,  # noqa: F821
    snakemake.input.data,  # noqa: F821
    snakemake.input.features,  # noqa: F821
    snakemake.params.protocol,  # noqa: F821
    snakemake.output[0],  # noqa: F821
)
