"""Every study's smoke run: the programs it calls are the ones `memjax plan` counts for its
declared phases, and every figure it writes has a title; the example grids start right
under theirs."""
import dataclasses

import numpy as np
import pytest

from memjax import cost
from memjax.data import Split
from memjax.experiments.figures import example_figure
from memjax.measurements import Convergence
from memjax.reproduce import check_config
from memjax.studies import registered
from memjax.results import RunDir


def _title(fig) -> str:
    """The figure's title: its suptitle, else the titles of all its panels (the axes that
    draw something, colorbars aside), joined; "" if any panel has none."""
    if fig.get_suptitle().strip():
        return fig.get_suptitle()
    panels = [ax for ax in fig.axes if ax.get_label() != "<colorbar>" and ax.has_data()]
    titles = [" ".join(t for loc in ("left", "center", "right") if (t := ax.get_title(loc)))
              for ax in panels]
    return " | ".join(titles) if panels and all(titles) else ""


@pytest.fixture
def saved_figures(monkeypatch):
    """{file name: figure} of every figure handed to RunDir.save_figure (none is written)."""
    import matplotlib.pyplot as plt

    figures = {}

    def keep(self, fig, name):
        fig.canvas.draw()  # lay it out as saving would
        figures[name] = fig

    monkeypatch.setattr(RunDir, "save_figure", keep)
    yield figures
    for fig in figures.values():
        plt.close(fig)


def planned_programs(module, config) -> dict:
    """{program: [Cost, runs]} of the study's declared phases, as memjax plan counts them
    (a training epoch with an in-step search is two steps of one program: their costs add)."""
    planned = {}
    for phase in module.phases(config):
        for step in cost.phase_steps(phase):
            entry = planned.setdefault(step.program, [cost.Cost(), 0])
            entry[0] += step.cost
            entry[1] = max(entry[1], step.runs)
    return planned


# (sensitivity's other conditions run the programs of these two: one per condition, and
# counting each twice takes half a minute)
SMOKE = {"sensitivity": dict(conditions=("real", "randX_per_example"))}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(registered()))
def test_a_smoke_run_runs_the_planned_programs_and_titles_its_figures(name, tmp_path,
                                                                      saved_figures):
    module = registered()[name]
    config = dataclasses.replace(module.PRESETS["smoke"], **SMOKE.get(name, {}))
    check_config(module, config)
    run_dir = RunDir(tmp_path)
    run_dir.start(name, {})
    with cost.recording() as ran:
        module.run(config, run_dir)
    planned = planned_programs(module, config)
    assert sorted(ran) == sorted(planned)
    converging = {p.id for p in module.phases(config)
                  if any(isinstance(m, Convergence) for m in p.measurements)}
    for program, (counted, calls) in ran.items():
        (planned_cost, runs), phase = planned[program], program.split("/")[0]
        assert (counted.flops, counted.bytes) == (planned_cost.flops, planned_cost.bytes), program
        # (a phase whose members all converge ends before its planned bound)
        assert calls == runs or (phase in converging and calls < runs), program
    assert saved_figures, f"{name}'s smoke run drew no figure"
    untitled = [f for f, fig in saved_figures.items() if not _title(fig)]
    assert not untitled, f"{name}: figures without a title: {', '.join(untitled)}"


def test_example_grid_leaves_no_blank_band_under_its_title(tmp_path, saved_figures):
    rng = np.random.default_rng(0)
    split = Split(rng.integers(0, 256, (60, 28, 28, 1), dtype=np.uint8),
                  np.repeat(np.arange(10), 6).astype(np.int32), np.zeros(60, bool))
    example_figure(RunDir(tmp_path), "grid.png", split, rng.random(60), "score", per_class=3)
    fig = saved_figures["grid.png"]
    assert _title(fig) == "score: highest (left) and lowest (right) per class"
    renderer = fig.canvas.get_renderer()
    title_bottom = fig._suptitle.get_window_extent(renderer).y0
    grid_top = max(ax.get_tightbbox(renderer).y1 for ax in fig.axes if ax.images)
    gap_inches = (title_bottom - grid_top) / fig.dpi
    assert 0 <= gap_inches < 0.2, f"{gap_inches:.2f} in between the title and the first row"


def test_noise_curves_titles_a_part_by_the_model_it_trains(tmp_path, saved_figures):
    """Its first part is the paper's MLP unless --model says otherwise: the figures and the
    summary name the model that trained."""
    from memjax.config import ModelConfig
    from memjax.experiments import noise_curves

    config = dataclasses.replace(noise_curves.PRESETS["smoke"],
                                 model=ModelConfig(kind="outside_model:factory"))
    run_dir = RunDir(tmp_path)
    run_dir.start("noise-curves", {})
    summary = noise_curves.run(config, run_dir)["summary"]
    assert {v["model"] for v in summary.values()} == {"outside_model:factory"}
    for name in ("fig7_noise_curves.png", "fig8_noise_csr.png"):
        title = _title(saved_figures[name])
        assert title.startswith("outside_model:factory, ") and "MLP" not in title, title
