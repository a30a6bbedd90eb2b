"""The studies of PAPER.md and the per-example scores beyond it, one thin module each,
installed as memjax.experiments and registered by name under the entry-point group
"memjax.studies" (pyproject.toml; memjax.studies says what a study module holds)."""
