"""Throughput benchmarks (`memjax bench`), installed as memjax.benchmarks.

Each module listed in BENCHMARK_MODULES exposes `CASES: dict[str, Callable[[str], list[dict]]]`
mapping a case name to a function of the preset (`cpu` or `gpu`) that returns result rows,
each a dict with at least {"case", "impl", "members", "model_examples_per_s", "seconds"}
(optional: "tflops", "flops_per_model_example", "bytes_per_model_example", "note").
`harness.run` collects them, adds achieved TFLOP/s and the share of the roofline measured
by memjax.plan.roofline, and writes memjax/records/<date>-<device>.{json,md}, where
`memjax plan` reads them.
"""

# memjax.benchmarks.<name> for each; a module that is not there is reported and skipped.
BENCHMARK_MODULES = ("throughput", "metrics")
