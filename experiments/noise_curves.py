"""E6 (Figs. 7-8): training and validation accuracy per epoch with 20/40/60/80 % input
noise or label noise.

    memjax run noise-curves --preset cpu [--dataset mnist --data-dir ../shared/data]

One ensemble: a member per (noise kind, level, seed), each seeing its own fraction of the
training set noised. After every epoch, its phase measures each member's accuracy
on its own (noisy) training set and on the real validation set. Under label noise the
validation accuracy should peak before the training accuracy gets high, then fall as the
noise is fitted, while the validation CSR (LASS, PAPER.md E5, on `csr_examples` validation
images searched as the authors did, `csr_protocol`) rises.
Presets: smoke (seconds); cpu (embedded 10k MNIST, MLP 2x256, 2 seeds per curve, 30 epochs,
lr 0.05: ~4 minutes on 2 cores); paper (MNIST 50k, MLP 2x4096, lr 0.01, 100 epochs; and
the CIFAR-10 CNN, `cnn=True`, trained in bf16 compute with float32 weights; training
accuracy, a full pass over the training set, every 5 epochs and after the last).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
import numpy as np

from memjax.config import (DataConfig, ModelConfig, TrainConfig, check_choices,
                          check_numbers, validate)
from memjax.data import load_dataset
from memjax.errors import MemjaxError
from memjax.experiments.figures import new_figure
from memjax.experiments.sweeps import (check_sweep_members, first_epoch_at_least, grid,
                                       measured)
from memjax.metrics import PAPER_LASS, PROTOCOLS
from memjax.measurements import CriticalSamples, Evaluation, OwnAccuracy
from memjax.phase import Data, Phase
from memjax.results import RunDir
from memjax.members import Members
from memjax.runner import Runner

# the paper's CNN schedule (the paper preset trains it in bf16)
CNN_TRAIN = TrainConfig(members=1, epochs=100, momentum=0.9, lr_halving_epochs=15)


# PAPER.md's experiment: `memjax reproduce` runs the studies that have one, in its order
EXPERIMENT = "E6"


@dataclass(frozen=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(members=1, epochs=100))
    seeds: int = 1  # members per sweep cell, each its own initialization and data order
    noise_levels: tuple[float, ...] = (0.2, 0.4, 0.6, 0.8)
    noise_kinds: tuple[str, ...] = ("randX", "randY")
    # The CIFAR-10 CNN part (Fig. 8), run after the MLP part when cnn=True.
    cnn: bool = False
    cnn_data: DataConfig = field(default_factory=lambda: DataConfig(name="cifar10"))
    cnn_model: ModelConfig = field(default_factory=lambda: ModelConfig(kind="cnn", batchnorm=True))
    cnn_train: TrainConfig = CNN_TRAIN
    high_train_accuracy: float = 0.9  # "training accuracy gets high"
    csr_examples: int | None = 500  # validation images searched by LASS each epoch
    csr_iterations: int = 100
    csr_protocol: str = "authors"  # memjax.metrics.PROTOCOLS (see memjax.metrics.lass)
    # epochs between measurements of training accuracy (a full pass over the training set;
    # always after the last epoch, NaN in the curves between)
    own_accuracy_every: int = 1


PAPER = Config(data=DataConfig(name="mnist"), model=ModelConfig(hidden=(4096, 4096)),
               train=TrainConfig(members=1, epochs=100), cnn=True,
               cnn_train=replace(CNN_TRAIN, compute_dtype="bfloat16"), own_accuracy_every=5)
PRESETS = {
    "smoke": replace(PAPER, data=DataConfig(train_size=512, validation_size=256),
                     model=ModelConfig(hidden=(32, 32)),
                     train=replace(PAPER.train, epochs=3, batch_size=64, learning_rate=0.1),
                     noise_levels=(0.5,), csr_examples=32, csr_iterations=5, cnn=False,
                     cnn_train=CNN_TRAIN, own_accuracy_every=1),
    "cpu": replace(PAPER, data=DataConfig(), model=ModelConfig(hidden=(256, 256)),
                   train=replace(PAPER.train, epochs=30, learning_rate=0.05), seeds=2,
                   cnn=False, cnn_train=CNN_TRAIN, own_accuracy_every=1),
    "paper": PAPER,
}


def _parts(config: Config) -> list[tuple]:
    parts = [("mlp", config.data, config.model, config.train)]
    if config.cnn:
        parts.append(("cnn", config.cnn_data, config.cnn_model, config.cnn_train))
    return parts


def _members(config: Config):
    """The conditions, each member's noise kind and level, and the Members of a part."""
    conds = [("real", 0.0)] + [(k, p) for k in config.noise_kinds for p in config.noise_levels]
    cells = grid(cond=list(range(len(conds))), repeat=list(range(config.seeds)))
    kind = np.array([conds[c][0] for c in cells["cond"]])
    level = np.array([conds[c][1] for c in cells["cond"]], float)
    return conds, kind, level, Members(np.arange(len(kind)),
                                       input_noise=np.where(kind == "randX", level, 0.0),
                                       label_noise=np.where(kind == "randY", level, 0.0))


