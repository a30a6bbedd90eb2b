"""E7 (Figs. 10-11): regularizers against memorization: final randY training accuracy
against best real-data validation accuracy, and training-loss curves.

    memjax run regularization --preset cpu [--dataset cifar10 --data-dir ../shared/data]

One ensemble: a member per (regularizer, strength, data, seed), data = real or randY (every
label random), plus unregularized members. Strengths are per-member arrays: dropout and input
dropout (drop probability), input / hidden Gaussian noise (std, in [0, 1] pixel units /
activation units), weight decay (per-member optimizer hyperparameter), and dropout +
adversarial training (loss = (1 - w) clean + w adversarial with LASS points searched in
every step, memjax.metrics.lass.lass_adversarial_examples; `adversarial_weight` and `adversarial_dropout` pairs).
Dropout should hinder memorization most while keeping validation accuracy. The cpu preset
leaves dropout + adversarial training out: its in-step search makes every member's step
~10x dearer, which a 2-core CPU cannot afford within the preset's minutes.
Presets: smoke (seconds); cpu (MLP 2x512 on 1000 embedded MNIST examples, 3 strengths per
regularizer, batch 32, lr 0.1, 40 epochs: ~4 minutes on 2 shared cores; the paper's
CNN/CIFAR-10 is too slow for a CPU); paper (CIFAR-10 CNN in bf16 compute with float32
weights, adversarial training's search and pass in float32 (memjax.train.step_loss), SGD
momentum 0.9, lr 0.01 halved every 15 epochs, the paper's strength ranges, 100 epochs;
training accuracy, which the figure reads at the last epoch, only there).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from memjax.config import DataConfig, ModelConfig, TrainConfig, check_numbers, validate
from memjax.data import load_dataset
from memjax.errors import MemjaxError
from memjax.experiments.figures import new_figure
from memjax.experiments.sweeps import check_sweep_members
from memjax.models import REGULARIZERS
from memjax.measurements import Evaluation, OwnAccuracy
from memjax.phase import Data, Phase
from memjax.results import RunDir
from memjax.members import Members
from memjax.runner import Runner

STRENGTH_REGULARIZERS = REGULARIZERS + ("weight_decay",)


# PAPER.md's experiment: `memjax reproduce` runs the studies that have one, in its order
EXPERIMENT = "E7"


@dataclass(frozen=True)
class Config:
    data: DataConfig = field(default_factory=lambda: DataConfig(name="cifar10"))
    model: ModelConfig = field(default_factory=lambda: ModelConfig(kind="cnn", batchnorm=True))
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        members=1, epochs=100, momentum=0.9, lr_halving_epochs=15,
        adversarial_protocol="authors", compute_dtype="bfloat16"))
    dropout: tuple[float, ...] = (0.1, 0.3, 0.5, 0.7, 0.9)
    input_dropout: tuple[float, ...] = (0.1, 0.3, 0.5, 0.7, 0.9)
    input_noise: tuple[float, ...] = (0.05, 0.2, 0.5, 1.0, 5.0)
    hidden_noise: tuple[float, ...] = (0.01, 0.05, 0.1, 0.2, 0.3)
    weight_decay: tuple[float, ...] = (1e-4, 1e-3, 1e-2, 0.1, 1.0)
    # dropout + adversarial training: pairs (weight w, dropout), w 0.2-0.7 and dropout
    # 0.03-0.5 in the paper; these pairs are ours
    adversarial_weight: tuple[float, ...] = (0.2, 0.5, 0.7)
    adversarial_dropout: tuple[float, ...] = (0.5, 0.1, 0.03)
    seeds: int = 1  # members per sweep cell, each its own initialization and data order
    keep_validation: float = 0.02  # "keeps validation accuracy": within this of no regularizer
    # epochs between measurements of training accuracy (a full pass over the training set;
    # always after the last epoch, which the figure uses; NaN in the curves between)
    own_accuracy_every: int = 1


# training accuracy after the last epoch only: the figure reads nothing else
PAPER = Config(own_accuracy_every=Config().train.epochs)
PRESETS = {
    "smoke": replace(PAPER, data=DataConfig(train_size=256, validation_size=128),
                     model=ModelConfig(hidden=(32,)),
                     train=replace(PAPER.train, epochs=2, batch_size=64, learning_rate=0.1,
                                   momentum=0.0, lr_halving_epochs=None,
                                   compute_dtype="float32"),
                     dropout=(0.5,), input_dropout=(0.5,), input_noise=(0.5,),
                     hidden_noise=(0.1,), weight_decay=(0.01,), adversarial_weight=(0.5,),
                     adversarial_dropout=(0.3,), own_accuracy_every=1),
    # Few examples, small batches and a large step so randY is memorized within the budget.
    "cpu": replace(PAPER, data=DataConfig(train_size=1000),
                   model=ModelConfig(hidden=(512, 512)),
                   train=replace(PAPER.train, epochs=40, batch_size=32, learning_rate=0.1,
                                 momentum=0.0, lr_halving_epochs=None,
                                 compute_dtype="float32"),
                   dropout=(0.2, 0.5, 0.8), input_dropout=(0.2, 0.5, 0.8),
                   input_noise=(0.1, 0.3, 1.0), hidden_noise=(0.05, 0.1, 0.3),
                   weight_decay=(1e-3, 1e-2, 1e-1), adversarial_weight=(),
                   adversarial_dropout=(), own_accuracy_every=1),
    "paper": PAPER,
}


def member_rows(config: Config) -> dict[str, np.ndarray]:
    """One row per member: regularizer name, strength, data (real/randY), repeat, and the
    per-member hyperparameter arrays."""
    combos = [("none", 0.0, 0.0)]
    for name in STRENGTH_REGULARIZERS:
        combos += [(name, float(s), 0.0) for s in getattr(config, name)]
    if len(config.adversarial_weight) != len(config.adversarial_dropout):
        raise MemjaxError("adversarial_weight and adversarial_dropout must pair up")
    combos += [("dropout+adversarial", float(d), float(w))
               for w, d in zip(config.adversarial_weight, config.adversarial_dropout)]
    rows = [(r, s, w, data, rep) for r, s, w in combos for data in ("real", "randY")
            for rep in range(config.seeds)]
    reg, strength, adv, data, rep = map(np.array, zip(*rows))
    out = {"regularizer": reg, "strength": strength.astype(float), "data": data,
           "repeat": rep.astype(int), "adversarial_weight": adv.astype(float)}
    for name in STRENGTH_REGULARIZERS:
        out[name] = np.where(reg == name, out["strength"], 0.0)
    out["dropout"] = np.where(reg == "dropout+adversarial", out["strength"], out["dropout"])
    return out


def check(config: Config) -> None:
    """The checks the config alone allows, before anything runs (MemjaxError)."""
    validate(config)
    check_numbers(config, positive=("seeds", "own_accuracy_every"),
                  fractions=("dropout", "input_dropout", "adversarial_weight",
                             "adversarial_dropout"),
                  nonnegative=("input_noise", "hidden_noise", "weight_decay", "keep_validation"))
    check_sweep_members(config)
    member_rows(config)



def ensemble(rows: dict[str, np.ndarray]) -> Members:
    """The Members of `member_rows(config)`."""
    return Members(np.arange(len(rows["data"])), strengths={k: rows[k] for k in REGULARIZERS},
                   weight_decay=rows["weight_decay"],
                   label_noise=(rows["data"] == "randY").astype(float),
                   adversarial_weight=rows["adversarial_weight"])


def phases(config: Config) -> list[Phase]:
    """Every member in one ensemble, trained for `train.epochs`: each member's accuracy on
    its own training set every `own_accuracy_every` epochs (and after the last), and the
    real-data members' validation accuracy (the only ones the figure reads) after each."""
    rows = member_rows(config)
    real = np.flatnonzero(rows["data"] == "real")
    return [Phase("regularization", config.model, config.train, Data(config.data),
                  ensemble(rows), measurements=(
                      OwnAccuracy("train_accuracy", every=config.own_accuracy_every),
                      Evaluation("validation_accuracy", on="validation", member_rows=real)))]


