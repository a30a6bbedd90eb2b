"""Memorization and influence estimates (Feldman & Zhang, NeurIPS 2020), with training
dynamics, for every training example.

    memjax run memorization --preset cpu [--dataset mnist --data-dir ../shared/data]

`members` MLPs train on balanced random subsets holding `fraction` of the training set (each
example in exactly round(fraction * members) of them: memjax.metrics.balanced_masks), with
training-dynamics records on. Then, for each training example, memorization = accuracy of
the members that trained on it minus that of those that did not; for each validation
example, the `influence_top` training examples of largest influence on it; and from the
records, forgetting events, AUM and data-map coordinates averaged over the members that
trained on the example. With `label_noise`, that fraction of the training labels is
replaced by random ones (randY) before training and the noisy mask saved, so the scores can
be judged by how well they find the mislabeled examples (AUC). Presets: smoke (seconds),
cpu (the embedded 10k MNIST with 10 % label noise, 32 of the anchor's MLPs for 20 epochs,
about 2 minutes on 2 cores), paper
(google-research/heldout-influence-estimation's MNIST example: 2000 MLPs 784-512-256-10 on
random 70 % subsets of the 60,000 official training images, SGD momentum 0.9, learning
rate 0.1, batch 128, 10 epochs; influence on the 10,000 test images).

Differs from that example: its subsets are exactly int(0.7 * N) uniformly drawn examples
per run; here they are balanced (each example in- and out- of the same number of members).
Its MLP is stax's (Glorot-normal weights); memjax's initializes as in the paper's studies.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from memjax.config import DataConfig, ModelConfig, TrainConfig, check_numbers, validate
from memjax import dynamics
from memjax.data import load_dataset
from memjax.errors import MemjaxError
from memjax.experiments.example_scores import detection_auc, spread, write_example_scores
from memjax.experiments.figures import example_figure, new_figure
from memjax.experiments.sweeps import CIFAR10, CIFAR10_CPU, CPU_WIDTH, epoch_means
from memjax.metrics import (balanced_masks, holdout_consistency, influence, members_holding,
                            memorization)
from memjax.measurements import Dynamics, Evaluation
from memjax.phase import Data, Phase
from memjax.recipes import resnet9_cifar10
from memjax.results import RunDir
from memjax.members import Members
from memjax.runner import Runner


# No experiment of PAPER.md: `memjax reproduce` runs it only when named (--only)
EXPERIMENT = None


@dataclass(frozen=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    fraction: float = 0.7
    label_noise: float = 0.0
    influence_top: int = 8  # training examples kept per validation example
    mask_seed: int = 0
    per_class: int = 6  # examples shown at each end of a class in the figure
    # each member's validation accuracy after every epoch too (summary's `curves`)
    validation_curve: bool = False


# heldout-influence-estimation, mnist-example/mnist_infl_mem.py
PAPER = Config(data=DataConfig(name="mnist", test_as_validation=True),
               model=ModelConfig(hidden=(512, 256)),
               train=TrainConfig(members=2000, epochs=10, batch_size=128, learning_rate=0.1,
                                 momentum=0.9, record_dynamics=True))
_RN9 = resnet9_cifar10(members=2000, epochs=20, compute_dtype="bfloat16",
                       record_dynamics=True)
# members must fit the relabeled examples to memorize them: no augmentation or label
# smoothing, 24 epochs (with cscore's 8 epochs and augmentation they fit a third); im2col
# trains ResNet-9 some 7x faster than lax.conv on a CPU (docs/studies.md)
_RN9_CPU = resnet9_cifar10(width=CPU_WIDTH, members=16, epochs=24, batch_size=32,
                           learning_rate=0.1, record_dynamics=True, label_smoothing=0.0,
                           augment_flip=False, augment_crop=0, augment_cutout=0,
                           conv_form="im2col")
PRESETS = {
    "smoke": replace(PAPER, data=DataConfig(train_size=1024, validation_size=256),
                     model=ModelConfig(hidden=(32,)),
                     train=replace(PAPER.train, members=8, epochs=2), label_noise=0.1,
                     influence_top=3, per_class=3),
    # 20 epochs: in 10 the members fit too few of the relabeled examples to memorize them
    "cpu": replace(PAPER, data=DataConfig(), train=replace(PAPER.train, members=32, epochs=20),
                   label_noise=0.1),
    "paper": PAPER,
    # Feldman & Zhang's protocol (2000 models on 70 % subsets, influence on the test
    # set) with ResNet-9 on CIFAR-10 as ffcv trains it (memjax.recipes), bf16
    "cifar": replace(PAPER, data=CIFAR10, model=_RN9[0], train=_RN9[1]),
    "gpu": replace(PAPER, data=CIFAR10, model=_RN9[0],
                   train=replace(_RN9[1], members=16, epochs=10, warmup_epochs=2),
                   label_noise=0.1),
    # a narrow ResNet-9 on 2,000 CIFAR-10 images with 10 % random labels, float32
    "cifar-cpu": replace(PAPER, data=replace(CIFAR10_CPU, train_size=2000), model=_RN9_CPU[0],
                         train=_RN9_CPU[1], label_noise=0.1, per_class=3,
                         validation_curve=True),
}


def check(config: Config) -> None:
    """The checks the config alone allows, before anything runs (MemjaxError)."""
    validate(config)
    check_numbers(config, positive=("influence_top", "per_class"),
                  fractions=("fraction", "label_noise"), seeds=("mask_seed",))
    k = members_holding(config.fraction, config.train.members)
    if not 0 < k < config.train.members:
        raise MemjaxError(f"fraction {config.fraction} of {config.train.members} members puts "
                          f"each example in {k} of them: memorization needs members that "
                          f"train on it and members that do not")


def _members(config: Config, n: int) -> Members:
    """Every member on its balanced `fraction` of the n training examples."""
    return Members(np.arange(config.train.members),
                   example_mask=balanced_masks(config.train.members, n, config.fraction,
                                               seed=config.mask_seed))


def phases(config: Config) -> list[Phase]:
    """The members, each on its subset of the (relabeled) training set, evaluated on the
    training and validation sets at the end (and their training dynamics when recorded)."""
    measurements = (Evaluation("correct", on="train", every=None, per_example=True),
                    Evaluation("correct_validation", on="validation", every=None,
                               per_example=True))
    if config.validation_curve:
        measurements += (Evaluation("validation_accuracy", on="validation"),)
    if config.train.record_dynamics:
        measurements += (Dynamics(),)
    data = Data(config.data, "randY" if config.label_noise else "real", config.label_noise)
    return [Phase("subsets", config.model, config.train, data,
                  _members(config, data.shape().train), measurements=measurements)]


def run(config: Config, run_dir: RunDir) -> dict:
    check(config)
    dataset = load_dataset(config.data)
    (phase,) = phases(config)
    train, _ = phase.data.split(dataset)
    n, members = len(train), config.train.members
    if config.influence_top > n:
        raise MemjaxError(f"influence_top {config.influence_top} is more than the {n} "
                          f"training examples")
    mask = phase.members.example_mask
    logged = ("train_loss", "train_accuracy") + (("validation_accuracy",)
                                                 if config.validation_curve else ())
    outcome = Runner.of(phase, dataset).execute(run_dir, log=lambda epoch, record: {
        "epoch": epoch, **{k: float(np.mean(record[k])) for k in logged}})
    runner, correct = outcome.runner, outcome.final["correct"]
    validation, correct_val = dataset.validation, outcome.final["correct_validation"]
    top = influence(mask, correct_val, config.influence_top)
    scores = _example_scores(outcome.final, mask, correct, train.noisy)
    m = scores["memorization"]
    summary = {"order": dataset.order, "members": members, "fraction": config.fraction,
               "mean_subset_size": float(mask.sum(1).mean()),
               "validation_accuracy": float(np.asarray(correct_val).mean()),
               "train_seconds": runner.seconds,
               "memorization": {**spread(m, (50, 90, 99)), "above_0.5": float(np.mean(m > 0.5))},
               "label_noise": config.label_noise, "noisy_examples": int(train.noisy.sum())}
    if config.validation_curve:
        summary["curves"] = epoch_means(outcome.history)
    if train.noisy.any():
        summary["label_noise_auc"] = {
            name: detection_auc(sign * scores[key], train.noisy)
            for name, key, sign in (("memorization", "memorization", 1.0),
                                    ("heldout_accuracy (low)", "heldout_accuracy", -1.0),
                                    ("aum (low)", "aum", -1.0),
                                    ("forgetting (Toneva ranking)", "forgetting_rank", 1.0))
            if key in scores}
    run_dir.write_npz("results.npz", {"included": mask, "correct": correct,
                                      "correct_validation": np.asarray(correct_val),
                                      "noisy": train.noisy, "index": train.index})
    write_example_scores(run_dir, "memorization", train, dataset.order["train"], scores)
    _write_influence(run_dir, top, train, validation, dataset.order)
    run_dir.write_json("summary.json", summary)
    example_figure(run_dir, "fig_memorization_examples.png", train, scores["memorization"],
                   "memorization", config.per_class)
    if train.noisy.any():
        _noise_figure(scores, train.noisy, run_dir)
    return {"summary": summary,
            "model_examples_per_second": runner.model_examples / max(runner.seconds, 1e-9)}


def _example_scores(final: dict, mask: np.ndarray, correct: np.ndarray,
                    noisy: np.ndarray) -> dict[str, np.ndarray]:
    """Per training example [N]: memorization and held-out accuracy from the masks and
    correctness, the noisy mask, and (when recorded) the training-dynamics scores averaged
    over the members that trained on the example (first_learned_epoch: over those that
    learned it, NaN if none did; never_learned: the fraction that did not)."""
    scores = {"memorization": np.asarray(memorization(mask, correct)),
              "heldout_accuracy": np.asarray(holdout_consistency(mask, correct)),
              "noisy": noisy}
    if "aum" in final:  # (the training dynamics: memjax.measurements.Dynamics)
        raw = {k: final[k] for k in Dynamics().outputs}
        # Toneva et al. rank an example a member never learned as forgotten at every
        # presentation (mtoneva/example_forgetting)
        raw["forgetting_rank"] = np.where(raw["never_learned"], raw["presentations"],
                                          raw["forgetting_events"])
        means = dynamics.member_means(raw)
        scores.update({k: means[f"{k}_mean"] for k in (
            "aum", "forgetting_events", "forgetting_rank", "never_learned", "confidence",
            "variability", "correctness", "first_learned_epoch")})
    return scores


def _write_influence(run_dir: RunDir, top, train, validation, order: dict) -> None:
    """influence.npz ([T, k] values and training rows, with both splits' original indices)
    and influence.csv (one row per validation example and rank)."""
    values, rows = np.asarray(top.values), np.asarray(top.indices)
    t, k = values.shape
    run_dir.write_npz("influence.npz", {
        "validation_index": validation.index, "validation_label": validation.y,
        "train_row": rows, "train_index": train.index[rows], "train_label": train.y[rows],
        "influence": values, "order_train": np.array(order["train"]),
        "order_validation": np.array(order["validation"])})
    run_dir.write_csv("influence.csv", {
        "validation_index": np.repeat(validation.index, k),
        "validation_label": np.repeat(validation.y, k), "rank": np.tile(np.arange(1, k + 1), t),
        "train_index": train.index[rows].ravel(), "train_label": train.y[rows].ravel(),
        "influence": values.ravel()})


def _noise_figure(scores: dict, noisy: np.ndarray, run_dir: RunDir) -> None:
    names = [n for n in ("memorization", "aum", "forgetting_events") if n in scores]
    fig, axes = new_figure(ncols=len(names), width=3.8)
    for ax, name in zip(axes, names):
        values = scores[name]
        for flag, label in ((False, "clean"), (True, "noisy label")):
            v = values[(noisy == flag) & np.isfinite(values)]
            ax.hist(v, bins=30, alpha=0.6, density=True, label=label)
        ax.set_xlabel(name)
    axes[0].set_ylabel("density")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"Scores of clean and relabeled training examples ({np.mean(noisy):.0%} of "
                 "the labels replaced)")
    run_dir.save_figure(fig, "fig_label_noise.png")


def evidence(summary: dict) -> list[dict]:
    """How memorization spreads, and, with injected label noise, how well each score finds
    the mislabeled examples (AUC; claim None: no claim of the paper is judged)."""
    m = summary["memorization"]
    lines = [{"claim": None, "supports": None, "text": (
        f"memorization: mean {m['mean']:.3f}, {m['above_0.5']:.1%} of training examples "
        f"above 0.5 (99th percentile {m['q99']:.3f})")}]
    aucs = summary.get("label_noise_auc")
    if aucs:
        shown = ", ".join(f"{k} {v:.3f}" for k, v in aucs.items())
        lines.append({"claim": None, "supports": None, "text": (
            f"memorization: with {summary['noisy_examples']} randomly relabeled training "
            f"examples ({summary['label_noise']:.0%}), the AUC with which each score finds "
            f"them: {shown}")})
    return lines
