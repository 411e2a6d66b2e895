checkpoint policy_round:
    # Round r of the AC policy: picks from the A/C table and the scores of the rounds before; the DAG
    # grows with each round's picks (their train_mllm and evaluate jobs).
    input:
        ac=f"{OUT}/scores/ac.csv",
        evals=lambda wc: flat_eval_files(trained_before(int(wc.round))),
    output:
        f"{OUT}/policy/round_{{round}}.json",
    log:
        f"{OUT}/logs/policy_round/{{round}}.log",
    conda:
        "../envs/torch.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        evals=lambda wc: eval_files(trained_before(int(wc.round))),
        round=lambda wc: int(wc.round),
        settings=LIVE_POLICY_SETTINGS,
        code=code_hash("policy", "aggregate", "law", "measurements"),
    script:
        "../workflow/scripts/policy_round.py"


rule train_mllm:
    input:
        data=f"{OUT}/data",
        llm=LLM,
        llm_files=LLM_FILES,
        projector=f"{OUT}/projectors/{{encoder}}.pt",
        features=f"{OUT}/features/{{encoder}}/caption_train.h5",
    output:
        directory(f"{OUT}/mllm/{{encoder}}"),
    log:
        f"{OUT}/logs/train_mllm/{{encoder}}.log",
    benchmark:
        f"{OUT}/benchmarks/train_mllm/{{encoder}}.tsv"
    priority: PRIORITY["train_mllm"]
    conda:
        "../envs/torch.yaml"
    threads: 1  # the GPU does the work; on a CPU, one thread per job avoids oversubscribing cores
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=240,
    params:
        spec=spec_param,
        settings=config["stage2"],
        code=code_hash(
            "train", "llm", "tinyllama", "scores.alignment", "commands", "jobs"
        ),
    script:
        "../workflow/scripts/train_mllm.py"


rule evaluate:
    input:
        data=f"{OUT}/data",
        mllm=f"{OUT}/mllm/{{encoder}}",
        # none when the data source has no QA test images (IMAGE_SETS): the evaluation is external then
        features=(
            f"{OUT}/features/{{encoder}}/qa_test.h5" if "qa_test" in IMAGE_SETS else []
        ),
    output:
        f"{OUT}/eval/{{encoder}}/{{benchmark}}.json",
    log:
        f"{OUT}/logs/evaluate/{{encoder}}/{{benchmark}}.log",
    benchmark:
        f"{OUT}/benchmarks/evaluate/{{encoder}}/{{benchmark}}.tsv"
    conda:
        "../envs/torch.yaml"
    threads: 1  # the GPU does the work; on a CPU, one thread per job avoids oversubscribing cores
    resources:
        gpu=1,
        mem_mb=4000,
        runtime=60,
    params:
        spec=spec_param,
        settings=evaluation_settings,
        code=code_hash(
            "train", "llm", "tinyllama", "scores.alignment", "data", "commands", "jobs"
        ),
    script:
        "../workflow/scripts/evaluate.py"


rule measurements:
    input:
        ac=f"{OUT}/scores/ac.csv",
        evals=lambda wc: flat_eval_files(trained_settings()),
    output:
        measurements=f"{OUT}/measurements.csv",
        evaluations=f"{OUT}/evaluations.csv",
    log:
        f"{OUT}/logs/measurements.log",
    conda:
        "../envs/torch.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        evals=lambda wc: eval_files(trained_settings()),
        benchmarks=BENCHMARKS,
        code=code_hash("aggregate", "policy", "law", "measurements"),
    script:
        "../workflow/scripts/measurements.py"


rule policy_report:
    input:
        ac=f"{OUT}/scores/ac.csv",
        rounds=lambda wc: round_files(),
        evals=lambda wc: flat_eval_files(trained_settings()),
    output:
        rounds=f"{OUT}/policy/rounds.csv",
        report=f"{OUT}/policy/recommendation.json",
    log:
        f"{OUT}/logs/policy_report.log",
    conda:
        "../envs/torch.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        evals=lambda wc: eval_files(trained_settings()),
        settings=LIVE_POLICY_SETTINGS,
        code=code_hash("policy", "aggregate", "law", "measurements"),
    script:
        "../workflow/scripts/policy_report.py"
