rule make_world:
    output:
        data=directory(f"{OUT}/data"),
    log:
        f"{OUT}/logs/make_world.log",
    benchmark:
        f"{OUT}/benchmarks/make_world.tsv"
    conda:
        "../envs/vislaw.yaml"
    threads: 1  # single-threaded numpy and Pillow rendering
    resources:
        mem_mb=2000,
        runtime=15,
    params:
        world=config.get("world", {}),
        code=code_hash("data", "io"),
    script:
        "../workflow/scripts/make_world.py"
