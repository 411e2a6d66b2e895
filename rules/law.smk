rule fit_law:
    input:
        measurements=MEASUREMENTS_CSV,
    output:
        r2=report(
            f"{OUT}/law/r2.csv", caption="../report/r2_table.rst", category="AC law"
        ),
        summary=report(
            f"{OUT}/law/summary.csv",
            caption="../report/r2_summary.rst",
            category="AC law",
        ),
        coefficients=report(
            f"{OUT}/law/coefficients.csv",
            caption="../report/coefficients.rst",
            category="AC law",
        ),
        predictions=f"{OUT}/law/predictions.csv",
        normalisation=f"{OUT}/law/normalisation.csv",
    log:
        f"{OUT}/logs/fit_law.log",
    benchmark:
        f"{OUT}/benchmarks/fit_law.tsv"
    conda:
        "../envs/analysis.yaml"
    threads: 1  # a few dozen tiny least-squares fits
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        groups=GROUPS,
        feature_sets=config["law"]["feature_sets"],
        predict_with=config["law"]["predict_with"],
        seed=config["law"]["seed"],
        code=code_hash("law", "measurements"),
    script:
        "../workflow/scripts/fit_law.py"
