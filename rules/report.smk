rule plot_law:
    input:
        measurements=MEASUREMENTS_CSV,
        r2=rules.fit_law.output.r2,
        coefficients=rules.fit_law.output.coefficients,
        predictions=rules.fit_law.output.predictions,
        normalisation=rules.fit_law.output.normalisation,
    output:
        fit=report(
            f"{OUT}/plots/law_fit.png",
            caption="../report/law_fit.rst",
            category="AC law",
        ),
        surface=report(
            f"{OUT}/plots/law_surface.png",
            caption="../report/law_surface.rst",
            category="AC law",
        ),
    log:
        f"{OUT}/logs/plot_law.log",
    conda:
        "../envs/analysis.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        benchmarks=BENCHMARKS,
        predict_with=config["law"]["predict_with"],
        code=code_hash("plots", "law", "measurements"),
    script:
        "../workflow/scripts/plot_law.py"


rule plot_r2:
    input:
        summary=rules.fit_law.output.summary,
    output:
        report(
            f"{OUT}/plots/r2_comparison.png",
            caption="../report/r2_comparison.rst",
            category="AC law",
        ),
    log:
        f"{OUT}/logs/plot_r2.log",
    conda:
        "../envs/analysis.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        feature_sets=config["law"]["feature_sets"],
        code=code_hash("plots", "law", "measurements"),
    script:
        "../workflow/scripts/plot_r2.py"


rule plot_policy:
    input:
        simulation=rules.simulate_policy.output.simulation,
    output:
        report(
            f"{OUT}/plots/policy_recall.png",
            caption="../report/policy_recall.rst",
            category="AC policy",
        ),
    log:
        f"{OUT}/logs/plot_policy.log",
    conda:
        "../envs/analysis.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        groups=GROUPS,
        code=code_hash("plots", "law", "measurements"),
    script:
        "../workflow/scripts/plot_policy.py"


rule summary:
    input:
        unpack(summary_inputs),
    output:
        report(f"{OUT}/summary.md", caption="../report/summary.rst", category="Summary"),
    log:
        f"{OUT}/logs/summary.log",
    conda:
        "../envs/analysis.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        name=config["name"],
        measurements=MEASUREMENTS_CSV,
        groups=GROUPS,
        predict_with=config["law"]["predict_with"],
        code=code_hash("report"),
    script:
        "../workflow/scripts/summary.py"
