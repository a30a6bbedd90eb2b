"""C-score (Jiang et al., ICLR 2021): each training example's expected accuracy under models
trained on random subsets that hold it out, averaged over subset ratios.

    memjax run cscore --preset cpu [--dataset mnist --data-dir ../shared/data]

For each subset ratio s, `seeds` MLPs train on balanced random subsets (every example in
exactly round(s * seeds) of them: memjax.metrics.balanced_masks), one ensemble per ratio.
Each member is then evaluated on the whole training set; an example's held-out accuracy at
ratio s is the accuracy of the members that did not train on it, and its C-score the mean
over ratios (memjax.metrics.cscore). With `one_epoch_members`, an ensemble trained for one
epoch on all the data gives E1's difficulty (the fraction of members misclassifying each
example) for comparison. Presets: smoke (seconds), cpu (the embedded 10k MNIST, the
anchor's MLP and training, ratios 0.1 ... 0.9 in steps of 0.2 x 20 members, about 3 minutes
on 2 cores), paper (pluskid/structural-regularity's mnist.py: ratios 0.1 ... 0.9 x
200 MLPs 784-512-256-10, SGD momentum 0.9, learning rate 0.1, batch 128, 10 epochs, on all
60,000 official MNIST training images).

Differs from that script: its runs take exactly int(s * N) uniformly drawn examples each;
here the masks are balanced (each member holds about s * N), so that every example is held
out by the same number of members at each ratio. Its MLP is stax's (Glorot-normal weights);
memjax's MLP initializes as the paper's studies do (memjax.models).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
import numpy as np

from memjax.config import (DataConfig, ModelConfig, TrainConfig, check_numbers, validate)
from memjax.data import load_dataset
from memjax.errors import MemjaxError
from memjax.experiments.example_scores import spearman, spread, write_example_scores
from memjax.experiments.figures import example_figure, new_figure
from memjax.experiments.sweeps import (CIFAR10, CIFAR10_CPU, CPU_EPOCHS, CPU_WIDTH,
                                       check_sweep_members, epoch_means)
from memjax.metrics import balanced_masks, cscore, holdout_consistency, members_holding
from memjax.metrics.consistency import misclassification_rate
from memjax.measurements import Evaluation
from memjax.phase import Data, Phase
from memjax.recipes import resnet9_cifar10
from memjax.results import RunDir
from memjax.members import Members
from memjax.runner import Runner

# the anchor's MNIST demo (pluskid/structural-regularity, mnist.py)
ANCHOR_TRAIN = TrainConfig(members=1, epochs=10, batch_size=128, learning_rate=0.1,
                           momentum=0.9)


# No experiment of PAPER.md: `memjax reproduce` runs it only when named (--only)
EXPERIMENT = None


@dataclass(frozen=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = ANCHOR_TRAIN
    ratios: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
    seeds: int = 200  # members per ratio
    one_epoch_members: int = 0  # E1's one-epoch difficulty for comparison (0: none)
    mask_seed: int = 0
    per_class: int = 6  # examples shown at each end of a class in the figure
    # each member's validation accuracy after every epoch too (per ratio: `curves`)
    validation_curve: bool = False


PAPER = Config(data=DataConfig(name="mnist", test_as_validation=True),
               model=ModelConfig(hidden=(512, 256)), one_epoch_members=100)
_RN9 = resnet9_cifar10(epochs=20, compute_dtype="bfloat16")
# (im2col: some 7x faster than lax.conv for ResNet-9 on a CPU, docs/studies.md)
_RN9_CPU = resnet9_cifar10(width=CPU_WIDTH, epochs=CPU_EPOCHS, batch_size=32, learning_rate=0.1,
                           conv_form="im2col")
PRESETS = {
    "smoke": replace(PAPER, data=DataConfig(train_size=1024, validation_size=256),
                     model=ModelConfig(hidden=(32,)), train=replace(ANCHOR_TRAIN, epochs=2),
                     ratios=(0.25, 0.75), seeds=4, one_epoch_members=4, per_class=3),
    "cpu": replace(PAPER, data=DataConfig(), ratios=(0.1, 0.3, 0.5, 0.7, 0.9), seeds=20,
                   one_epoch_members=20),
    "paper": PAPER,
    # ResNet-9 on CIFAR-10 as ffcv trains it (memjax.recipes), bf16; influence-free, so
    # validation is the official test set
    "cifar": Config(data=CIFAR10, model=_RN9[0], train=_RN9[1], seeds=100,
                    one_epoch_members=100),
    "gpu": Config(data=CIFAR10, model=_RN9[0], train=replace(_RN9[1], epochs=10, warmup_epochs=2),
                  ratios=(0.25, 0.5, 0.75), seeds=8),
    # a narrow ResNet-9 on 1,000 CIFAR-10 images, float32 on a CPU
    "cifar-cpu": Config(data=CIFAR10_CPU, model=_RN9_CPU[0], train=_RN9_CPU[1],
                        ratios=(0.25, 0.5, 0.75), seeds=8, one_epoch_members=8, per_class=3,
                        validation_curve=True),
}


def check(config: Config) -> None:
    """The checks the config alone allows, before anything runs (MemjaxError)."""
    validate(config)
    check_sweep_members(config)
    check_numbers(config, positive=("seeds", "per_class"), nonnegative=("one_epoch_members",),
                  fractions=("ratios",), nonempty=("ratios",), seeds=("mask_seed",),
                  distinct=("ratios",))
    for ratio in config.ratios:
        k = members_holding(ratio, config.seeds)
        if not 0 < k < config.seeds:
            raise MemjaxError(
                f"ratio {ratio} of {config.seeds} seeds puts each example in {k} members: "
                f"no member would {'train on it' if k == 0 else 'hold it out'}; use ratios "
                f"in (0, 1) and more seeds")


def phases(config: Config) -> list[Phase]:
    """Per ratio: its members, each on its subset, evaluated on the training and validation
    sets at the end; then E1's one-epoch members (when any), evaluated on the training set."""
    data, r_count = Data(config.data), len(config.ratios)
    n = data.shape().train
    at_end = lambda name, on: Evaluation(name, on=on, every=None, per_example=True)
    out = [Phase(f"ratio-{ratio:g}", config.model, config.train, data, _members(config, r, n),
                 desc=f"ratio {ratio:g} ({r + 1}/{r_count})",
                 measurements=(at_end("correct", "train"),
                               at_end("correct_validation", "validation"))
                 + ((Evaluation("validation_accuracy", on="validation"),)
                    if config.validation_curve else ()))
           for r, ratio in enumerate(config.ratios)]
    if config.one_epoch_members:
        train = replace(config.train, epochs=1,  # (a schedule's warm-up, the same share)
                        warmup_epochs=config.train.warmup_epochs / config.train.epochs)
        out.append(Phase("one-epoch", config.model, train, data,
                         _one_epoch_members(config), desc="one epoch, all data",
                         measurements=(at_end("correct", "train"),)))
    return out


