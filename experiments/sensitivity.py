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

import jax
import numpy as np

from memjax.config import (DataConfig, ModelConfig, TrainConfig, check_choices,
                          check_numbers, validate)
from memjax import cost
from memjax.data import load_dataset
from memjax.errors import MemjaxError
from memjax.evaluation import evaluate
from memjax.experiments.figures import new_figure
from memjax.metrics import gini, loss_sensitivity, trainer_order, unrolled_loss_sensitivity
from memjax.measurements import Measurement
from memjax.members import abstract_ensemble
from memjax.phase import Data, Phase
from memjax.results import RunDir
from memjax.runner import Runner

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


def _learning_rate(config: Config, condition: str) -> float:
    if CONDITIONS[condition][1] and config.per_example_learning_rate is not None:
        return config.per_example_learning_rate
    return config.train.learning_rate


def _common(config: Config, condition: str) -> dict:
    """The settings every unrolled_loss_sensitivity call of a condition shares."""
    return dict(learning_rate=_learning_rate(config, condition), loss_on=config.loss_on,
                direct=config.direct, cotangent_chunk=config.cotangent_chunk,
                member_chunk=config.train.member_chunk)


@dataclass(frozen=True)
class Unrolled(Measurement):
    """E2's measurement, from the members' initialization (its phase trains no epochs: the
    trajectory is the training): the unrolled SGD trajectory with its backward pass
    (memjax.metrics.unrolled_loss_sensitivity: g_x^t at every `every` steps, "per_step"
    [M, K, N], and their mean "gbar" [M, N]; the training loss "losses" at those "steps"),
    for 10 classes the per-class matrix ("per_class" [M, C, C], at every
    `class_matrix_every` steps), and at the end of the trajectory the instantaneous
    sensitivity ("instant" [M, N]) and training accuracy ("accuracy" [M]), all in float32;
    "seconds": the unrolled trajectory's."""

    config: Config
    condition: str
    name: str = "unrolled"
    every: int | None = None
    outputs: tuple[str, ...] = ("per_step", "gbar", "losses", "steps", "per_class", "instant",
                                "accuracy", "seconds")

    def _programs(self, apply, num_classes: int, num_examples: int) -> dict:
        """program name -> (variables, x, y) -> its result."""
        config, tc = self.config, self.config.train
        order, weight = trainer_order(tc.seed, np.arange(tc.members), num_examples=num_examples,
                                      batch_size=tc.batch_size, epochs=tc.epochs,
                                      shared_order=tc.shared_order)
        common = _common(config, self.condition)
        out = {"unrolled": lambda v, x, y: unrolled_loss_sensitivity(
            apply, v, x, y, order, weight, every=config.every, **common)}
        if not CONDITIONS[self.condition][1]:
            out["per_class"] = lambda v, x, y: unrolled_loss_sensitivity(
                apply, v, x, y, order, weight, every=config.class_matrix_every,
                num_classes=num_classes, **common)
        out["sensitivity"] = lambda v, x, y: loss_sensitivity(
            apply, v, x, y, chunk=tc.eval_chunk, member_chunk=tc.member_chunk)
        out["accuracy"] = lambda v, x, y: evaluate(apply, v, x, y, chunk=tc.eval_chunk,
                                                   member_chunk=tc.member_chunk)
        return out

    def bind(self, runner, dataset):
        variables, x, y = runner.member_state().variables, runner.x, runner.y
        programs = self._programs(runner.apply, dataset.num_classes, x.shape[0])

        def call(name, v):
            cost.record(f"{runner.phase_id}/{name}", programs[name], v, x, y)
            return programs[name](v, x, y)

        def measure(epoch):
            started = time.perf_counter()
            result = call("unrolled", variables)
            jax.block_until_ready(result.per_step)
            seconds = time.perf_counter() - started
            final = {**variables, "params": result.params}
            out = {"per_step": result.per_step, "gbar": result.mean, "losses": result.losses,
                   "steps": result.steps, "instant": call("sensitivity", final),
                   "accuracy": call("accuracy", final)["correct"].mean(1), "seconds": seconds}
            if "per_class" in programs:
                out["per_class"] = call("per_class", variables).per_class
            return out
        return measure

    def steps(self, phase, shape):
        tc = self.config.train
        network, _, state = abstract_ensemble(phase.model, phase.training, shape.num_classes,
                                              (1,) + shape.image_shape, phase.ensemble)
        x = jax.ShapeDtypeStruct((shape.train,) + shape.image_shape, phase.data.x_dtype)
        y = jax.ShapeDtypeStruct((shape.train,), np.int32)
        programs = self._programs(network.apply, shape.num_classes, shape.train)
        kinds = {"unrolled": "unrolled", "per_class": "unrolled", "sensitivity": "evaluate",
                 "accuracy": "evaluate"}
        return [cost.Step(f"{name} ({phase.text})", kinds[name], phase.model.kind,
                          cost.program_cost(fn, state.variables, x, y), 1,
                          per_example=float(tc.members * shape.train), member_count=tc.members,
                          program=f"{phase.id}/{name}", conv_form=network.conv_form)
                for name, fn in programs.items()]


