rule simulate_policy:
    input:
        measurements=MEASUREMENTS_CSV,
    output:
        simulation=f"{OUT}/policy/simulation.csv",
    log:
        f"{OUT}/logs/simulate_policy.log",
    benchmark:
        f"{OUT}/benchmarks/simulate_policy.tsv"
    conda:
        "../envs/analysis.yaml"
    threads: 1  # single-threaded Monte-Carlo; numpy's small lstsq gains nothing from threads
    resources:
        mem_mb=1000,
        runtime=30,
    params:
        benchmarks=BENCHMARKS,
        trials=config["policy"]["trials"],
        seed=config["policy"]["seed"],
        max_budget=config["policy"]["max_budget"],
        code=code_hash("policy", "law", "measurements"),
    script:
        "../workflow/scripts/simulate_policy.py"
