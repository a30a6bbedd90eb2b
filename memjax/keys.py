"""The key scheme: every random number in memjax comes from (seed, member, purpose, index).

member key = fold_in(key(seed), member_id), so member i's randomness never depends on how
many members run beside it (unlike split(root, M)); one stream per purpose =
fold_in(member_key, PURPOSE); per epoch and per step, fold_in(stream, epoch) then
fold_in(., step). The purposes: INIT (a member's parameters), DATA (its data order),
DROPOUT (stochastic layers), ATTACK (adversarial training's in-step search), NOISE
(study-level noise draws) and AUGMENT (the data augmentation of each training step,
memjax.augment: fold_in(epoch_stream(seed, member, AUGMENT, epoch), step), so a member's
augmented minibatches depend on (seed, member, epoch, step) alone). Streams that belong to
no member (a LASS search over the whole ensemble, a reference draw) come from `study_key`,
under a root that no member id reaches.

The trainer, `memjax.metrics.trainer_order`, both initializations and the tests'
references all derive their keys here.

Host-side draws on the data (which examples get noise, the noise itself, which examples a
dataset-size member keeps, the tracked examples) are numpy streams of the data seed, one
per purpose: `host_rng(data_seed, name)` = default_rng([data_seed, HOST_STREAMS[name]]).
"""
from __future__ import annotations

import jax
import numpy as np

INIT, DATA, DROPOUT, ATTACK, NOISE, AUGMENT = range(6)
_STUDY = 2 ** 32 - 1  # fold_in(root, _STUDY): above every member id
HOST_STREAMS = {"tracked examples": 0, "randY": 1, "randX": 2, "dataset size": 3,
                "noise order": 4}


def host_rng(data_seed: int, stream: str) -> np.random.Generator:
    """The numpy stream `stream` (a name of HOST_STREAMS) of the data seed."""
    return np.random.default_rng([data_seed, HOST_STREAMS[stream]])


def member_key(seed, member_id) -> jax.Array:
    """fold_in(key(seed), member_id): the root of member `member_id`'s streams."""
    return jax.random.fold_in(jax.random.key(seed), member_id)


def member_keys(seed, member_ids: jax.Array) -> jax.Array:
    """[M] member keys for member_ids [M]."""
    return jax.vmap(lambda i: member_key(seed, i))(member_ids)


def init_key(seed, member_id) -> jax.Array:
    """The key a member's parameters are initialized from."""
    return jax.random.fold_in(member_key(seed, member_id), INIT)


def epoch_stream(seed, member_id, purpose: int, epoch) -> jax.Array:
    """fold_in(fold_in(member key, purpose), epoch): a member's DROPOUT, ATTACK or AUGMENT
    stream in one epoch; fold_in it with the step."""
    return jax.random.fold_in(jax.random.fold_in(member_key(seed, member_id), purpose), epoch)


def order_key(seed, member_id, epoch, shared_order: bool = False) -> jax.Array:
    """The key of a member's data order in one epoch; shared_order: the root's DATA stream,
    the same for every member."""
    base = jax.random.key(seed) if shared_order else member_key(seed, member_id)
    return jax.random.fold_in(jax.random.fold_in(base, DATA), epoch)


def study_key(seed: int, purpose: int) -> jax.Array:
    """A typed key for a study-level stream (purpose: ATTACK, NOISE, ...) that no member's
    key or stream can equal: fold_in(fold_in(key(seed), 2^32 - 1), purpose)."""
    return jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), _STUDY), purpose)
