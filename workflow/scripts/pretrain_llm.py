"""Adapter of rule pretrain_llm: the mini-world's tokenizer and tiny language model."""

import sys

sys.stderr = open(snakemake.log[0], "w", buffering=1)  # noqa: F821 (snakemake is injected)

import torch  # noqa: E402

from vislaw.jobs import pretrain_llm  # noqa: E402

torch.set_num_threads(snakemake.threads)  # noqa: F821
pretrain_llm(snakemake.input.data, snakemake.params.settings, snakemake.output[0])  # noqa: F821
