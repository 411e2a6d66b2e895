# vislaw: the Law of Vision Representation in MLLMs as a workflow.
# DAG: data (mini-world or your files) -> per-encoder features (HDF5) -> stage-1 projector -> A and C scores
# -> AC table -> AC policy (a checkpoint, in rounds) -> stage-2 training and evaluation of its picks
# -> measurements -> law fit, policy simulation -> plots -> summary.


import os

from snakemake.utils import min_version, validate

min_version("9.0")

# The checkout the conda envs (envs/*.yaml) install vislaw from: conda runs their pip section from a copy of the
# env file under .snakemake/conda, so they name it by this variable (pip expands ${VAR}) and not by a relative path.
os.environ.update(VISLAW_ROOT=workflow.basedir)


# The embedded default, unless a preset is given: Snakemake would merge a --configfile into config.yaml,
# mixing e.g. the default's benchmarks into the preset's; a preset therefore replaces it whole.
if not workflow.overwrite_configfiles:

    configfile: "config.yaml"


validate(config, "schemas/config.schema.json")


# Table-sized steps run where Snakemake runs, not as cluster jobs: a SLURM job costs more in queueing and
# start-up than these take.
localrules:
    all,
    ac_table,
    policy_round,
    measurements,
    policy_report,
    summary,


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/zoo.smk"
include: "rules/features.smk"
include: "rules/stage1.smk"
include: "rules/stage2.smk"
include: "rules/scores.smk"
include: "rules/law.smk"
include: "rules/policy.smk"
include: "rules/report.smk"


rule all:
    default_target: True
    input:
        all_targets(),
