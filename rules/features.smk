rule extract_features:
    # One job per encoder writes all its caches: the model is built once for the four image sets.
    input:
        data=f"{OUT}/data",
    output:
        expand(f"{OUT}/features/{{{{encoder}}}}/{{dataset}}.h5", dataset=DATASETS),
    log:
        f"{OUT}/logs/extract_features/{{encoder}}.log",
    benchmark:
        f"{OUT}/benchmarks/extract_features/{{encoder}}.tsv"
    conda:
        "../envs/vislaw.yaml"
    threads: 2  # torch intra-op threads; images are decoded by loader threads alongside
    resources:
        gpu=1,
        mem_mb=4000,
        runtime=60,
    params:
        spec=spec_param,
        datasets=DATASETS,
        batch_size=config["features"]["batch_size"],
        code=code_hash("encoders", "features", "data", "jobs"),
    script:
        "../workflow/scripts/extract_features.py"