def run(config: Config, run_dir: RunDir) -> dict:
    check(config)
    rows = member_rows(config)
    dataset = load_dataset(config.data)
    names = ("train_loss", "train_accuracy", "validation_accuracy")
    (phase,) = phases(config)
    outcome = Runner.of(phase, dataset).execute(run_dir, log=lambda epoch, record: {
        "epoch": epoch, **{k: record[k].tolist() for k in names}})
    runner, history = outcome.runner, outcome.history
    curves = {k: history[k] for k in names}  # [epochs, M]
    summary = summarize(rows, curves, config.keep_validation)
    run_dir.write_npz("results.npz", {**rows, **curves})
    run_dir.write_json("summary.json", summary)
    _figures(summary, run_dir)
    return {"summary": summary,
            "model_examples_per_second": runner.throughput}


def _label(point: dict, sep: str = " ") -> str:
    """`dropout 0.5`, `dropout+adversarial 0.3 w 0.5` (sep "=": the summary's keys)."""
    text = f"{point['regularizer']}{sep}{point['strength']:g}"
    if point["regularizer"] == "dropout+adversarial":
        text += f",w{sep}{point['adversarial_weight']:g}" if sep == "=" else \
            f" w {point['adversarial_weight']:g}"
    return text


def summarize(rows: dict, curves: dict, keep_validation: float) -> dict:
    """Per (regularizer, strength): final randY training accuracy, best real validation
    accuracy (means over seeds) and the mean training-loss curves."""
    points = {}
    for reg, s, w in dict.fromkeys(zip(rows["regularizer"].tolist(), rows["strength"].tolist(),
                                       rows["adversarial_weight"].tolist())):
        sel = ((rows["regularizer"] == reg) & np.isclose(rows["strength"], s)
               & np.isclose(rows["adversarial_weight"], w))
        real, rand = sel & (rows["data"] == "real"), sel & (rows["data"] == "randY")
        point = {"regularizer": reg, "strength": s, "adversarial_weight": w}
        points[_label(point, "=")] = {
            **point,
            "final_randY_train_accuracy": float(curves["train_accuracy"][-1, rand].mean()),
            "best_real_validation_accuracy": float(curves["validation_accuracy"][:, real].max(0).mean()),
            "train_loss_real": curves["train_loss"][:, real].mean(1).tolist(),
            "train_loss_randY": curves["train_loss"][:, rand].mean(1).tolist()}
    return {"points": points, "keep_validation": keep_validation,
            "epochs": int(curves["train_loss"].shape[0])}


