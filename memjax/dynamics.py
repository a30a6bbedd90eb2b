"""Training-dynamics records: per-example statistics accumulated inside the training step
from the logits it already computes (no stored per-epoch logits, no extra forward pass).

Each presentation of example n to a member (its row in a minibatch) adds to that member's
records: whether it was classified correctly, its margin (assigned logit minus the largest
other logit, on logits as AUM defines it), p(y | x) and its square (data maps), a
forgetting event when it was correct at its previous presentation and is not now, and the
epochs of its first correct and last incorrect presentation. The records live in the
ensemble's state, so checkpoints carry them and a resumed run continues them exactly.
`scores` turns them into the scores of memjax.metrics.scores (forgetting events, AUM,
confidence / variability / correctness, first-learned and learned-for-good epochs), with
the same definitions: the records are the training-mode logits of each presentation, as
forgetting (Toneva et al.) and AUM (Pleiss et al.) record them.
"""
from __future__ import annotations

import warnings

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax


@flax.struct.dataclass
class Dynamics:
    """One member's records over the N training examples (stacked: [M, N] each).

    presentations, correct, forgetting: int32 counts. last_correct: bool, the outcome of
    the latest presentation. first_learned: int32, the 1-based epoch of the first correct
    presentation (-1: none yet). last_incorrect: int32, the 1-based epoch of the latest
    incorrect presentation (0: none). margin_sum, prob_sum, prob_sq_sum: float32 sums over
    presentations of the margin, of p(y | x) and of its square.
    """

    presentations: jax.Array
    correct: jax.Array
    forgetting: jax.Array
    last_correct: jax.Array
    first_learned: jax.Array
    last_incorrect: jax.Array
    margin_sum: jax.Array
    prob_sum: jax.Array
    prob_sq_sum: jax.Array


@jax.jit
def margin(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Assigned logit minus the largest other logit (the AUM margin; on logits, not softmax
    probabilities). Positive iff the assigned label is the unique arg max.

    logits: [..., N, C] (C >= 2). labels: [N] int (or any shape that broadcasts to
    logits.shape[:-1]), the assigned (possibly noisy) labels. Returns [..., N] float32, in
    logit units.

    Follows asappresearch/aum (aum/aum.py, `AUMCalculator.update`: gather the target logit,
    scatter -inf over it, max of the rest).
    """
    z = logits.astype(jnp.float32)
    y = jnp.broadcast_to(labels, z.shape[:-1])
    is_label = jax.nn.one_hot(y, z.shape[-1], dtype=bool)
    assigned = jnp.take_along_axis(z, y[..., None], axis=-1)[..., 0]
    other = jnp.where(is_label, -jnp.inf, z).max(-1)
    return assigned - other


def empty(members: int, num_examples: int) -> Dynamics:
    """Records of `members` members that have seen nothing yet: [members, num_examples]."""
    shape = (members, num_examples)
    zeros = lambda dtype: jnp.zeros(shape, dtype)
    return Dynamics(zeros(jnp.int32), zeros(jnp.int32), zeros(jnp.int32), zeros(bool),
                    jnp.full(shape, -1, jnp.int32), zeros(jnp.int32), zeros(jnp.float32),
                    zeros(jnp.float32), zeros(jnp.float32))


def update(records: Dynamics, idx: jax.Array, counted: jax.Array, logits: jax.Array,
           labels: jax.Array, epoch: jax.Array) -> Dynamics:
    """ONE member's records after a minibatch: idx [B] example indices, counted [B] bool
    (rows that are real presentations: weight > 0 and a step taken), logits [B, C],
    labels [B], epoch: 0-based. Rows not counted write nowhere (scattered out of range)."""
    n = records.presentations.shape[0]
    at = jnp.where(counted, idx, n)  # padding rows may repeat a real index: drop them
    right = jnp.argmax(logits, -1) == labels
    prob = jnp.exp(-optax.softmax_cross_entropy_with_integer_labels(logits, labels))
    add = lambda total, value: total.at[at].add(value, mode="drop")
    put = lambda array, value: array.at[at].set(value, mode="drop")
    before = records.last_correct[idx]
    first = records.first_learned[idx]
    return Dynamics(
        presentations=add(records.presentations, 1),
        correct=add(records.correct, right.astype(jnp.int32)),
        forgetting=add(records.forgetting, (before & ~right).astype(jnp.int32)),
        last_correct=put(records.last_correct, right),
        first_learned=put(records.first_learned,
                          jnp.where((first < 0) & right, epoch + 1, first).astype(jnp.int32)),
        last_incorrect=put(records.last_incorrect, jnp.where(
            right, records.last_incorrect[idx], epoch + 1).astype(jnp.int32)),
        margin_sum=add(records.margin_sum, margin(logits, labels)),
        prob_sum=add(records.prob_sum, prob),
        prob_sq_sum=add(records.prob_sq_sum, prob * prob))


def scores(records: Dynamics) -> dict[str, np.ndarray]:
    """Per-example scores [M, N] from stacked records (host arrays):
    forgetting_events (never_learned examples: 0, flagged in never_learned), aum (mean
    margin), confidence and variability (mean and population std of p(y | x)),
    correctness (fraction of presentations correct), first_learned_epoch and
    learned_for_good_epoch (1-based; -1: never / not correct at the end), presentations.
    NaN where an example was never presented to a member."""
    r = jax.tree.map(np.asarray, records)
    count = r.presentations.astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = lambda total: np.where(count > 0, total / count, np.nan)
        confidence = mean(r.prob_sum)
        variability = np.sqrt(np.maximum(mean(r.prob_sq_sum) - confidence ** 2, 0.0))
        never = r.first_learned < 0
        return {"presentations": r.presentations, "forgetting_events": r.forgetting,
                "never_learned": never, "aum": mean(r.margin_sum), "confidence": confidence,
                "variability": variability, "correctness": mean(r.correct),
                "first_learned_epoch": r.first_learned,
                "learned_for_good_epoch": np.where(r.last_correct & ~never,
                                                   r.last_incorrect + 1, -1)}


def member_means(scores: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """`<score>_mean` [N] for each score of `scores` [M, N]: its mean over the members that
    were presented the example (NaN where none was)."""
    seen = scores["presentations"] > 0
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an example no member saw: NaN
        return {f"{k}_mean": np.nanmean(np.where(seen, v.astype(float), np.nan), 0)
                for k, v in scores.items() if k != "presentations"}
