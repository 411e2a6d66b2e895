rule pretrain_llm:
    input:
        data=f"{OUT}/data",
    output:
        directory(f"{OUT}/llm"),
    log:
        f"{OUT}/logs/pretrain_llm.log",
    benchmark:
        f"{OUT}/benchmarks/pretrain_llm.tsv"
    priority: PRIORITY["pretrain_llm"]
    conda:
        "../envs/torch.yaml"
    threads: 1  # the GPU does the work; on a CPU, one thread per job avoids oversubscribing cores
    resources:
        gpu=1,
        mem_mb=4000,
        runtime=60,
    params:
        settings=config["llm"]["pretrain"],
        code=code_hash("llm", "tinyllama", "jobs"),
    script:
        "../workflow/scripts/pretrain_llm.py"


rule train_projector:
    input:
        data=f"{OUT}/data",
        llm=LLM,
        llm_files=LLM_FILES,
        features=f"{OUT}/features/{{encoder}}/caption_train.h5",
    output:
        f"{OUT}/projectors/{{encoder}}.pt",
    log:
        f"{OUT}/logs/train_projector/{{encoder}}.log",
    benchmark:
        f"{OUT}/benchmarks/train_projector/{{encoder}}.tsv"
    priority: PRIORITY["train_projector"]
    conda:
        "../envs/torch.yaml"
    threads: 1  # the GPU does the work; on a CPU, one thread per job avoids oversubscribing cores
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=120,
    params:
        spec=spec_param,
        settings=config["stage1"],
        code=code_hash(
            "train", "llm", "tinyllama", "scores.alignment", "commands", "jobs"
        ),
    script:
        "../workflow/scripts/train_projector.py"
