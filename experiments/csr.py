"""E5 (Sec. 4, Fig. 9): critical sample ratio on the validation set, every epoch, for
networks trained on real data, random inputs (randX) and random labels (randY).

    memjax run csr --preset cpu [--dataset mnist --data-dir ../shared/data]

After every epoch, Langevin Adversarial Sample Search (LASS, the paper's alpha, beta, r)
looks for a point within L_inf distance r of each searched validation input that changes
the member's prediction; CSR is the fraction of inputs for which it finds one. Networks
fitted to noise have far more critical samples (a more complex decision boundary): CSR is
far higher for randX and randY than for real data, rising over the epochs and then levelling
off. The search runs as the authors' code ran it (`protocol`, see Config). Presets: smoke
(seconds), cpu (MLP 2x256 on 10k MNIST digits, 4 members, 8 epochs, 500 random validation
digits per epoch, under a minute on 2 cores), paper (the paper's CNN on CIFAR-10, 60
epochs, 500 random validation images per epoch, 5 members per condition: the figure shows
their mean and range where the paper plots one run; trained in bf16 compute with float32
weights, searched and evaluated in float32; GPU, `memjax plan` tells how long).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from memjax.config import (DataConfig, ModelConfig, TrainConfig, check_choices,
                          check_numbers, validate)
from memjax.data import load_dataset
from memjax.errors import MemjaxError
from memjax.experiments.figures import new_figure
from memjax.metrics import PAPER_LASS, PROTOCOLS
from memjax.measurements import CriticalSamples, Evaluation
from memjax.phase import Data, Phase
from memjax.results import RunDir
from memjax.runner import Runner

CONDITIONS = ("real", "randX", "randY")


# PAPER.md's experiment: `memjax reproduce` runs the studies that have one, in its order
EXPERIMENT = "E5"


@dataclass(frozen=True)
class Config:
    """protocol: how LASS searches (memjax.metrics.PROTOCOLS). "authors" (the authors'
    code and CSR callback): `examples` validation images drawn afresh at random every epoch
    (they drew 500), no clip to the pixel range, each member's search over all of them
    stopping after the first iteration that adds fewer than 20 critical samples, and
    radius, step_size and noise_scale scaled by the range of the validation images as the
    authors preprocessed them (memjax.metrics.authors_scale: 1.0 on MNIST, 1.158 on
    CIFAR-10); validation accuracy on the whole validation split. "exhaustive": the first `examples` validation
    images (None: all), searched for all `max_iterations` inside the pixel range, in chunks
    of `lass_chunk` (each stops early alone once every example is decided). radius,
    step_size, noise_scale: LASS r, alpha, beta in [0, 1] pixel units (default: the paper's
    0.3, 0.25 and 0.2 on the 0-255 scale)."""

    data: DataConfig = field(default_factory=lambda: DataConfig(train_size=10_000))
    model: ModelConfig = field(default_factory=lambda: ModelConfig(hidden=(256, 256)))
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        members=4, epochs=8, learning_rate=0.05))
    conditions: tuple[str, ...] = CONDITIONS
    noise_fraction: float = 1.0
    examples: int | None = 300
    radius: float = PAPER_LASS["radius"]
    step_size: float = PAPER_LASS["step_size"]
    noise_scale: float = PAPER_LASS["noise_scale"]
    max_iterations: int = 20
    lass_chunk: int | None = None
    protocol: str = "authors"


PAPER = Config(data=DataConfig(name="cifar10", train_size=None),
               model=ModelConfig(kind="cnn", conv_channels=200, batchnorm=True),
               train=TrainConfig(members=5, epochs=60, learning_rate=0.01, momentum=0.9,
                                 lr_halving_epochs=15, eval_chunk=1000,
                                 compute_dtype="bfloat16"),
               examples=500, max_iterations=PAPER_LASS["max_iterations"], lass_chunk=1000)
PRESETS = {
    "smoke": replace(PAPER, data=DataConfig(train_size=512, validation_size=128),
                     model=ModelConfig(hidden=(32,)),
                     train=TrainConfig(members=2, epochs=2, batch_size=64,
                                       learning_rate=0.05),
                     examples=64, max_iterations=5, lass_chunk=None),
    # the Config() defaults
    "cpu": replace(PAPER, data=DataConfig(train_size=10_000),
                   model=ModelConfig(hidden=(256, 256)),
                   train=TrainConfig(members=4, epochs=8, learning_rate=0.05),
                   max_iterations=PAPER_LASS["max_iterations"], lass_chunk=None),
    "paper": PAPER,
}


def check(config: Config) -> None:
    """The checks the config alone allows, before anything runs (MemjaxError)."""
    validate(config)
    check_numbers(config, positive=("examples", "max_iterations", "lass_chunk"),
                  nonnegative=("radius", "step_size", "noise_scale"),
                  fractions=("noise_fraction",))
    check_choices("conditions", config.conditions, CONDITIONS)
    check_choices("protocol", (config.protocol,), tuple(PROTOCOLS))


def phases(config: Config) -> list[Phase]:
    """Per condition: the members trained for `train.epochs`, and after each epoch the LASS
    search on validation inputs and the validation accuracy (on the `examples` searched
    unless the protocol is the authors')."""
    c, authors = len(config.conditions), config.protocol == "authors"
    return [Phase(condition, config.model, config.train,
                  Data(config.data, condition, config.noise_fraction),
                  desc=f"{condition} ({i + 1}/{c})", measurements=(
                      CriticalSamples("csr", protocol=config.protocol, examples=config.examples,
                                      radius=config.radius, step_size=config.step_size,
                                      noise_scale=config.noise_scale,
                                      max_iterations=config.max_iterations,
                                      chunk=config.lass_chunk, stream=(i,),
                                      iterations="lass_iterations"),
                      Evaluation("validation_accuracy", on="validation",
                                 examples=None if authors else config.examples)))
            for i, condition in enumerate(config.conditions)]


def run(config: Config, run_dir: RunDir) -> dict:
    check(config)
    dataset = load_dataset(config.data)
    if config.examples is not None and config.examples > len(dataset.validation):
        raise MemjaxError(f"examples={config.examples} is more than the "
                          f"{len(dataset.validation)} validation images (None: all of them)")
    searched = config.examples or len(dataset.validation)
    arrays: dict[str, np.ndarray] = {}
    summary: dict[str, dict] = {}
    seconds = model_examples = 0.0
    for phase in phases(config):
        condition = phase.data.noise

        def log(epoch, record, condition=condition):
            return {"condition": condition, "epoch": epoch, "csr": float(record["csr"].mean()),
                    "validation_accuracy": float(record["validation_accuracy"].mean()),
                    "train_accuracy": float(np.mean(record["train_accuracy"]))}

        outcome = Runner.of(phase, dataset).execute(run_dir, log=log)
        runner, history = outcome.runner, outcome.history
        seconds += runner.seconds
        model_examples += runner.model_examples
        history.pop("train_loss")
        history["lass_iterations"] = history["lass_iterations"] / (runner.member_count * searched)
        for name, values in history.items():
            arrays[f"{name}_{condition}"] = values  # [epochs, M] (iterations: [epochs])
        summary[condition] = {**_summary(arrays, condition), "protocol": config.protocol,
                              # what was searched each epoch (None: the whole validation split)
                              "examples_searched": int(searched),
                              "lass_scale": phase.measurements[0].scale(dataset)}
    arrays["epochs"] = np.arange(1, config.train.epochs + 1)
    run_dir.write_npz("results.npz", arrays)
    run_dir.write_json("summary.json", summary)
    _figure(arrays, config.conditions, run_dir)
    return {"summary": summary, "model_examples_per_second": model_examples / max(seconds, 1e-9)}


def _summary(arrays: dict, condition: str) -> dict:
    """A condition's CSR at its first and last epoch and at its highest epoch mean, and its
    accuracies after the last epoch (means over members)."""
    csr = arrays[f"csr_{condition}"]
    return {"csr_first_epoch": float(csr[0].mean()), "csr_last_epoch": float(csr[-1].mean()),
            "csr_max_epoch_mean": float(csr.mean(1).max()),
            "validation_accuracy_last": float(arrays[f"validation_accuracy_{condition}"][-1].mean()),
            "train_accuracy_last": float(arrays[f"train_accuracy_{condition}"][-1].mean())}


def _figure(arrays: dict, conditions, run_dir: RunDir) -> None:
    fig, axes = new_figure(ncols=2)
    for condition in conditions:
        csr = arrays[f"csr_{condition}"]
        line, = axes[0].plot(arrays["epochs"], csr.mean(1), marker="o", ms=3, label=condition)
        axes[0].fill_between(arrays["epochs"], csr.min(1), csr.max(1), alpha=0.2,
                             color=line.get_color())
        axes[1].plot(arrays["epochs"], arrays[f"validation_accuracy_{condition}"].mean(1),
                     color=line.get_color(), label=f"{condition} validation")
        axes[1].plot(arrays["epochs"], arrays[f"train_accuracy_{condition}"].mean(1),
                     color=line.get_color(), ls="--", label=f"{condition} train")
    axes[0].set_xlabel("epoch")
    axes[0].set_ylabel("critical sample ratio (validation)")
    axes[0].set_title("Critical samples per epoch (Fig. 9)")
    axes[0].legend(fontsize=8)
    axes[1].set_xlabel("epoch")
    axes[1].set_ylabel("accuracy")
    axes[1].set_title("Accuracy per epoch")
    axes[1].legend(fontsize=7)
    run_dir.save_figure(fig, "fig9_csr.png")


def evidence(summary: dict) -> list[dict]:
    """Claim 1: noise has far more critical samples than real data (validation CSR)."""
    if "real" not in summary:
        return []
    real = summary["real"]["csr_last_epoch"]
    lines = []
    for condition in ("randX", "randY"):
        if condition in summary:
            noise = summary[condition]["csr_last_epoch"]
            lines.append({"claim": 1, "supports": bool(noise > real), "text": (
                f"csr: validation CSR at the last epoch is {noise:.3f} for {condition} against "
                f"{real:.3f} on real data (x{noise / max(real, 1e-9):.1f})")})
    return lines
