"""What every study shares: the shared command-line flags, building an ensemble from a
config, and small figure helpers."""
from __future__ import annotations

import dataclasses
import re
import time
from typing import Any

import jax
import numpy as np

from memjax.config import ModelConfig, TrainConfig, check_positive
from memjax.data import Dataset, Split
from memjax.ensemble import EnsembleState, init_ensemble, make_optimizer
from memjax.errors import MemjaxError
from memjax.models import Network, build_network
from memjax.results import RunDir
from memjax.sharding import default_mesh, replicate, shard_members, to_host
from memjax.train import fit, make_train_epoch

# The flags every `memjax run NAME` accepts, and the config field each one sets.
SHARED_FLAGS = {"dataset": "data.name", "data_dir": "data.data_dir",
                "members": "train.members", "seed": "train.seed"}


def check_train(train: TrainConfig, num_examples: int) -> None:
    check_positive(members=train.members, epochs=train.epochs, batch_size=train.batch_size,
                   member_chunk=train.member_chunk, eval_chunk=train.eval_chunk)
    if train.batch_size > num_examples:
        raise MemjaxError(f"batch size {train.batch_size} is larger than the "
                          f"{num_examples} training examples")
    if train.compute_dtype not in ("float32", "bfloat16"):
        raise MemjaxError(f"compute_dtype must be float32 or bfloat16, got {train.compute_dtype!r}")
    if train.learning_rate <= 0:
        raise MemjaxError(f"learning rate must be positive, got {train.learning_rate}")


@dataclasses.dataclass
class TrainedEnsemble:
    network: Network
    state: EnsembleState
    seconds: float
    model_examples: int

    @property
    def throughput(self) -> float:
        """Model-examples trained per second."""
        return self.model_examples / max(self.seconds, 1e-9)


def train_ensemble(model: ModelConfig, train: TrainConfig, dataset: Dataset, split: Split, *,
                   desc: str, on_epoch=None, learning_rate: Any = None,
                   run_dir: "RunDir | None" = None,
                   history: dict[str, list] | None = None) -> TrainedEnsemble:
    """Initialize `train.members` members and train them on `split` for `train.epochs`.

    run_dir: when given, the phase is checkpointed under run_dir/checkpoints/ and, when the
    run is resumed, continues from its newest checkpoint (a finished phase is not trained
    again); members that diverged are reported to run_dir. Studies should pass it.
    history: the study's per-epoch records that `on_epoch` appends to (name -> list); they
    are checkpointed with the state and restored in place on resume.
    """
    check_train(train, len(split))
    network = build_network(model, dataset.num_classes)
    tx = make_optimizer(train.momentum)
    example = np.zeros((1,) + split.x.shape[1:], np.float32)
    state = init_ensemble(network, tx, example, seed=train.seed,
                          member_ids=np.arange(train.members),
                          learning_rate=train.learning_rate if learning_rate is None else learning_rate,
                          weight_decay=train.weight_decay)
    train_epoch = make_train_epoch(network, tx, batch_size=train.batch_size,
                                   shared_order=train.shared_order,
                                   lr_halving_epochs=train.lr_halving_epochs,
                                   member_chunk=train.member_chunk,
                                   compute_dtype=train.compute_dtype)
    checkpoints = None
    if run_dir is not None:
        checkpoints, state = run_dir.open_phase(desc, state, train.epochs, history)
    remaining = train.epochs - int(state.epoch)
    # Members split over every device (sharding.default_mesh), the data copied to each.
    mesh = default_mesh(train.members)
    state = shard_members(state, mesh, train.members)
    x, y = replicate((split.x, split.y), mesh)
    # Compile ahead so the measured throughput is training alone.
    if remaining > 0:
        train_epoch = train_epoch.lower(state, train.seed, x, y).compile()
    start = time.perf_counter()
    try:
        state = fit(state, train_epoch, train.seed, x, y, max(remaining, 0), on_epoch=on_epoch,
                    desc=desc, checkpoints=checkpoints)
        jax.block_until_ready(state.variables)
    finally:
        if checkpoints is not None:
            checkpoints.close()
    seconds = time.perf_counter() - start
    if run_dir is not None:
        diverged, ids = to_host((state.diverged, state.member_ids))
        # named by the phase, without the progress bar's "(i/n)" counter
        phase = re.sub(r" \(\d+/\d+\)$", "", desc)
        run_dir.record_divergence(phase, np.asarray(diverged), np.asarray(ids))
    return TrainedEnsemble(network, state, seconds,
                           train.members * len(split) * max(remaining, 0))


def new_figure(ncols: int = 1, width: float = 5.0, height: float = 3.6):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, ncols, figsize=(width * ncols, height), squeeze=False,
                             layout="constrained")  # colorbars and labels never overlap
    return fig, axes[0]
