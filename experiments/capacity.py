"""E3 (Fig. 5): validation accuracy against hidden width, one curve per noise level.

    memjax run capacity --preset cpu [--dataset mnist --data-dir ../shared/data]

One ensemble per width bucket: each member is an MLP of its own width (a masked max-width
MLP, initialized as the narrow network), trained on real data or with a fraction of its
training inputs (randX) or labels (randY) replaced; validation (always real data) is
evaluated every epoch and each member's best validation accuracy kept. Real data should
reach its best well below the largest width; noisy data should need more capacity.
Presets: smoke (seconds); cpu (embedded 10k MNIST, widths 16..512, 9 noise conditions,
15 epochs, lr 0.05: ~4 minutes on 2 cores); paper (MNIST 50k, widths 16..4096,
SGD lr 0.01, 100 epochs).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
import numpy as np

from memjax.config import (DataConfig, ModelConfig, TrainConfig, check_choices,
                          check_numbers, validate)
from memjax.data import load_dataset
from memjax.errors import MemjaxError
from memjax.experiments.figures import new_figure
from memjax.experiments.sweeps import (check_sweep_members, check_width_sweep, grid,
                                      width_buckets, width_model)
from memjax.results import RunDir
from memjax.measurements import Evaluation
from memjax.members import Members
from memjax.phase import Data, Phase
from memjax.runner import Runner


# PAPER.md's experiment: `memjax reproduce` runs the studies that have one, in its order
EXPERIMENT = "E3"


@dataclass(frozen=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(members=1, epochs=100))
    seeds: int = 1  # members per sweep cell, each its own initialization and data order
    widths: tuple[int, ...] = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
    noise_levels: tuple[float, ...] = (0.2, 0.4, 0.6, 0.8)
    noise_kinds: tuple[str, ...] = ("randX", "randY")
    # widths in (previous, limit] share one masked model of their largest width
    bucket_limits: tuple[int, ...] = (256, 1024, 4096)
    tolerance: float = 0.01  # "reaches its best": within this much validation accuracy


PAPER = Config(data=DataConfig(name="mnist"), model=ModelConfig(hidden=(4096, 4096)),
               train=TrainConfig(members=1, epochs=100))
PRESETS = {
    "smoke": replace(PAPER, data=DataConfig(train_size=512, validation_size=256),
                     model=ModelConfig(hidden=(32, 32)),
                     train=replace(PAPER.train, epochs=2, batch_size=64,
                                   learning_rate=0.05),
                     widths=(8, 32), noise_levels=(0.5,), bucket_limits=(8, 32)),
    "cpu": replace(PAPER, data=DataConfig(), model=ModelConfig(hidden=(512, 512)),
                   train=replace(PAPER.train, epochs=15, learning_rate=0.05),
                   widths=(16, 32, 64, 128, 256, 512), bucket_limits=(128, 512)),
    "paper": PAPER,
}


def conditions(config: Config) -> list[tuple[str, float]]:
    return [("real", 0.0)] + [(k, p) for k in config.noise_kinds for p in config.noise_levels]


def check(config: Config) -> None:
    """The checks the config alone allows, before anything runs (MemjaxError)."""
    validate(config)
    check_numbers(config, positive=("widths", "seeds"), fractions=("noise_levels",),
                  nonnegative=("tolerance",), nonempty=("widths", "noise_kinds"),
                  distinct=("widths", "noise_levels", "bucket_limits"))
    check_sweep_members(config)
    check_width_sweep(config.model, "capacity")
    check_choices("noise_kinds", config.noise_kinds, ("randX", "randY"))
    if max(config.widths) > max(config.model.hidden):
        raise MemjaxError(f"widths must be in 1..{max(config.model.hidden)} (model.hidden)")



def cells(config: Config) -> dict[str, np.ndarray]:
    """One row per member: width, noise kind and level."""
    conds = conditions(config)
    cells = grid(cond=list(range(len(conds))), width=list(config.widths),
                 repeat=list(range(config.seeds)))
    return {"width": cells["width"].astype(int),
            "kind": np.array([conds[c][0] for c in cells["cond"]]),
            "level": np.array([conds[c][1] for c in cells["cond"]], float)}


def buckets(config: Config, rows: dict) -> list[tuple[ModelConfig, Members]]:
    """One ensemble per width bucket: its masked model and its Members (ids: their rows)."""
    out = []
    for model_width, members in width_buckets(rows["width"], config.bucket_limits):
        kind, level = rows["kind"][members], rows["level"][members]
        out.append((width_model(config.model, model_width),
                    Members(members, widths=rows["width"][members],
                            input_noise=np.where(kind == "randX", level, 0.0),
                            label_noise=np.where(kind == "randY", level, 0.0))))
    return out


def phases(config: Config) -> list[Phase]:
    """Per width bucket: its members trained for `train.epochs`, their validation accuracy
    after each epoch."""
    return [Phase(f"width-{model.hidden[0]}", model, config.train, Data(config.data), members,
                  desc=f"width <= {model.hidden[0]}",
                  measurements=(Evaluation("validation_accuracy", on="validation"),))
            for model, members in buckets(config, cells(config))]


def run(config: Config, run_dir: RunDir) -> dict:
    check(config)
    dataset = load_dataset(config.data)
    conds = conditions(config)
    table = cells(config)
    widths, kind, level = table["width"], table["kind"], table["level"]
    curves = np.zeros((config.train.epochs, len(widths)))
    seconds = examples = 0.0
    for b, phase in enumerate(phases(config)):
        rows = phase.members.ids

        def log(epoch, record, b=b):
            return {"bucket": b, "epoch": epoch,
                    "validation_accuracy": record["validation_accuracy"].tolist(),
                    "train_accuracy": record["train_accuracy"].tolist()}

        outcome = Runner.of(phase, dataset).execute(run_dir, log=log)
        done = outcome.history["validation_accuracy"]
        curves[:len(done), rows] = done
        seconds += outcome.runner.seconds
        examples += outcome.runner.model_examples
    best = curves.max(0)
    summary = summarize(conds, config.widths, kind, level, widths, best, config.tolerance)
    run_dir.write_npz("results.npz", {"width": widths, "kind": kind, "level": level,
                                      "best_validation_accuracy": best,
                                      "validation_accuracy": curves})
    run_dir.write_json("summary.json", summary)
    _figure(summary, config.widths, run_dir)
    return {"summary": summary, "model_examples_per_second": examples / max(seconds, 1e-9)}


def summarize(conds, width_axis, kind, level, widths, best, tolerance) -> dict:
    out = {}
    for k, p in conds:
        curve = [float(best[(kind == k) & np.isclose(level, p) & (widths == w)].mean())
                 for w in width_axis]
        top = float(np.nanmax(curve))  # (NaN: a width whose every member diverged)
        needed = next((w for w, a in zip(width_axis, curve) if a >= top - tolerance), None)
        out[f"{k}_{p:g}"] = {"kind": k, "level": p, "best_validation_accuracy": curve,
                             "widths": list(width_axis), "max": top,
                             "width_to_reach_best": needed, "tolerance": tolerance}
    return out


def evidence(summary: dict) -> list[dict]:
    """Claim 1: noisy data gains more from capacity than real data (validation accuracy
    from the narrowest width to the best), and needs a larger width to get within
    `tolerance` of its best."""
    real = summary.get("real_0")
    if real is None:
        return []
    gain = lambda v: v["max"] - v["best_validation_accuracy"][0]
    lines = []
    for k in ("randX", "randY"):
        noisy = [v for v in summary.values() if v["kind"] == k]
        if not noisy:
            continue
        worst = max(noisy, key=lambda v: v["level"])
        lines.append({"claim": 1, "supports": bool(gain(worst) > gain(real)), "text": (
            f"capacity: from width {real['widths'][0]} to the best, validation accuracy rises "
            f"{gain(real):+.3f} on real data (to {real['max']:.3f}, within "
            f"{real['tolerance']:.0%} of it from width {real['width_to_reach_best']}) and "
            f"{gain(worst):+.3f} with {worst['level']:.0%} {k} (to {worst['max']:.3f}, from "
            f"width {worst['width_to_reach_best']})")})
    return lines


def _figure(summary: dict, widths, run_dir: RunDir) -> None:
    kinds = sorted({v["kind"] for v in summary.values() if v["kind"] != "real"}) or ["real"]
    fig, axes = new_figure(ncols=len(kinds))
    for ax, k in zip(axes, kinds):
        for v in summary.values():
            if v["kind"] in (k, "real"):
                ax.plot(widths, v["best_validation_accuracy"], marker="o",
                        label="real" if v["kind"] == "real" else f"{k} {v['level']:.0%}")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("hidden units per layer")
        ax.set_ylabel("best validation accuracy")
        ax.set_title(f"Capacity, {k} (Fig. 5)")
        ax.legend(fontsize=8)
    run_dir.save_figure(fig, "fig5_capacity.png")
