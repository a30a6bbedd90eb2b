"""Time to convergence (E4): the first epoch each member reaches a training accuracy, members
that converged frozen, and members that hit the epoch cap reported as censored.

State is three [M] arrays kept on the device; the host looks once per epoch (to stop early
when every member has converged).
"""
from __future__ import annotations

import flax
import jax
import jax.numpy as jnp
import numpy as np

from memjax.ensemble import EnsembleState

NOT_CONVERGED = -1


@flax.struct.dataclass
class Convergence:
    """first_epoch: [M] int32, the first epoch (1-based) whose end-of-epoch training accuracy
    reached the threshold, NOT_CONVERGED (-1) until then. base_lr: [M] the learning rates the
    members had before any was frozen."""

    first_epoch: jax.Array
    base_lr: jax.Array

    @property
    def converged(self) -> jax.Array:
        return self.first_epoch != NOT_CONVERGED


def start(state: EnsembleState) -> Convergence:
    # a copy: the train step donates the state, learning rates included
    return Convergence(jnp.full(state.learning_rate.shape, NOT_CONVERGED, jnp.int32),
                       jnp.copy(state.learning_rate))


@jax.jit
def update(tracker: Convergence, accuracy: jax.Array, epoch: jax.Array,
           threshold: float) -> Convergence:
    """Record `epoch` for members whose accuracy [M] (fraction in [0, 1]) reached threshold
    for the first time; earlier records are kept."""
    newly = (~tracker.converged) & (accuracy >= threshold)
    return tracker.replace(first_epoch=jnp.where(newly, epoch.astype(jnp.int32),
                                                 tracker.first_epoch))


@jax.jit
def freeze(state: EnsembleState, tracker: Convergence) -> EnsembleState:
    """Learning rate 0 for converged members: their SGD steps (momentum and weight decay
    included, both scaled by the learning rate) leave the parameters unchanged. They are
    still computed inside the vmap; only the whole loop stops when all have converged."""
    return state.replace(learning_rate=jnp.where(tracker.converged, 0.0, tracker.base_lr))


def epochs_to_converge(first_epoch: np.ndarray, cap: int) -> dict[str, np.ndarray]:
    """Host-side result: {"epochs": [M] float (NaN where censored), "censored": [M] bool
    (hit the cap of `cap` epochs without converging; never counted as converged)}."""
    first_epoch = np.asarray(first_epoch)
    censored = first_epoch == NOT_CONVERGED
    return {"epochs": np.where(censored, np.nan, first_epoch.astype(float)),
            "censored": censored, "cap": np.full(first_epoch.shape, cap)}