def phases(config: Config) -> list[Phase]:
    """Per part (the MLP, and the CNN unless cnn=False): every member trained on its noised
    training set, and after each epoch its accuracy on that set (every
    `own_accuracy_every` epochs and after the last, else NaN), its validation accuracy on
    real data, and its validation CSR (LASS with the paper's r, alpha, beta on
    `csr_examples` validation images, searched as `csr_protocol` says: under "authors"
    scaled as their callback scaled them, memjax.measurements.CriticalSamples)."""
    members = _members(config)[3]
    return [Phase(f"noise-curves-{name}", model, train, Data(data), members,
                  desc=f"noise curves ({name})", measurements=(
                      OwnAccuracy("train_accuracy", every=config.own_accuracy_every),
                      Evaluation("validation_accuracy", on="validation"),
                      CriticalSamples("validation_csr", protocol=config.csr_protocol,
                                      examples=config.csr_examples,
                                      **{**PAPER_LASS, "max_iterations": config.csr_iterations})))
            for name, data, model, train in _parts(config)]


def check(config: Config) -> None:
    """The checks the config alone allows, before anything runs (MemjaxError)."""
    validate(config)
    check_numbers(config, positive=("seeds", "csr_examples", "csr_iterations",
                                    "own_accuracy_every"),
                  fractions=("noise_levels", "high_train_accuracy"), distinct=("noise_levels",))
    check_choices("noise_kinds", config.noise_kinds, ("randX", "randY"))
    check_choices("csr_protocol", (config.csr_protocol,), tuple(PROTOCOLS))
    check_sweep_members(config)



def run(config: Config, run_dir: RunDir) -> dict:
    check(config)
    parts = _parts(config)
    datasets = [load_dataset(data) for _, data, *_ in parts]  # all at hand before any trains
    for (name, *_), dataset in zip(parts, datasets):
        if config.csr_examples is not None and config.csr_examples > len(dataset.validation):
            raise MemjaxError(f"csr_examples={config.csr_examples} is more than the "
                              f"{len(dataset.validation)} validation images of the {name} "
                              f"part (None: all of them)")
    summary, arrays, seconds, examples = {}, {}, 0.0, 0.0
    for (name, _, model, _), dataset, phase in zip(parts, datasets, phases(config)):
        s, a, runner = _run_part(name, model.kind, dataset, phase, config, run_dir)
        summary.update(s)
        arrays.update(a)
        seconds += runner.seconds
        examples += runner.model_examples
    run_dir.write_npz("results.npz", arrays)
    run_dir.write_json("summary.json", summary)
    _figure(summary, run_dir)
    return {"summary": summary, "model_examples_per_second": examples / max(seconds, 1e-9)}


def _run_part(name, model, dataset, phase, config, run_dir):
    conds, kind, level, _ = _members(config)
    names = ("train_accuracy", "validation_accuracy", "validation_csr")

    def log(epoch, record):
        return {"part": name, "epoch": epoch, "train_loss": record["train_loss"],
                **{k: record[k].tolist() for k in names}}

    outcome = Runner.of(phase, dataset).execute(run_dir, log=log)
    runner, history = outcome.runner, outcome.history
    curves = {k: history[k] for k in names}  # [epochs, M]
    summary = {}
    for k, p in conds:
        sel = (kind == k) & np.isclose(level, p)
        tr, va = curves["train_accuracy"][:, sel].mean(1), curves["validation_accuracy"][:, sel].mean(1)
        csr = curves["validation_csr"][:, sel].mean(1)
        peak = int(np.argmax(va)) + 1
        summary[f"{name}_{k}_{p:g}"] = {
            "part": name, "model": model, "kind": k, "level": p, "train_accuracy": tr.tolist(),
            "validation_accuracy": va.tolist(), "peak_validation_accuracy": float(va.max()),
            "validation_csr": csr.tolist(), "final_validation_csr": float(csr[-1]),
            "peak_epoch": peak, "final_validation_accuracy": float(va[-1]),
            "final_train_accuracy": float(tr[-1]), "epochs": len(tr),
            "high_train_accuracy": config.high_train_accuracy,
            "epoch_train_accuracy_high": first_epoch_at_least(tr, config.high_train_accuracy)}
    arrays = {f"{name}_kind": kind, f"{name}_level": level,
              **{f"{name}_{k}": v for k, v in curves.items()}}
    return summary, arrays, runner


