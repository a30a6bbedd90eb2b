"""E8 (Fig. 2): first-layer CNN filters after training on real data and on randY.

    memjax run filters --preset cpu --dataset cifar10 --data-dir ../shared/data

Trains CNN members (one ensemble) on real data and on randY (every label random), then draws
the first-layer 5x5 filters of one member of each as an image grid. Filters learned on real
data should look structured (smooth edges, colour blobs); on randY they stay noise-like. The
summary measures that: the correlation between horizontally and vertically adjacent weights
of what training added to each filter (final - initial), averaged over filters.
Presets: smoke (seconds, embedded MNIST, 4 channels); cpu (CIFAR-10 1000 examples, 16
channels, 8 epochs, batch 32, SGD momentum 0.9 lr 0.01: ~4 minutes on 2 shared cores; needs
cifar10.npz in --data-dir / $MEMJAX_DATA_DIR); paper (CIFAR-10 45k, 200 channels, 50 epochs, lr halved
every 15, bf16 compute with float32 weights).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from memjax.config import DataConfig, ModelConfig, TrainConfig, check_numbers, validate
from memjax.data import load_dataset
from memjax.errors import MemjaxError
from memjax.experiments.figures import new_figure
from memjax.experiments.sweeps import check_sweep_members
from memjax.measurements import OwnAccuracy
from memjax.phase import Data, Phase
from memjax.results import RunDir
from memjax.members import Members
from memjax.runner import Runner


# PAPER.md's experiment: `memjax reproduce` runs the studies that have one, in its order
EXPERIMENT = "E8"


@dataclass(frozen=True)
class Config:
    data: DataConfig = field(default_factory=lambda: DataConfig(name="cifar10"))
    model: ModelConfig = field(default_factory=lambda: ModelConfig(kind="cnn", batchnorm=True))
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        members=1, epochs=50, momentum=0.9, lr_halving_epochs=15, compute_dtype="bfloat16"))
    shown: int = 64  # filters drawn per member
    seeds: int = 1  # members trained on each of real data and randY


PAPER = Config()
PRESETS = {
    "smoke": replace(PAPER, data=DataConfig(train_size=128, validation_size=32),
                     model=replace(PAPER.model, conv_channels=4, batchnorm=False),
                     train=replace(PAPER.train, epochs=1, batch_size=32,
                                   lr_halving_epochs=None, compute_dtype="float32"),
                     shown=4),
    # XLA's CPU convolutions train this CNN at only ~40-80 examples/s on 2 cores: small.
    "cpu": replace(PAPER, data=replace(PAPER.data, train_size=1000, validation_size=500),
                   model=replace(PAPER.model, conv_channels=16, batchnorm=False),
                   train=replace(PAPER.train, epochs=8, batch_size=32,
                                 lr_halving_epochs=None, compute_dtype="float32"),
                   shown=16),
    "paper": PAPER,
}


def adjacent_correlation(delta: np.ndarray) -> np.ndarray:
    """Per filter, the correlation between horizontally and vertically adjacent weights.

    delta: [kh, kw, in_channels, filters]. Returns [filters] in [-1, 1]: near 0 for i.i.d.
    noise, positive for smooth (spatially structured) filters."""
    out = []
    for f in np.moveaxis(delta, -1, 0):
        a = np.concatenate([f[:, :-1].ravel(), f[:-1, :].ravel()])
        b = np.concatenate([f[:, 1:].ravel(), f[1:, :].ravel()])
        out.append(np.corrcoef(a, b)[0, 1] if a.std() > 0 and b.std() > 0 else 0.0)
    return np.asarray(out)


def check(config: Config) -> None:
    """The checks the config alone allows, before anything runs (MemjaxError)."""
    validate(config)
    check_numbers(config, positive=("seeds", "shown"))
    check_sweep_members(config)
    if config.model.kind not in ("cnn", "paper-cnn"):
        raise MemjaxError("filters needs model.kind=cnn (the paper's CNN)")



def member_data(config: Config) -> tuple[np.ndarray, Members]:
    """The data of each member (real, then randY) and the Members."""
    data = np.array(["real"] * config.seeds + ["randY"] * config.seeds)
    return data, Members(np.arange(len(data)), label_noise=(data == "randY").astype(float))


def phases(config: Config) -> list[Phase]:
    """Every member in one ensemble, trained for `train.epochs`; each member's accuracy on
    its own training set after the last epoch."""
    _, members = member_data(config)
    return [Phase("filters", config.model, config.train, Data(config.data), members,
                  measurements=(OwnAccuracy("own_accuracy", every=config.train.epochs),))]


def run(config: Config, run_dir: RunDir) -> dict:
    check(config)
    dataset = load_dataset(config.data)
    reps = config.seeds
    data, _ = member_data(config)
    (phase,) = phases(config)
    runner = Runner.of(phase, dataset)
    initial = np.asarray(runner.variables["params"]["Conv_0"]["kernel"])[:2 * reps]
    # the log shows the trainer's running accuracy; the summary's training accuracy is a
    # full pass after the last epoch, the one it reads
    history = runner.execute(run_dir, log=lambda epoch, record: {
        "epoch": epoch, "train_accuracy": record["train_accuracy"].tolist(),
        "train_loss": record["train_loss"].tolist()}).history
    last = {"train_accuracy": history["own_accuracy"][-1]}
    final = np.asarray(runner.member_state().variables["params"]["Conv_0"]["kernel"])
    corr = np.stack([adjacent_correlation(final[m] - initial[m]) for m in range(2 * reps)])
    summary = {d: {"adjacent_correlation_of_learned_change": float(corr[data == d].mean()),
                   "final_train_accuracy": float(last["train_accuracy"][data == d].mean())}
               for d in ("real", "randY")}
    run_dir.write_npz("results.npz", {"data": data, "initial_kernel": initial,
                                      "final_kernel": final, "adjacent_correlation": corr})
    run_dir.write_json("summary.json", summary)
    _figure(final, data, config.shown, run_dir)
    return {"summary": summary,
            "model_examples_per_second": runner.throughput}


def filter_grid(kernel: np.ndarray, shown: int) -> np.ndarray:
    """kernel [kh, kw, C, F] -> one image [rows*(kh+1), cols*(kw+1), 3 or 1] in [0, 1],
    each filter min-max scaled on its own."""
    kh, kw, c, f = kernel.shape
    n = min(shown, f)
    cols = int(np.ceil(np.sqrt(n)))
    rows = -(-n // cols)
    image = np.ones((rows * (kh + 1), cols * (kw + 1), c))
    for i in range(n):
        w = kernel[..., i]
        w = (w - w.min()) / max(w.max() - w.min(), 1e-12)
        r, q = divmod(i, cols)
        image[r * (kh + 1):r * (kh + 1) + kh, q * (kw + 1):q * (kw + 1) + kw] = w
    return image if c == 3 else image[..., 0]


def _figure(final: np.ndarray, data: np.ndarray, shown: int, run_dir: RunDir) -> None:
    fig, axes = new_figure(ncols=2, width=4.0, height=4.2)
    for ax, d in zip(axes, ("real", "randY")):
        m = int(np.flatnonzero(data == d)[0])
        image = filter_grid(final[m], shown)
        ax.imshow(image, cmap=None if image.ndim == 3 else "gray", interpolation="nearest")
        ax.set_title(f"first-layer filters, {d} (Fig. 2)")
        ax.axis("off")
    run_dir.save_figure(fig, "fig2_filters.png")


def evidence(summary: dict) -> list[dict]:
    """Claim 1: real-data filters are structured, randY filters noise-like."""
    r = summary["real"]["adjacent_correlation_of_learned_change"]
    n = summary["randY"]["adjacent_correlation_of_learned_change"]
    return [{"claim": 1, "supports": bool(r > n + 0.05), "text": (
        f"filters: what training added to the first-layer filters has adjacent-weight "
        f"correlation {r:.2f} on real data and {n:.2f} on randY "
        f"(training accuracy {summary['real']['final_train_accuracy']:.2f} / "
        f"{summary['randY']['final_train_accuracy']:.2f})")}]
