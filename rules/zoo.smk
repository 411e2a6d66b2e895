rule pretrain_encoder:
    input:
        world=f"{OUT}/data",
    output:
        directory(f"{OUT}/zoo/{{zoo_encoder}}"),
    log:
        f"{OUT}/logs/pretrain_encoder/{{zoo_encoder}}.log",
    benchmark:
        f"{OUT}/benchmarks/pretrain_encoder/{{zoo_encoder}}.tsv"
    priority: PRIORITY["pretrain_encoder"]
    conda:
        "../envs/torch.yaml"
    threads: 1  # small models: one thread each lets two trainings share the two cores efficiently
    resources:
        gpu=1,
        mem_mb=4000,
        runtime=30,
    params:
        objective=lambda wc: zoo_training(wc.zoo_encoder)[0],
        config=lambda wc: zoo_training(wc.zoo_encoder)[1],
        code=code_hash("zoo", "encoders", "data", "jobs"),
    script:
        "../workflow/scripts/pretrain_encoder.py"