def evidence(summary: dict) -> list[dict]:
    """Claim 2: under label noise, validation accuracy peaks before the noise is fitted."""
    lines = []
    for part in sorted({v["part"] for v in summary.values()}):
        noisy = [v for v in summary.values() if v["part"] == part and v["kind"] == "randY"]
        if not noisy:
            continue
        v = max(noisy, key=lambda v: v["level"])
        high = v["epoch_train_accuracy_high"]
        # training accuracy measured every few epochs: "before" only if the peak came no
        # later than the last epoch it was measured still below the threshold
        epochs, _ = measured(v["train_accuracy"])
        low = int(epochs[epochs < high].max()) if high is not None and high > epochs[0] else 0
        early = high is None or v["peak_epoch"] <= low
        fell = v["final_validation_accuracy"] < v["peak_validation_accuracy"] - 0.005
        if high is not None:
            when = ("before" if early else "after" if v["peak_epoch"] >= high
                    else "not clearly before")
            order = (f"{when} training accuracy reached "
                     f"{v['high_train_accuracy']:.0%} at epoch {high}")
            if high - low > 1:
                order += f" (measured every few epochs: still below it at epoch {low})"
        else:
            order = (f"while training accuracy was still below {v['high_train_accuracy']:.0%} "
                     f"({v['final_train_accuracy']:.0%} at epoch {v['epochs']})")
        lines.append({"claim": 2, "supports": bool(early and fell), "text": (
            f"noise-curves ({part}, {v['level']:.0%} label noise): validation accuracy peaked "
            f"at epoch {v['peak_epoch']} ({v['peak_validation_accuracy']:.3f}), {order}, then "
            f"{'fell' if fell else 'stayed'} to {v['final_validation_accuracy']:.3f} by epoch "
            f"{v['epochs']}")})
        real = [r for r in summary.values() if r["part"] == part and r["kind"] == "real"]
        if real and "final_validation_csr" in v:
            r = real[0]
            higher = v["final_validation_csr"] > r["final_validation_csr"]
            lines.append({"claim": 1, "supports": bool(higher), "text": (
                f"noise-curves ({part}): validation CSR after {v['epochs']} epochs is "
                f"{v['final_validation_csr']:.3f} with {v['level']:.0%} label noise against "
                f"{r['final_validation_csr']:.3f} on real data (from "
                f"{v['validation_csr'][0]:.3f} at epoch 1)")})
    return lines


def _title(part: str, summary: dict) -> str:
    """The part's model: MLP, CNN, or the kind of another (an outside model's factory)."""
    kind = next((v.get("model", part) for v in summary.values() if v["part"] == part), part)
    return {"mlp": "MLP", "cnn": "CNN", "paper-cnn": "CNN"}.get(kind, kind)


def _figure(summary: dict, run_dir: RunDir) -> None:
    panels = sorted({(v["part"], v["kind"]) for v in summary.values() if v["kind"] != "real"})
    fig, axes = new_figure(ncols=max(len(panels), 1), width=4.5)
    for ax, (part, k) in zip(axes, panels):
        for i, v in enumerate(x for x in summary.values()
                              if x["part"] == part and x["kind"] in (k, "real")):
            label = "real" if v["kind"] == "real" else f"{v['level']:.0%}"
            ax.plot(*measured(v["train_accuracy"]), color=f"C{i}", ls="--", lw=1)
            ax.plot(*measured(v["validation_accuracy"]), color=f"C{i}", label=label)
        ax.set_xlabel("epoch")
        ax.set_ylabel("accuracy (solid: validation, dashed: train)")
        ax.set_title(f"{_title(part, summary)}, {k} (Figs. 7-8)")
        ax.legend(fontsize=8)
    run_dir.save_figure(fig, "fig7_noise_curves.png")
    fig, axes = new_figure(ncols=max(len(panels), 1), width=4.5)
    for ax, (part, k) in zip(axes, panels):
        for i, v in enumerate(x for x in summary.values()
                              if x["part"] == part and x["kind"] in (k, "real")):
            label = "real" if v["kind"] == "real" else f"{v['level']:.0%}"
            ax.plot(range(1, len(v["validation_csr"]) + 1), v["validation_csr"], color=f"C{i}",
                    label=label)
        ax.set_xlabel("epoch")
        ax.set_ylabel("validation critical sample ratio")
        ax.set_title(f"{_title(part, summary)}, {k}: CSR (Figs. 7-8)")
        ax.legend(fontsize=8)
    run_dir.save_figure(fig, "fig8_noise_csr.png")
