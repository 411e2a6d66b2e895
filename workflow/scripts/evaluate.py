"""Adapter of rule evaluate: one benchmark of one trained MLLM."""

import sys

sys.stderr = open(snakemake.log[0], "w", buffering=1)  # noqa: F821 (snakemake is injected)

import torch  # noqa: E402

from vislaw.jobs import evaluate  # noqa: E402

torch.set_num_threads(snakemake.threads)  # noqa: F821
evaluate(
    snakemake.params.spec,  # noqa: F821
    snakemake.input.data,  # noqa: F821
    snakemake.input.mllm,  # noqa: F821
    snakemake.input.features,  # noqa: F821
    snakemake.wildcards.benchmark,  # noqa: F821
    snakemake.params.settings,  # noqa: F821
    snakemake.output[0],  # noqa: F821
)
