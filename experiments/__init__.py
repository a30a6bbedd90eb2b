"""The studies of PAPER.md, one thin module each: a frozen `Config`, its `PRESETS`
(smoke / cpu / paper) and `run(config, run_dir) -> dict`. Installed as memjax.experiments."""

# name on the command line -> module in this package
EXPERIMENTS = {
    "consistency": "consistency",
    "sensitivity": "sensitivity",
    "csr": "csr",
}
