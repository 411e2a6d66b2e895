rule extract_features:
    # One job per encoder writes all its caches: the model is built once for the image sets.
    input:
        data=f"{OUT}/data",
        zoo=zoo_inputs,
        weights=weight_inputs,
    output:
        expand(f"{OUT}/features/{{{{encoder}}}}/{{dataset}}.h5", dataset=IMAGE_SETS),
    log:
        f"{OUT}/logs/extract_features/{{encoder}}.log",
    benchmark:
        f"{OUT}/benchmarks/extract_features/{{encoder}}.tsv"
    priority: PRIORITY["extract_features"]
    conda:
        "../envs/torch.yaml"
    threads: 1  # one torch thread per job: on a CPU two 1-thread jobs beat one oversubscribed 2-thread job
    resources:
        gpu=1,
        mem_mb=4000,
        runtime=60,
    params:
        spec=spec_param,
        weights_revision=weight_revisions,
        datasets=IMAGE_SETS,
        code=code_hash("encoders", "zoo", "features", "loader", "jpeg", "data", "jobs"),
    script:
        "../workflow/scripts/extract_features.py"
