"""Adapter: rule pretrain_encoder -> vislaw.zoo.train_encoder (one mini-zoo checkpoint folder)."""

import sys

import torch

from vislaw.zoo import train_encoder

sys.stderr = open(snakemake.log[0], "w", buffering=1)  # noqa: F821  (the loss curve goes to the log)
torch.set_num_threads(snakemake.threads)  # noqa: F821
train_encoder(
    snakemake.params.objective,  # noqa: F821  (contrastive, selfsup, denoise, supervised, random)
    snakemake.input.world,  # noqa: F821  (the make_world folder)
    snakemake.output[0],  # noqa: F821  (directory(): replaced atomically)
    snakemake.params.config,  # noqa: F821  (overrides of vislaw.zoo.training_config; params changes rerun)
)
