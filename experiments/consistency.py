"""E1 (Fig. 1): per-example misclassification across members after one epoch.

    memjax run consistency --preset cpu [--dataset mnist --data-dir ../shared/data]

Trains `members` MLPs (each its own initialization and data order) for one epoch on real
data, on randX and on randY, and records, for the same tracked training examples, the
fraction of members that misclassify each one. Real data should spread far more than the
binomial reference (consistently easy and consistently hard examples); noise should stay
close to it. Presets: smoke (seconds), cpu (100 x MLP 2x256, under 3 minutes on 2 cores),
paper (100 x MLP 2x4096, batch 128, full MNIST).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import jax
import numpy as np

from memjax.experiments.figures import new_figure
from memjax.config import (DataConfig, ModelConfig, TrainConfig, check_choices,
                          check_numbers, validate)
from memjax.data import data_shape, load_dataset
from memjax.data.noise import INPUT_NOISE_STATS
from memjax.keys import NOISE, host_rng, study_key
from memjax.errors import MemjaxError
from memjax.metrics.consistency import (binomial_reference, class_binomial_reference,
                                        misclassification_rate)
from memjax.measurements import Evaluation
from memjax.phase import Data, Phase
from memjax.results import RunDir
from memjax.runner import Runner

CONDITIONS = ("real", "randX", "randY")


# PAPER.md's experiment: `memjax reproduce` runs the studies that have one, in its order
EXPERIMENT = "E1"


@dataclass(frozen=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    tracked: int = 1000
    noise_fraction: float = 1.0
    input_noise_stats: str = "per_pixel"
    conditions: tuple[str, ...] = CONDITIONS


PAPER = Config(data=DataConfig(name="mnist"), model=ModelConfig(hidden=(4096, 4096)),
               train=TrainConfig(members=100))
PRESETS = {
    "smoke": replace(PAPER, data=DataConfig(train_size=1024, validation_size=256),
                     model=ModelConfig(hidden=(32, 32)),
                     train=replace(PAPER.train, members=4, batch_size=64), tracked=200),
    "cpu": replace(PAPER, data=DataConfig(), model=ModelConfig(hidden=(256, 256))),
    "paper": PAPER,
}


def check(config: Config) -> None:
    """The checks the config alone allows, before anything runs (MemjaxError)."""
    validate(config)
    check_numbers(config, positive=("tracked",), fractions=("noise_fraction",))
    check_choices("conditions", config.conditions, CONDITIONS)
    check_choices("input_noise_stats", (config.input_noise_stats,), INPUT_NOISE_STATS)



def tracked_examples(config: Config) -> np.ndarray:
    """The training examples whose misclassification is recorded (sorted indices)."""
    n = data_shape(config.data).train
    if config.tracked > n:
        raise MemjaxError(f"cannot track {config.tracked} examples of {n}")
    return np.sort(host_rng(config.data.data_seed, "tracked examples").choice(
        n, config.tracked, replace=False))


def phases(config: Config) -> list[Phase]:
    """Per condition: the members trained for `train.epochs` on the (noised) data, then
    evaluated on the tracked examples."""
    tracked, c = tracked_examples(config), len(config.conditions)
    return [Phase(condition, config.model, config.train,
                  Data(config.data, condition, config.noise_fraction, config.input_noise_stats),
                  desc=f"{condition} ({i + 1}/{c})",
                  measurements=(Evaluation("correct", on="train", every=None,
                                           per_example=True, indices=tracked),))
            for i, condition in enumerate(config.conditions)]


def run(config: Config, run_dir: RunDir) -> dict:
    check(config)
    dataset = load_dataset(config.data)
    tracked = tracked_examples(config)
    members = config.train.members
    arrays: dict[str, np.ndarray] = {"tracked_indices": tracked}
    summary: dict[str, dict] = {}
    seconds = model_examples = 0.0
    for i, phase in enumerate(phases(config)):
        condition = phase.data.noise
        outcome = Runner.of(phase, dataset).execute(run_dir)
        runner, correct = outcome.runner, outcome.final["correct"]
        seconds += runner.seconds
        model_examples += runner.model_examples
        labels = np.asarray(runner.y)[tracked]
        rate = misclassification_rate(correct)
        mean_error = float(rate.mean())
        key = jax.random.fold_in(study_key(config.train.seed, NOISE), i)
        reference = binomial_reference(key, mean_error, members=members,
                                       num_examples=config.tracked)
        class_reference = class_binomial_reference(
            jax.random.fold_in(key, 1), rate, labels, members=members,
            num_classes=dataset.num_classes)
        rate, reference, class_reference = map(np.asarray, (rate, reference, class_reference))
        arrays.update({f"correct_{condition}": np.asarray(correct),
                       f"misclassification_rate_{condition}": rate,
                       f"binomial_reference_{condition}": reference,
                       f"class_binomial_reference_{condition}": class_reference})
        summary[condition] = {
            "mean_error": mean_error,
            "std_misclassification_rate": float(rate.std()),
            "std_binomial_reference": float(reference.std()),
            "std_class_binomial_reference": float(class_reference.std()),
            "fraction_misclassified_by_90pct": float(np.mean(rate >= 0.9)),
            "fraction_misclassified_by_10pct_or_fewer": float(np.mean(rate <= 0.1)),
            "train_seconds": runner.seconds,
        }
        run_dir.log_metrics({"condition": condition, "epoch": 1, **summary[condition]})
    run_dir.write_npz("results.npz", arrays)
    run_dir.write_json("summary.json", summary)
    _figure(arrays, config.conditions, members, run_dir)
    return {"summary": summary, "model_examples_per_second": model_examples / max(seconds, 1e-9)}


def _figure(arrays: dict, conditions, members: int, run_dir: RunDir) -> None:
    fig, (ax,) = new_figure(width=6.0, height=4.2)
    for condition, color in zip(conditions, ("C0", "C1", "C2")):
        rate = np.sort(arrays[f"misclassification_rate_{condition}"])
        ax.plot(rate, color=color, label=condition)
        ax.plot(arrays[f"binomial_reference_{condition}"], color=color, ls="--", lw=1,
                label=f"{condition}: binomial reference")
        ax.plot(arrays[f"class_binomial_reference_{condition}"], color=color, ls=":", lw=1,
                label=f"{condition}: per-class binomial")
    ax.set_xlabel("tracked examples, sorted")
    ax.set_ylabel(f"fraction of {members} members misclassifying")
    ax.set_title("Per-example misclassification after one epoch (Fig. 1)")
    ax.legend(fontsize=8)
    run_dir.save_figure(fig, "fig1_consistency.png")


def evidence(summary: dict) -> list[dict]:
    """Claims 1 and 2 from the spread of per-example misclassification across members."""
    ratio = {c: v["std_misclassification_rate"] / max(v["std_binomial_reference"], 1e-9)
             for c, v in summary.items()}
    real = summary.get("real")
    if real is None:
        return []
    noise = {c: r for c, r in ratio.items() if c != "real"}
    shown = ", ".join(f"{c} x{r:.1f}" for c, r in noise.items())
    lines = [{"claim": 1, "supports": bool(ratio["real"] > 2 and all(
        ratio["real"] > 2 * r for r in noise.values())), "text": (
        f"consistency: the per-example misclassification rate spreads x{ratio['real']:.1f} "
        f"the binomial reference's std on real data ({real['std_misclassification_rate']:.3f} "
        f"against {real['std_binomial_reference']:.3f}); on noise: {shown or 'not run'}")}]
    easy, hard = (real["fraction_misclassified_by_10pct_or_fewer"],
                  real["fraction_misclassified_by_90pct"])
    # what independent, equally hard examples would give (normal approximation)
    z = (0.1 - real["mean_error"]) / max(real["std_binomial_reference"], 1e-9)
    expected = 0.5 * (1.0 + math.erf(z / math.sqrt(2.0)))
    lines.append({"claim": 2, "supports": bool(easy > 2 * expected + 0.01), "text": (
        f"consistency: after one epoch {easy:.1%} of real examples are misclassified by at "
        f"most 10 % of the members (independent examples of the same mean error "
        f"{real['mean_error']:.3f} would give {expected:.1%}) and {hard:.1%} by at least 90 %")})
    return lines