def run(config: Config, run_dir: RunDir) -> dict:
    check(config)
    dataset = load_dataset(config.data)
    train, n = dataset.train, len(dataset.train)
    ratios = config.ratios
    included, correct, scores = [], [], {}
    summary = {"order": dataset.order, "ratios": {}}
    seconds = model_examples = 0.0
    ratio_phases = phases(config)
    for ratio, phase in zip(ratios, ratio_phases):
        mask = phase.members.example_mask
        outcome = Runner.of(phase, dataset).execute(run_dir)
        runner = outcome.runner
        seconds, model_examples = seconds + runner.seconds, model_examples + runner.model_examples
        right, validation = outcome.final["correct"], outcome.final["correct_validation"]
        included.append(mask)
        correct.append(right)
        held = scores[f"heldout_{ratio:g}"] = np.asarray(holdout_consistency(mask, right))
        summary["ratios"][f"{ratio:g}"] = {
            "members": config.seeds, "mean_subset_size": float(mask.sum(1).mean()),
            # each example is in exactly round(ratio * seeds) members
            "effective_ratio": float(mask.sum(0)[0] / config.seeds) if n else ratio,
            "heldout_accuracy": float(np.nanmean(held)),
            "validation_accuracy": float(np.asarray(validation).mean()),
            "train_seconds": runner.seconds}
        if config.validation_curve:
            summary["ratios"][f"{ratio:g}"]["curves"] = epoch_means(outcome.history)
        run_dir.log_metrics({"ratio": ratio, **summary["ratios"][f"{ratio:g}"]})
    included, correct = np.concatenate(included), np.concatenate(correct)
    ratio_ids = np.repeat(np.arange(len(ratios)), config.seeds)
    scores = {"cscore": np.asarray(cscore(included, correct, ratio_ids, len(ratios))),
              **scores}
    if config.one_epoch_members:
        # E1's difficulty: the fraction of the one-epoch members that misclassify each
        # training example [N]
        one_epoch = Runner.of(ratio_phases[-1], dataset).execute(run_dir).final["correct"]
        scores["one_epoch_error"] = np.asarray(misclassification_rate(one_epoch))
        summary["spearman_cscore_one_epoch_accuracy"] = spearman(
            scores["cscore"], 1.0 - scores["one_epoch_error"])
        summary["one_epoch_mean_error"] = float(scores["one_epoch_error"].mean())
    c = scores["cscore"]
    summary["cscore"] = {**spread(c, (1, 10, 50, 90)), "below_0.5": float(np.mean(c < 0.5))}
    run_dir.write_npz("results.npz", {"included": included, "correct": correct,
                                      "ratio_ids": ratio_ids, "ratios": np.asarray(ratios),
                                      "index": train.index})
    write_example_scores(run_dir, "cscores", train, dataset.order["train"], scores)
    run_dir.write_json("summary.json", summary)
    example_figure(run_dir, "fig_cscore_examples.png", train, c, "C-score",
                   config.per_class)
    _figure(scores, run_dir)
    return {"summary": summary, "model_examples_per_second": model_examples / max(seconds, 1e-9)}


