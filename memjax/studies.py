"""The studies memjax knows: every module registered under the entry-point group
"memjax.studies" (pyproject.toml: memjax's own, from experiments/; another installed
package may register its own), so the library imports no study by name.

A study module holds a frozen `Config`, its `PRESETS` (smoke / cpu / paper), `check(config)`
(what the config alone shows wrong), `run(config, run_dir) -> dict`, `evidence(summary)`
(the lines `memjax reproduce` puts under PAPER.md's claims) and `EXPERIMENT`: its
experiment in PAPER.md ("E1" ...), or None (or absent) for a study beyond the paper,
which `memjax reproduce` runs only when named.
"""
from __future__ import annotations

from importlib.metadata import entry_points
from types import ModuleType

from memjax.errors import MemjaxError

GROUP = "memjax.studies"


def registered() -> dict[str, ModuleType]:
    """{name: module} of every registered study: the paper's in the order of its
    experiments, then the others by name (imports every study: `study` loads one)."""
    modules = {e.name: e.load() for e in entry_points(group=GROUP)}
    if not modules:
        raise MemjaxError(f"no study is registered (entry points {GROUP!r}): install memjax "
                          f"with pip (pip install -e .)")

    def place(name):  # the paper's experiments by number ("E5" -> 5), then the others
        experiment = experiment_of(modules[name])
        return experiment is None, int(experiment[1:]) if experiment else 0, name

    return {n: modules[n] for n in sorted(modules, key=place)}


def experiment_of(module: ModuleType) -> str | None:
    """A study's experiment in PAPER.md ("E1" ...), None for one beyond it (also for a
    registered module that does not say)."""
    return getattr(module, "EXPERIMENT", None)


def study(name: str) -> ModuleType:
    """The module of study `name` (MemjaxError naming the known ones if there is none)."""
    found = {e.name: e for e in entry_points(group=GROUP)}
    if name not in found:
        raise MemjaxError(f"unknown experiment {name!r}; known: {', '.join(sorted(found))}")
    return found[name].load()


def paper_studies() -> list[str]:
    """The studies of PAPER.md's experiments, in their order: what `memjax reproduce` runs."""
    return [n for n, m in registered().items() if experiment_of(m) is not None]
