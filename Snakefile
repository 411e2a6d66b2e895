# vislaw: the Law of Vision Representation in MLLMs as a workflow.
# DAG of this release: the mini-world (when configured); measurements table -> AC law fit + AC policy
# simulation -> plots -> summary.


from snakemake.utils import min_version, validate

min_version("9.0")


# The embedded default, unless a preset is given: Snakemake would merge a --configfile into config.yaml,
# mixing e.g. the default's benchmarks into the preset's; a preset therefore replaces it whole.
if not workflow.overwrite_configfiles:

    configfile: "config.yaml"


validate(config, "schemas/config.schema.json")


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
