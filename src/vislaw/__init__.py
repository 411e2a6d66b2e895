"""vislaw: the Law of Vision Representation in MLLMs as a library and a Snakemake workflow.

Modules, one job each:
- ``measurements``: the measured table (settings x A, C, benchmark scores), read and checked.
- ``law``: the AC law (OLS on min-max normalised A and C), R^2, leave-one-out Q^2.
- ``policy``: the AC policy (grid sampling, refits, Monte-Carlo recall).
- ``plots``: matplotlib figures of the fits and the policy.
- ``report``: the run's markdown summary.
- ``io``: atomic writes (nothing half-written is ever left as an output).
- ``provenance``: code hashes that make the workflow rerun when library code changes.
- ``commands``: the placeholders of external commands (LLaVA's trainers, lmms-eval), checked and filled.
"""

__version__ = "0.1.0"
