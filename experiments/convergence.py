"""E4 (Fig. 6): epochs to 100 % training accuracy (a) against width, (b) against dataset
size, one curve per input-noise level (fraction of inputs replaced by Gaussian noise).

    memjax run convergence --preset cpu [--dataset mnist --data-dir ../shared/data]

Each member trains on its own view (width mask, example mask, randX fraction); after every
epoch its accuracy on its own training set is measured, the first epoch at or above
`threshold` recorded and the member frozen (learning rate 0). Members still below it at the
epoch cap are censored: reported as "> cap", never as converged. The loop stops when every
member has converged. Part (a) runs in width buckets, part (b) one dataset size at a time
(an epoch as long as the size), and the cell both parts share (width_for_sizes, all
examples) once. Noise should slow convergence far more, grow faster with dataset size and
benefit more from capacity.
Presets: smoke (seconds); cpu (2000 embedded MNIST examples, widths 32..512, sizes
250..2000 at width 512, randX 0 / 0.4 / 0.8, lr 0.1, cap 80 epochs: ~5 minutes on 2 cores);
paper (MNIST 50k, widths 16..4096, sizes 5k..50k at 4096, SGD lr 0.01, cap 1000 epochs).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from memjax import convergence
from memjax.config import DataConfig, ModelConfig, TrainConfig, check_numbers, validate
from memjax.data import data_shape, load_dataset
from memjax.errors import MemjaxError
from memjax.experiments.figures import new_figure
from memjax.experiments.sweeps import (check_sweep_members, check_width_sweep, grid,
                                      width_buckets, width_model)
from memjax.results import RunDir
from memjax.measurements import Convergence
from memjax.members import Members
from memjax.phase import Data, Phase
from memjax.runner import Runner
from memjax.views import size_masks


# PAPER.md's experiment: `memjax reproduce` runs the studies that have one, in its order
EXPERIMENT = "E4"


@dataclass(frozen=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(members=1, epochs=1000))
    seeds: int = 1  # members per sweep cell, each its own initialization and data order
    widths: tuple[int, ...] = (16, 64, 256, 1024, 4096)
    sizes: tuple[int, ...] = (5000, 10000, 20000, 50000)
    width_for_sizes: int = 4096
    noise_levels: tuple[float, ...] = (0.0, 0.2, 0.4, 0.6, 0.8)
    threshold: float = 1.0
    bucket_limits: tuple[int, ...] = (256, 1024, 4096)


PAPER = Config(data=DataConfig(name="mnist"), model=ModelConfig(hidden=(4096, 4096)),
               train=TrainConfig(members=1, epochs=1000))
PRESETS = {
    "smoke": replace(PAPER, data=DataConfig(train_size=128, validation_size=16),
                     model=ModelConfig(hidden=(64, 64)),
                     train=replace(PAPER.train, epochs=12, batch_size=32,
                                   learning_rate=0.1),
                     widths=(4, 64), sizes=(64, 128), width_for_sizes=64,
                     noise_levels=(0.0, 0.5), bucket_limits=(64,)),
    "cpu": replace(PAPER, data=DataConfig(train_size=2000),
                   model=ModelConfig(hidden=(512, 512)),
                   train=replace(PAPER.train, epochs=80, learning_rate=0.1),
                   widths=(32, 64, 128, 256, 512), sizes=(250, 500, 1000, 2000),
                   width_for_sizes=512, noise_levels=(0.0, 0.4, 0.8),
                   bucket_limits=(128, 512)),
    "paper": PAPER,
}


def check(config: Config) -> None:
    """The checks the config alone allows, before anything runs (MemjaxError)."""
    validate(config)
    check_numbers(config, positive=("widths", "sizes", "width_for_sizes", "seeds"),
                  fractions=("noise_levels", "threshold"), nonempty=("widths", "sizes"),
                  distinct=("widths", "sizes", "noise_levels", "bucket_limits"))
    check_sweep_members(config)
    check_width_sweep(config.model, "convergence")



def cells(config: Config, n: int) -> dict[str, np.ndarray]:
    """One row per member: part (width / size), width, training set size, noise level. Part
    (b)'s cell at all n examples is part (a)'s at width_for_sizes when that width is swept:
    those members serve both curves (`summarize` selects by width and size, not by part)."""
    if max(config.widths + (config.width_for_sizes,)) > max(config.model.hidden):
        raise MemjaxError(f"widths must be in 1..{max(config.model.hidden)} (model.hidden)")
    if max(config.sizes) > n:
        raise MemjaxError(f"dataset sizes must be at most the {n} training examples")
    reps = list(range(config.seeds))
    shared = config.width_for_sizes in config.widths
    a = grid(x=list(config.widths), level=list(config.noise_levels), repeat=reps)
    b = grid(x=[s for s in config.sizes if not (shared and s == n)],
             level=list(config.noise_levels), repeat=reps)
    m_a, m_b = len(a["x"]), len(b["x"])
    return {"part": np.array(["width"] * m_a + ["size"] * m_b),
            "width": np.concatenate([a["x"], np.full(m_b, config.width_for_sizes)]).astype(int),
            "size": np.concatenate([np.full(m_a, n), b["x"]]).astype(int),
            "level": np.concatenate([a["level"], b["level"]]).astype(float)}


def ensembles(config: Config, table: dict, n: int) -> list[tuple[str, ModelConfig,
                                                                    Members]]:
    """Part (a)'s width buckets, then part (b) one dataset size at a time (an epoch of a
    phase is as long as its largest member's training set): (name, masked model, Members;
    their ids are their rows)."""
    m_a = int(np.sum(table["part"] == "width"))
    buckets = [(f"width {w}", w, rows) for w, rows in width_buckets(table["width"][:m_a],
                                                                  config.bucket_limits)]
    size_rows = np.arange(m_a, len(table["part"]))
    buckets += [(f"size {s}", config.width_for_sizes, size_rows[table["size"][size_rows] == s])
                for s in dict.fromkeys(table["size"][size_rows].tolist())]
    out = []
    for name, model_width, rows in buckets:
        masks = size_masks(table["size"][rows], n, config.data.data_seed)
        out.append((name, width_model(config.model, model_width),
                    Members(rows, widths=table["width"][rows], input_noise=table["level"][rows],
                            example_mask=None if masks.all() else masks)))
    return out


def phases(config: Config) -> list[Phase]:
    """Per ensemble: its members trained until each reaches `threshold` accuracy on its
    own training set, measured after every epoch, for at most `train.epochs`."""
    n = data_shape(config.data).train
    return [Phase(name.replace(" ", "-"), model, config.train, Data(config.data), members,
                  desc=name, measurements=(Convergence(config.threshold),))
            for name, model, members in ensembles(config, cells(config, n), n)]


def run(config: Config, run_dir: RunDir) -> dict:
    check(config)
    dataset = load_dataset(config.data)
    n = len(dataset.train)
    table = cells(config, n)
    part, widths, sizes, levels = (table[k] for k in ("part", "width", "size", "level"))
    first = np.full(len(widths), convergence.NOT_CONVERGED)
    curves = np.full((config.train.epochs, len(widths)), np.nan)
    seconds = examples = 0.0
    for phase in phases(config):
        rows = phase.members.ids

        def log(epoch, record, rows=rows):
            return {"members": rows.tolist(), "epoch": epoch,
                    "train_accuracy": record["train_accuracy"].tolist(),
                    "converged": int((record["first_epoch"] != convergence.NOT_CONVERGED).sum())}

        outcome = Runner.of(phase, dataset).execute(run_dir, log=log)
        runner, history = outcome.runner, outcome.history
        done = history["train_accuracy"]
        curves[:len(done), rows] = done
        first[rows] = history["first_epoch"][-1]
        seconds += runner.seconds
        examples += runner.model_examples
    result = convergence.epochs_to_converge(first, config.train.epochs)
    summary = summarize(part, widths, sizes, levels, result, config)
    run_dir.write_npz("results.npz", {"part": part, "width": widths, "size": sizes,
                                      "level": levels, "first_epoch": first,
                                      "censored": result["censored"],
                                      "train_accuracy": curves})
    run_dir.write_json("summary.json", summary)
    _figure(summary, run_dir)
    return {"summary": summary, "model_examples_per_second": examples / max(seconds, 1e-9)}


def summarize(part, widths, sizes, levels, result, config: Config) -> dict:
    """Per part and noise level: median epochs to converge per x value (censored members
    count as the cap, a lower bound, and are counted separately). A point is the members of
    its cell, (width x, all examples) or (width_for_sizes, x examples), whichever part ran
    them."""
    cap = config.train.epochs
    out = {"cap": cap, "threshold": config.threshold}
    full = sizes[part == "width"].max()
    for name, xs in (("width", config.widths), ("size", config.sizes)):
        for p in config.noise_levels:
            med, cens = [], []
            for x in xs:
                cell = ((widths == x) & (sizes == full) if name == "width"
                        else (widths == config.width_for_sizes) & (sizes == x))
                sel = cell & np.isclose(levels, p)
                epochs = np.where(result["censored"][sel], cap, result["epochs"][sel])
                med.append(float(np.median(epochs)))
                cens.append(int(result["censored"][sel].sum()))
            out[f"{name}_{p:g}"] = {"part": name, "level": p, "x": list(xs),
                                    "median_epochs": med, "censored": cens,
                                    "members_per_point": int(sel.sum())}
    return out


def _fmt(epochs: float, censored: int, cap: int) -> str:
    return f"> {cap} (censored)" if censored else f"{epochs:g}"


def evidence(summary: dict) -> list[dict]:
    """Claim 1: noise slows convergence, more so with more data and less capacity."""
    cap = summary["cap"]
    curves = {k: v for k, v in summary.items() if isinstance(v, dict)}
    lines = []
    for name, what in (("width", "width"), ("size", "examples")):
        own = sorted((v for v in curves.values() if v["part"] == name), key=lambda v: v["level"])
        if len(own) < 2:
            continue
        clean, noisy = own[0], own[-1]
        # at the largest width / size
        c, nz = clean["median_epochs"][-1], noisy["median_epochs"][-1]
        slower = nz > c
        text = (f"convergence: at {what} {clean['x'][-1]}, {clean['level']:.0%} input noise "
                f"reaches {summary['threshold']:.0%} training accuracy in "
                f"{_fmt(c, clean['censored'][-1], cap)} epochs, {noisy['level']:.0%} in "
                f"{_fmt(nz, noisy['censored'][-1], cap)}")
        if name == "size":
            grow = lambda v: v["median_epochs"][-1] / max(v["median_epochs"][0], 1)
            slower = slower and grow(noisy) > grow(clean)
            text += (f"; from {clean['x'][0]} to {clean['x'][-1]} examples epochs grow "
                     f"x{grow(clean):.1f} without noise and x{grow(noisy):.1f}"
                     f"{' (at least)' if noisy['censored'][-1] else ''} with it")
        else:
            gain = lambda v: v["median_epochs"][0] - v["median_epochs"][-1]
            slower = slower and gain(noisy) >= gain(clean)
            text += (f"; widening from {clean['x'][0]} saves {gain(clean):g} epochs without "
                     f"noise and {gain(noisy):g} with it")
        # both censored at the cap: the run cannot tell which is slower
        inconclusive = clean["censored"][-1] and noisy["censored"][-1]
        lines.append({"claim": 1, "supports": None if inconclusive else bool(slower),
                      "text": text + (" (inconclusive: raise the epoch cap)" if inconclusive
                                      else "")})
    return lines


def _figure(summary: dict, run_dir: RunDir) -> None:
    fig, axes = new_figure(ncols=2)
    for ax, name, label in ((axes[0], "width", "hidden units per layer"),
                            (axes[1], "size", "training examples")):
        for v in summary.values():
            if isinstance(v, dict) and v["part"] == name:
                line, = ax.plot(v["x"], v["median_epochs"], marker="o",
                                label=f"input noise {v['level']:.0%}")
                cens = [x for x, c in zip(v["x"], v["censored"]) if c]
                if cens:
                    ax.scatter(cens, [summary["cap"]] * len(cens), marker="^", s=90,
                               facecolors="none", edgecolors=line.get_color(), zorder=3)
        ax.set_xscale("log", base=2)
        ax.set_xlabel(label)
        ax.set_ylabel(f"epochs to {summary['threshold']:.0%} training accuracy")
        ax.set_title(f"Fig. 6{'a' if name == 'width' else 'b'}: vs {label} "
                     f"(^ censored at {summary['cap']})", fontsize=10)
        ax.legend(fontsize=8)
    run_dir.save_figure(fig, "fig6_convergence.png")
