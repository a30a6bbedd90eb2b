"""What the sweep studies (capacity, convergence, noise-curves, regularization) share: a
sweep is one ensemble (or a few buckets of members of similar cost), each member with its
own width, dataset size, noise and regularizer strengths, trained epoch by epoch with a
per-epoch callback.

For sweeps, `train.members` is the number of members per sweep cell (seeds), not the size
of the ensemble.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable

import jax
import numpy as np

from memjax.config import ModelConfig, TrainConfig
from memjax.data import Dataset, Split
from memjax.ensemble import EnsembleState, init_ensemble, make_optimizer
from memjax.errors import MemjaxError
from memjax.members import (MemberView, NoiseSource, init_width_ensemble, noise_masks,
                            noise_source, set_regularization)
from memjax.models import Network, build_network
from memjax.results import RunDir
from memjax.sharding import to_host
from memjax.train import make_train_epoch


@dataclasses.dataclass
class Sweep:
    """A compiled-once ensemble and everything its epochs need (device arrays)."""

    network: Network
    state: EnsembleState
    train_epoch: Callable
    seed: int
    x: jax.Array
    y: jax.Array
    view: MemberView
    noise: NoiseSource | None
    examples_per_epoch: float = 0.0  # summed over members
    seconds: float = 0.0
    model_examples: float = 0.0

    def epoch(self) -> dict[str, np.ndarray]:
        start = time.perf_counter()
        self.state, metrics = self.train_epoch(self.state, self.seed, self.x, self.y,
                                               self.view, self.noise)
        metrics = to_host(metrics)  # every process: the members of other hosts too
        self.seconds += time.perf_counter() - start
        self.model_examples += self.examples_per_epoch
        return metrics


def make_sweep(model: ModelConfig, train: TrainConfig, dataset: Dataset, split: Split,
               member_ids: np.ndarray, *, widths: np.ndarray | None = None,
               input_noise: np.ndarray | None = None, label_noise: np.ndarray | None = None,
               example_mask: np.ndarray | None = None, regularized: bool = False,
               strengths: dict[str, np.ndarray] | None = None,
               weight_decay: np.ndarray | float | None = None,
               adversarial_weight: np.ndarray | None = None, data_seed: int = 0,
               input_stats: str = "per_pixel") -> Sweep:
    """One ensemble of the members `member_ids` [M]; every other array is [M] per member:
    widths (hidden units, MLP), input_noise / label_noise (fractions of the member's
    training set replaced by randX / randY), example_mask [M, N], regularizer strengths,
    weight decay, adversarial weight."""
    if train.batch_size > len(split):
        raise MemjaxError(f"batch size {train.batch_size} is larger than the "
                          f"{len(split)} training examples")
    ids = np.asarray(member_ids)
    tx = make_optimizer(train.momentum)
    example = np.zeros((1,) + split.x.shape[1:], np.float32)
    wd = train.weight_decay if weight_decay is None else weight_decay
    if widths is not None:
        network, state = init_width_ensemble(model, dataset.num_classes, tx, example,
                                             seed=train.seed, member_ids=ids, widths=widths,
                                             learning_rate=train.learning_rate,
                                             weight_decay=wd, regularized=regularized)
    else:
        network = build_network(model, dataset.num_classes, regularized=regularized)
        state = init_ensemble(network, tx, example, seed=train.seed, member_ids=ids,
                              learning_rate=train.learning_rate, weight_decay=wd)
    if strengths:
        state = state.replace(variables=set_regularization(state.variables, **strengths))
    n = len(split)
    to_mask = lambda f: None if f is None or not np.any(f) else jax.device_put(
        noise_masks(f, n, data_seed, example_mask))
    view = MemberView(
        example_mask=None if example_mask is None else jax.device_put(example_mask),
        input_noise_mask=to_mask(input_noise), label_noise_mask=to_mask(label_noise),
        adversarial_weight=None if adversarial_weight is None or not np.any(adversarial_weight)
        else jax.device_put(np.asarray(adversarial_weight, np.float32)))
    noise = None
    if view.input_noise_mask is not None or view.label_noise_mask is not None:
        source = noise_source(split, dataset.num_classes, data_seed, input_stats)
        noise = jax.device_put(NoiseSource(
            source.x if view.input_noise_mask is not None else None,
            source.y if view.label_noise_mask is not None else None))
    train_epoch = make_train_epoch(network, tx, batch_size=train.batch_size,
                                   shared_order=train.shared_order,
                                   lr_halving_epochs=train.lr_halving_epochs,
                                   member_chunk=train.member_chunk,
                                   compute_dtype=train.compute_dtype)
    per_epoch = float(len(ids) * n if example_mask is None else np.sum(example_mask))
    return Sweep(network, state, train_epoch, train.seed, jax.device_put(split.x),
                 jax.device_put(split.y), view, noise, per_epoch)


def run_epochs(sweep: Sweep, epochs: int, on_epoch: Callable[[int, dict], bool | None], *,
               desc: str, run_dir: RunDir | None = None, history: dict | None = None,
               on_restore: Callable[[], None] | None = None) -> int:
    """Train up to `epochs` epochs; after each, on_epoch(epoch, train_metrics) may return
    True to stop early. Returns the number of epochs run in all.

    run_dir: checkpoint this phase (see experiments.common.train_ensemble) and, on resume,
    restore sweep.state and `history` (the study's per-epoch records, name -> list, that
    on_epoch appends to), then call on_restore() so the study can rebuild what it derives
    from them. A phase that stopped early is not trained further on resume.
    """
    from tqdm.auto import tqdm

    history = {} if history is None else history
    checkpoints = None
    if run_dir is not None:
        restored_from = int(sweep.state.epoch)
        checkpoints, sweep.state = run_dir.open_phase(desc, sweep.state, epochs, history)
        if on_restore is not None and int(sweep.state.epoch) != restored_from:
            on_restore()
    done = int(sweep.state.epoch)
    try:
        if history.get("stopped"):
            return done
        for _ in tqdm(range(done, epochs), desc=desc, unit="epoch", leave=False,
                      mininterval=1.0):
            metrics = sweep.epoch()
            done = int(sweep.state.epoch)
            stop = bool(on_epoch(done, metrics))
            if stop:
                history["stopped"] = [True]
            if checkpoints is not None:
                checkpoints.save(sweep.state, force=stop or done == epochs)
            if stop:
                break
    finally:
        if checkpoints is not None:
            checkpoints.close()
    return done


def width_buckets(widths: np.ndarray, limits: tuple[int, ...]) -> list[tuple[int, np.ndarray]]:
    """Group members by width so that cheap members don't pay for the widest one: bucket
    b holds the widths in (limits[b-1], limits[b]] and runs as a masked MLP of its largest
    member width. Returns [(model width, member indices)], non-empty buckets only."""
    widths = np.asarray(widths)
    edges = sorted(limits)
    if widths.max() > edges[-1]:
        edges.append(int(widths.max()))
    out, lower = [], 0
    for upper in edges:
        rows = np.flatnonzero((widths > lower) & (widths <= upper))
        if rows.size:
            out.append((int(widths[rows].max()), rows))
        lower = upper
    return out


def grid(**axes: Any) -> dict[str, np.ndarray]:
    """Cartesian product of named axes, one row per member: grid(a=[1, 2], b=[x, y]) ->
    {"a": [1, 1, 2, 2], "b": [x, y, x, y]}."""
    names = list(axes)
    mesh = np.meshgrid(*[np.arange(len(axes[n])) for n in names], indexing="ij")
    return {n: np.asarray(axes[n], dtype=object)[m.ravel()] for n, m in zip(names, mesh)}


def first_epoch_at_least(curve: np.ndarray, threshold: float) -> int | None:
    """1-based epoch at which a per-epoch curve first reaches threshold (None: never)."""
    hits = np.flatnonzero(np.asarray(curve) >= threshold)
    return int(hits[0]) + 1 if hits.size else None
