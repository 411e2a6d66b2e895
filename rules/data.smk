# The data folder {OUT}/data, one layout (src/vislaw/data/README.md) from either source: the generated
# mini-world ('world', the default) or your own files ('data'). Only one rule makes it, so the folder has
# one producer.
if "data" in config:

    rule prepare_data:
        input:
            # your files and folders: a change (a newer file, an added image folder) reruns this rule
            list(source_paths(config["data"]).values()),
        output:
            data=directory(f"{OUT}/data"),
        log:
            f"{OUT}/logs/prepare_data.log",
        benchmark:
            f"{OUT}/benchmarks/prepare_data.tsv"
        conda:
            "../envs/data.yaml"
        threads: 1  # JSON parsing and file checks, single-threaded
        resources:
            mem_mb=8000,  # LLaVA's 665K instruction records take a few GB as Python objects
            runtime=30,
        params:
            data=config["data"],
            code=code_hash("data", "io"),
        script:
            "../workflow/scripts/prepare_data.py"

else:

    rule make_world:
        output:
            data=directory(f"{OUT}/data"),
        log:
            f"{OUT}/logs/make_world.log",
        benchmark:
            f"{OUT}/benchmarks/make_world.tsv"
        conda:
            "../envs/data.yaml"
        threads: 1  # single-threaded numpy and Pillow rendering
        resources:
            mem_mb=2000,
            runtime=15,
        params:
            world=config.get("world", {}),
            code=code_hash("data", "io"),
        script:
            "../workflow/scripts/make_world.py"