def _members(config: Config, r: int, n: int) -> Members:
    """The members of ratio r, each on its balanced subset of the n training examples."""
    mask = balanced_masks(config.seeds, n, config.ratios[r], seed=config.mask_seed + r)
    return Members(np.arange(r * config.seeds, (r + 1) * config.seeds), example_mask=mask)


def _one_epoch_members(config: Config) -> Members:
    return Members(np.arange(config.one_epoch_members) + len(config.ratios) * config.seeds)


def _figure(scores: dict, run_dir: RunDir) -> None:
    fig, axes = new_figure(ncols=2 if "one_epoch_error" in scores else 1, width=4.6)
    axes[0].hist(scores["cscore"][np.isfinite(scores["cscore"])], bins=40)
    axes[0].set_xlabel("C-score")
    axes[0].set_ylabel("training examples")
    axes[0].set_yscale("log")
    if "one_epoch_error" in scores:
        axes[1].scatter(1.0 - scores["one_epoch_error"], scores["cscore"], s=2, alpha=0.3)
        axes[1].set_xlabel("accuracy across members after one epoch (E1)")
        axes[1].set_ylabel("C-score")
        axes[1].set_title("against E1's one-epoch difficulty", fontsize=10)
    fig.suptitle("C-scores of the training examples (held-out accuracy over subset ratios)")
    run_dir.save_figure(fig, "fig_cscore.png")


def evidence(summary: dict) -> list[dict]:
    """How the C-score spreads, and how it ranks examples against E1's one-epoch difficulty
    (no claim of the paper is judged: `claim` None)."""
    c = summary["cscore"]
    lines = [{"claim": None, "supports": None, "text": (
        f"cscore: mean {c['mean']:.3f}, {c['below_0.5']:.1%} of training examples below "
        f"0.5 (10th percentile {c['q10']:.3f}, 1st {c['q01']:.3f})")}]
    rho = summary.get("spearman_cscore_one_epoch_accuracy")
    if rho is not None:
        lines.append({"claim": None, "supports": None, "text": (
            f"cscore: Spearman correlation with the accuracy across members after one epoch "
            f"of training on all data (E1): {rho:.2f}")})
    return lines