def phases(config: Config) -> list[Phase]:
    """Per condition: the members at initialization (no epoch of the Runner's: the unrolled
    trajectory trains them) and their `Unrolled` measurement."""
    return [Phase(condition, config.model,
                  replace(config.train, learning_rate=_learning_rate(config, condition)),
                  Data(config.data, CONDITIONS[condition][0],
                       one_class_per_example=CONDITIONS[condition][1]),
                  epochs=0, measurements=(Unrolled(config, condition),))
            for condition in config.conditions]


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
    tc.check_data(n, dataset.train.x.shape[1:])
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
    for phase in tqdm(phases(config), desc="sensitivity", unit="condition", leave=False,
                      mininterval=0):
        out = Runner.of(phase, dataset).execute(run_dir).final
        seconds += out["seconds"]
        _condition_results(phase, out, arrays, summary)
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


def _condition_results(phase: Phase, out: dict, arrays: dict, summary: dict) -> None:
    """A condition's `Unrolled` results into `arrays` and `summary`."""
    condition = phase.id
    # (one class per example: as many as examples)
    classes = int((out["per_class"] if "per_class" in out else out["gbar"]).shape[-1])
    # g-bar_x over the chosen steps so far, at each chosen step: [M, K, N]
    k = out["per_step"].shape[1]
    running = np.cumsum(np.asarray(out["per_step"]), 1) / np.arange(1, k + 1)[None, :, None]
    gini_running = np.asarray(gini(running))  # [M, K]
    instant, losses = np.asarray(out["instant"]), np.asarray(out["losses"])
    arrays.update({f"gbar_{condition}": np.asarray(out["gbar"]),
                   f"gini_{condition}": gini_running,
                   f"instant_sensitivity_{condition}": instant,
                   f"train_loss_at_steps_{condition}": losses, "steps": np.asarray(out["steps"])})
    summary[condition] = {
        "classes": classes, "learning_rate": phase.train.learning_rate,
        "gini_gbar_final": float(gini_running[:, -1].mean()),
        "gini_gbar_final_min_member": float(gini_running[:, -1].min()),
        "gini_gbar_final_max_member": float(gini_running[:, -1].max()),
        "gini_instant_final": float(np.asarray(gini(instant)).mean()),
        "train_accuracy_final": float(np.asarray(out["accuracy"]).mean()),
        "train_loss_first": float(losses[:, 0].mean()),
        "train_loss_last": float(losses[:, -1].mean()),
    }
    if "per_class" in out:
        per_class = np.asarray(out["per_class"])
        arrays[f"per_class_{condition}"] = per_class
        matrix = per_class.mean(0)
        diagonal = np.trace(matrix) / classes
        summary[condition]["per_class_diagonal_over_offdiagonal"] = float(
            diagonal / ((matrix.sum() - np.trace(matrix)) / (classes * (classes - 1))))


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
