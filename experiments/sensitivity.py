"""E2 (Figs. 3-4): loss sensitivity through the unrolled SGD trajectory; its Gini over examples.

    memjax run sensitivity --preset cpu [--dataset mnist --data-dir ../shared/data]

The paper's setting: MLPs with 2 x 16 hidden units trained by SGD on 1000 MNIST digits
downscaled to 14 x 14, on real data, random inputs (randX) and random labels (randY), and
again with one class per example (real and randX, 1000 classes). For every training input x,
g_x^t = ||dL_t/dx||_1 of the training loss at step t, through the whole trajectory (x acts
on L_t only through the steps that trained on it); g-bar_x is its mean over the steps so far. On real data a subset of examples dominates
(the Gini coefficient of g-bar_x over examples climbs as training proceeds); on noise all
examples matter alike (low Gini). Also: the 10 x 10 per-class matrices g-bar_{i,j}, and the
instantaneous sensitivity ||dl_i/dx_i||_1 at the end of training with its Gini.
Presets: smoke (seconds), cpu (4 members, 60 epochs, ~3 minutes on 2 cores), paper
(100 members, 200 epochs; GPU).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Iterator

import jax
import numpy as np

from memjax.config import (DataConfig, ModelConfig, TrainConfig, check_choices,
                          check_numbers, validate)
from memjax import cost
from memjax.data import data_shape, load_dataset, with_noise
from memjax.data.dataset import Split
from memjax.errors import MemjaxError
from memjax.evaluation import evaluate
from memjax.experiments.common import new_figure
from memjax.metrics import gini, loss_sensitivity, trainer_order, unrolled_loss_sensitivity
from memjax.results import RunDir
from memjax.members import Members, abstract_ensemble, build_ensemble

# condition -> (noise kind, one class per example)
CONDITIONS = {"real": ("real", False), "randX": ("randX", False), "randY": ("randY", False),
              "real_per_example": ("real", True), "randX_per_example": ("randX", True)}


# PAPER.md's experiment: `memjax reproduce` runs the studies that have one, in its order
EXPERIMENT = "E2"


@dataclass(frozen=True)
class Config:
    """every: SGD steps between the chosen steps t (g_x^t is computed at t = every,
    2 every, ...). class_matrix_every: the same for the per-class matrix (each chosen step
    costs 11 backward sweeps there, so it is sampled more sparsely). loss_on: `full` (L_t on
    every training example at theta_t) or `batch` (on the step-t minibatch). direct: also
    count x's own term in L_t (not the paper's definition; chosen steps then start at t = 0).
    per_example_learning_rate: SGD rate of the one-class-per-example conditions (a 1000-way
    read-out from 16 units barely moves at the 10-class rate; None: train.learning_rate)."""

    data: DataConfig = field(default_factory=lambda: DataConfig(train_size=1000, downscale=2))
    model: ModelConfig = field(default_factory=lambda: ModelConfig(hidden=(16, 16)))
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        members=4, epochs=60, batch_size=100, learning_rate=0.2))
    every: int = 60
    class_matrix_every: int = 200
    loss_on: str = "full"
    direct: bool = False
    per_example_learning_rate: float | None = 0.5
    conditions: tuple[str, ...] = tuple(CONDITIONS)
    cotangent_chunk: int = 64


PAPER = Config(data=DataConfig(name="mnist", train_size=1000, downscale=2),
               train=TrainConfig(members=100, epochs=200, batch_size=100, learning_rate=0.2,
                                 member_chunk=25),
               every=20, class_matrix_every=100)
PRESETS = {
    "smoke": replace(PAPER, data=replace(PAPER.data, name="embedded", train_size=200,
                                         validation_size=10),
                     train=replace(PAPER.train, members=2, epochs=3, batch_size=50,
                                   member_chunk=None),
                     every=4, class_matrix_every=6),
    # the Config() defaults
    "cpu": replace(PAPER, data=replace(PAPER.data, name="embedded"),
                   train=replace(PAPER.train, members=4, epochs=60, member_chunk=None),
                   every=60, class_matrix_every=200),
    "paper": PAPER,
}


def _condition_split(train: Split, condition: str, num_classes: int, seed: int) -> tuple[Split, int]:
    kind, per_example = CONDITIONS[condition]
    split = with_noise(train, kind, 1.0, num_classes, seed)
    if per_example:
        split = replace(split, y=np.arange(len(split), dtype=np.int32))
        return split, len(split)
    return split, num_classes


def _learning_rate(config: Config, condition: str) -> float:
    if CONDITIONS[condition][1] and config.per_example_learning_rate is not None:
        return config.per_example_learning_rate
    return config.train.learning_rate


def _common(config: Config, condition: str) -> dict:
    """The settings every unrolled_loss_sensitivity call of a condition shares."""
    return dict(learning_rate=_learning_rate(config, condition), loss_on=config.loss_on,
                direct=config.direct, cotangent_chunk=config.cotangent_chunk,
                member_chunk=config.train.member_chunk)


def work(config: Config) -> Iterator[cost.Step]:
    """Per condition: the unrolled trajectory with its backward pass (and, for 10 classes,
    the per-class one), then the loss sensitivity and accuracy at the end."""
    shape, tc = data_shape(config.data), config.train
    order, weight = trainer_order(tc.seed, np.arange(tc.members), num_examples=shape.train,
                                  batch_size=tc.batch_size, epochs=tc.epochs,
                                  shared_order=tc.shared_order)
    x = jax.ShapeDtypeStruct((shape.train,) + shape.image_shape, np.uint8)
    y = jax.ShapeDtypeStruct((shape.train,), np.int32)
    for condition in config.conditions:
        per_example = CONDITIONS[condition][1]
        classes = shape.train if per_example else shape.num_classes
        network, _, state = abstract_ensemble(config.model, tc, classes,
                                              (1,) + shape.image_shape,
                                              Members(np.arange(tc.members)))
        common = _common(config, condition)
        unrolled = cost.program_cost(lambda v, x, y: unrolled_loss_sensitivity(
            network.apply, v, x, y, order, weight, every=config.every, **common),
            state.variables, x, y)
        if not per_example:
            unrolled = unrolled + cost.program_cost(lambda v, x, y: unrolled_loss_sensitivity(
                network.apply, v, x, y, order, weight, every=config.class_matrix_every,
                num_classes=classes, **common), state.variables, x, y)
        yield cost.Step(f"unrolled ({condition})", "unrolled", config.model.kind, unrolled, 1,
                        per_example=float(np.sum(weight)), members=tc.members)
        final = cost.program_cost(lambda v, x, y: loss_sensitivity(
            network.apply, v, x, y, chunk=tc.eval_chunk, member_chunk=tc.member_chunk),
            state.variables, x, y)
        yield cost.Step(f"sensitivity at the end ({condition})", "evaluate", config.model.kind,
                        final, 1, per_example=tc.members * shape.train, members=tc.members)


def check(config: Config) -> None:
    """The checks the config alone allows, before anything runs (MemjaxError)."""
    validate(config)
    check_numbers(config, positive=("every", "class_matrix_every", "cotangent_chunk",
                                    "per_example_learning_rate"))
    check_choices("conditions", config.conditions, tuple(CONDITIONS))
    check_choices("loss_on", (config.loss_on,), ("full", "batch"))
    if config.train.record_dynamics:
        raise MemjaxError("sensitivity trains no epochs to record dynamics of: its unrolled "
                          "trajectory is the measurement (drop --record)")
    if config.train.momentum or config.train.weight_decay or config.train.lr_halving_epochs:
        raise MemjaxError("the unrolled trajectory is plain SGD: momentum, weight decay and "
                          "learning-rate halving must be off")



def run(config: Config, run_dir: RunDir) -> dict:
    check(config)
    dataset = load_dataset(config.data)
    n = len(dataset.train)
    tc = config.train
    tc.check_data(n)
    order, weight = trainer_order(tc.seed, np.arange(tc.members), num_examples=n, batch_size=tc.batch_size,
                                  epochs=tc.epochs, shared_order=tc.shared_order)
    steps_per_epoch = order.shape[1] // tc.epochs
    if not config.direct:
        for name in ("every", "class_matrix_every"):
            if getattr(config, name) >= order.shape[1]:
                raise MemjaxError(
                    f"{name}={getattr(config, name)} leaves no chosen step: training takes "
                    f"{order.shape[1]} SGD steps and the first chosen step is t = {name}")
    arrays: dict[str, np.ndarray] = {}
    summary: dict[str, dict] = {}
    seconds = 0.0
    from tqdm.auto import tqdm

    # one compiled computation per condition (the unrolled trajectory and its backward pass)
    for condition in tqdm(config.conditions, desc="sensitivity", unit="condition", leave=False,
                          mininterval=0):
        seconds += _run_condition(config, dataset, condition, order, weight, arrays, summary,
                                  run_dir)
    arrays["epochs_at_steps"] = arrays["steps"] / steps_per_epoch
    for condition in config.conditions:
        for i, epoch in enumerate(arrays["epochs_at_steps"]):
            run_dir.log_metrics({
                "condition": condition, "step": int(arrays["steps"][i]), "epoch": float(epoch),
                "gini_gbar": float(arrays[f"gini_{condition}"][:, i].mean()),
                "train_loss": float(arrays[f"train_loss_at_steps_{condition}"][:, i].mean())})
    model_examples = len(config.conditions) * float(np.sum(weight))  # every member's examples
    run_dir.write_npz("results.npz", arrays)
    run_dir.write_json("summary.json", summary)
    _figures(arrays, config.conditions, run_dir)
    # the unrolled trajectories: training steps with the backward pass through them
    return {"summary": summary, "model_examples_per_second": model_examples / max(seconds, 1e-9)}


def _run_condition(config: Config, dataset, condition: str, order, weight, arrays: dict,
                   summary: dict, run_dir: RunDir) -> float:
    """The unrolled sensitivity of one condition into `arrays` and `summary`; returns the
    seconds of the unrolled trajectory and its backward pass."""
    tc = config.train
    split, classes = _condition_split(dataset.train, condition, dataset.num_classes,
                                      config.data.data_seed)
    common = _common(config, condition)
    lr = common["learning_rate"]
    network, _, state = build_ensemble(
        config.model, replace(tc, learning_rate=lr), classes,
        np.zeros((1,) + split.x.shape[1:], np.float32), Members(np.arange(tc.members)))
    x, y = jax.device_put(split.x), jax.device_put(split.y)
    started = time.perf_counter()
    result = unrolled_loss_sensitivity(network.apply, state.variables, x, y, order, weight,
                                       every=config.every, **common)
    jax.block_until_ready(result.per_step)
    seconds = time.perf_counter() - started
    # g-bar_x over the chosen steps so far, at each chosen step: [M, K, N]
    k = result.per_step.shape[1]
    running = np.cumsum(np.asarray(result.per_step), 1) / np.arange(1, k + 1)[None, :, None]
    gini_running = np.asarray(gini(running))  # [M, K]
    final = {**state.variables, "params": result.params}
    instant = loss_sensitivity(network.apply, final, x, y, chunk=tc.eval_chunk,
                               member_chunk=tc.member_chunk)
    accuracy = evaluate(network.apply, final, x, y, chunk=tc.eval_chunk,
                        member_chunk=tc.member_chunk)["correct"].mean(1)
    losses = np.asarray(result.losses)
    arrays.update({f"gbar_{condition}": np.asarray(result.mean),
                   f"gini_{condition}": gini_running,
                   f"instant_sensitivity_{condition}": np.asarray(instant),
                   f"train_loss_at_steps_{condition}": losses, "steps": np.asarray(result.steps)})
    summary[condition] = {
        "classes": classes, "learning_rate": lr,
        "gini_gbar_final": float(gini_running[:, -1].mean()),
        "gini_gbar_final_min_member": float(gini_running[:, -1].min()),
        "gini_gbar_final_max_member": float(gini_running[:, -1].max()),
        "gini_instant_final": float(np.asarray(gini(instant)).mean()),
        "train_accuracy_final": float(np.asarray(accuracy).mean()),
        "train_loss_first": float(losses[:, 0].mean()),
        "train_loss_last": float(losses[:, -1].mean()),
    }
    if not CONDITIONS[condition][1]:
        per_class = np.asarray(unrolled_loss_sensitivity(
            network.apply, state.variables, x, y, order, weight,
            every=config.class_matrix_every, num_classes=classes, **common).per_class)
        arrays[f"per_class_{condition}"] = per_class
        matrix = per_class.mean(0)
        diagonal = np.trace(matrix) / classes
        summary[condition]["per_class_diagonal_over_offdiagonal"] = float(
            diagonal / ((matrix.sum() - np.trace(matrix)) / (classes * (classes - 1))))
    return seconds


def _figures(arrays: dict, conditions, run_dir: RunDir) -> None:
    groups = [("10 classes", [c for c in conditions if not CONDITIONS[c][1]]),
              ("one class per example", [c for c in conditions if CONDITIONS[c][1]])]
    groups = [g for g in groups if g[1]]
    fig, axes = new_figure(ncols=len(groups))
    for ax, (title, names) in zip(axes, groups):
        for c in names:
            g = arrays[f"gini_{c}"]
            line, = ax.plot(arrays["epochs_at_steps"], g.mean(0), label=c)
            ax.fill_between(arrays["epochs_at_steps"], g.min(0), g.max(0), alpha=0.2,
                            color=line.get_color())
        ax.set_xlabel("epoch")
        ax.set_ylabel("Gini of g-bar_x over examples")
        ax.set_title(f"Loss sensitivity concentration ({title})")
        ax.legend(fontsize=8)
    run_dir.save_figure(fig, "fig3_gini.png")
    names = [c for c in conditions if f"per_class_{c}" in arrays]
    if not names:
        return
    fig, axes = new_figure(ncols=len(names), width=4.8, height=3.8)
    for ax, c in zip(axes, names):
        image = ax.imshow(np.log10(arrays[f"per_class_{c}"].mean(0)), cmap="viridis")
        ax.set_title(f"{c}: log10 g-bar(i, j)")
        ax.set_xlabel("class j of the input x")
        ax.set_ylabel("class i of the loss term")
        fig.colorbar(image, ax=ax, fraction=0.046)
    run_dir.save_figure(fig, "fig4_per_class.png")


def evidence(summary: dict) -> list[dict]:
    """Claim 1: on real data a subset of examples dominates the loss sensitivity (higher
    Gini of g-bar_x); on noise it is spread over all examples."""
    if "real" not in summary:
        return []
    real = summary["real"]["gini_gbar_final"]
    lines = []
    for condition in ("randX", "randY"):
        if condition in summary:
            noise = summary[condition]["gini_gbar_final"]
            lines.append({"claim": 1, "supports": bool(real > noise), "text": (
                f"sensitivity: Gini of the mean loss sensitivity g-bar_x over examples is "
                f"{real:.3f} on real data against {noise:.3f} on {condition} at the end of "
                f"training")})
    return lines