def evidence(summary: dict) -> list[dict]:
    """Claim 3: which regularizer lowers randY training accuracy most while keeping
    validation accuracy within `keep_validation` of the unregularized members."""
    points = summary["points"]
    base = points.get("none=0")
    if base is None:
        return []
    keep = summary["keep_validation"]
    best = {}
    for p in points.values():
        if p["regularizer"] == "none":
            continue
        if p["best_real_validation_accuracy"] >= base["best_real_validation_accuracy"] - keep:
            cur = best.get(p["regularizer"])
            if cur is None or p["final_randY_train_accuracy"] < cur["final_randY_train_accuracy"]:
                best[p["regularizer"]] = p
    if not best:
        return [{"claim": 3, "supports": False, "text": (
            f"regularization: no regularizer kept validation accuracy within {keep:.0%} of "
            f"{base['best_real_validation_accuracy']:.3f}")}]
    ranked = sorted(best.values(), key=lambda p: p["final_randY_train_accuracy"])
    top = ranked[0]
    dropout_like = top["regularizer"] in ("dropout", "dropout+adversarial")
    others = "; ".join(f"{_label(p)}: {p['final_randY_train_accuracy']:.3f}"
                       for p in ranked[1:])
    return [{"claim": 3, "supports": bool(dropout_like and top["final_randY_train_accuracy"]
                                          < base["final_randY_train_accuracy"]), "text": (
        f"regularization: without a regularizer final randY training accuracy is "
        f"{base['final_randY_train_accuracy']:.3f} (best validation "
        f"{base['best_real_validation_accuracy']:.3f}); keeping validation within {keep:.0%}, "
        f"{_label(top)} lowers it most, to {top['final_randY_train_accuracy']:.3f} (validation "
        f"{top['best_real_validation_accuracy']:.3f}); the other regularizers that keep "
        f"validation, at their lowest: {others or 'none'}")}]


def _figures(summary: dict, run_dir: RunDir) -> None:
    points = summary["points"]
    regs = list(dict.fromkeys(p["regularizer"] for p in points.values()))
    fig, (ax,) = new_figure(width=6.0, height=4.5)
    for i, reg in enumerate(regs):
        ps = [p for p in points.values() if p["regularizer"] == reg]
        ax.plot([p["best_real_validation_accuracy"] for p in ps],
                [p["final_randY_train_accuracy"] for p in ps], marker="*" if reg == "none" else "o",
                ls="-" if len(ps) > 1 else "", color=f"C{i}", label=reg, ms=10 if reg == "none" else 5)
        for p in ps:
            if reg != "none":
                ax.annotate(_label(p)[len(reg) + 1:], (p["best_real_validation_accuracy"],
                                                   p["final_randY_train_accuracy"]), fontsize=6)
    ax.set_xlabel("best validation accuracy (real data)")
    ax.set_ylabel("final training accuracy (randY)")
    ax.set_title("Regularizers vs memorization (Fig. 10)")
    ax.legend(fontsize=8)
    run_dir.save_figure(fig, "fig10_regularization.png")
    fig, axes = new_figure(ncols=len(regs), width=3.2)
    for ax, reg in zip(axes, regs):
        ps = [p for p in points.values() if p["regularizer"] == reg]
        for i, p in enumerate(ps):
            epochs = range(1, len(p["train_loss_randY"]) + 1)
            ax.plot(epochs, p["train_loss_randY"], color=f"C{i}", label=_label(p)[len(reg) + 1:])
            ax.plot(epochs, p["train_loss_real"], color=f"C{i}", ls="--", lw=1)
        ax.set_title(reg)
        ax.set_xlabel("epoch")
        ax.legend(fontsize=7)
    axes[0].set_ylabel("training loss (solid randY, dashed real)")
    run_dir.save_figure(fig, "fig11_training_loss.png")
