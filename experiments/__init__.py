"""The studies of PAPER.md, one thin module each: a frozen `Config`, its `PRESETS`
(smoke / cpu / paper), `run(config, run_dir) -> dict` and `evidence(summary) -> list` (the
lines `memjax reproduce` puts under PAPER.md's claims). Installed as memjax.experiments."""

# name on the command line -> module in this package
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
