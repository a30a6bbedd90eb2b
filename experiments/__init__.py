"""The studies of PAPER.md, one thin module each: a frozen `Config`, its `PRESETS`
(smoke / cpu / paper), `check(config)` (what the config alone shows wrong, raised as
MemjaxError before anything runs; `run` calls it too), `run(config, run_dir) -> dict` and `evidence(summary) -> list` (the
lines `memjax reproduce` puts under PAPER.md's claims). Installed as memjax.experiments."""

# The paper's studies: name on the command line -> module in this package
EXPERIMENTS = {
    "consistency": "consistency",
    "sensitivity": "sensitivity",
    "csr": "csr",
    "capacity": "capacity",
    "convergence": "convergence",
    "noise-curves": "noise_curves",
    "regularization": "regularization",
    "filters": "filters",
}
# Per-example memorization scores beyond the paper: `memjax run` runs them, `memjax
# reproduce` only when named with --only.
SCORES = {
    "cscore": "cscore",
    "memorization": "memorization",
}
STUDIES = {**EXPERIMENTS, **SCORES}
