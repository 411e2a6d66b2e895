rule c_score:
    input:
        data=f"{OUT}/data",
        features=f"{OUT}/features/{{encoder}}/spair_test.h5",
    output:
        f"{OUT}/scores/C/{{encoder}}.json",
    log:
        f"{OUT}/logs/c_score/{{encoder}}.log",
    benchmark:
        f"{OUT}/benchmarks/c_score/{{encoder}}.tsv"
    conda:
        "../envs/torch.yaml"
    threads: 1  # the GPU does the work; on a CPU, one thread per job avoids oversubscribing cores
    resources:
        gpu=1,
        mem_mb=4000,
        runtime=30,
    params:
        spec=spec_param,
        protocol=config["c_score"],
        code=code_hash("scores.correspondence", "encoders.frame", "data", "jobs"),
    script:
        "../workflow/scripts/c_score.py"


rule ac_table:
    input:
        a=expand(f"{OUT}/scores/A/{{encoder}}.json", encoder=ENCODERS),
        c=expand(f"{OUT}/scores/C/{{encoder}}.json", encoder=ENCODERS),
    output:
        report(
            f"{OUT}/scores/ac.csv", caption="../report/ac_table.rst", category="Scores"
        ),
    log:
        f"{OUT}/logs/ac_table.log",
    conda:
        "../envs/torch.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        encoders=ENCODERS,
        code=code_hash("aggregate", "policy", "law", "measurements"),
    script:
        "../workflow/scripts/ac_table.py"


rule a_score:
    input:
        unpack(a_score_inputs),
    output:
        f"{OUT}/scores/A/{{encoder}}.json",
    log:
        f"{OUT}/logs/a_score/{{encoder}}.log",
    benchmark:
        f"{OUT}/benchmarks/a_score/{{encoder}}.tsv"
    conda:
        "../envs/torch.yaml"
    threads: 1  # the GPU does the work; on a CPU, one thread per job avoids oversubscribing cores
    resources:
        gpu=1,
        mem_mb=4000,
        runtime=30,
    params:
        spec=spec_param,
        settings=config["a_score"],
        references=a_score_references,
        code=code_hash("train", "llm", "tinyllama", "scores.alignment", "jobs"),
    script:
        "../workflow/scripts/a_score.py"
