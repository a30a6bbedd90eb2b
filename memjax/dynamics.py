"""Training-dynamics records: per-example statistics accumulated inside the training step
from the logits it already computes (no stored per-epoch logits, no extra forward pass).

Each presentation of example n to a member (its row in a minibatch) adds to that member's
records: whether it was classified correctly, its margin (assigned logit minus the largest
other logit, on logits as AUM defines it), the running mean of p(y | x) and its sum of
squared deviations (data maps; Welford's update, so float32 keeps the variability of a
confident example: sums of p and p^2 lose it to cancellation, 7e-4 at p ~ 0.999), a
forgetting event when it was correct at its previous presentation and is not now, and the
epochs of its first correct and last incorrect presentation. The records live in the
ensemble's state, so checkpoints carry them and a resumed run continues them exactly.
`scores` turns them into the scores of memjax.metrics.scores (forgetting events, AUM,
confidence / variability / correctness, first-learned and learned-for-good epochs), with
the same definitions: the records are the training-mode logits of each presentation, as
forgetting (Toneva et al.) and AUM (Pleiss et al.) record them. As asappresearch/aum's
runner does, AUM leaves out the phase's first epoch unless `include_first_epoch` (config:
train.aum_include_first_epoch); AUM's threshold samples (an extra fake class, and the 99th
percentile of their AUM as the cut) are not provided: see memjax.metrics.scores.aum.
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
    incorrect presentation (0: none). margin_sum: float32 sum of the margin over the
    presentations AUM counts, margin_count (int32) of them: those after the first epoch,
    or all with include_first_epoch (static, not an array). prob_mean, prob_m2: float32
    running mean of p(y | x) over presentations and sum of squared deviations from it.
    """

    presentations: jax.Array
    correct: jax.Array
    forgetting: jax.Array
    last_correct: jax.Array
    first_learned: jax.Array
    last_incorrect: jax.Array
    margin_sum: jax.Array
    margin_count: jax.Array
    prob_mean: jax.Array
    prob_m2: jax.Array
    include_first_epoch: bool = flax.struct.field(pytree_node=False, default=False)


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


def empty(members: int, num_examples: int, include_first_epoch: bool = False) -> Dynamics:
    """Records of `members` members that have seen nothing yet: [members, num_examples].
    include_first_epoch: AUM also averages the margins of the first epoch."""
    shape = (members, num_examples)
    zeros = lambda dtype: jnp.zeros(shape, dtype)
    return Dynamics(zeros(jnp.int32), zeros(jnp.int32), zeros(jnp.int32), zeros(bool),
                    jnp.full(shape, -1, jnp.int32), zeros(jnp.int32), zeros(jnp.float32),
                    zeros(jnp.int32), zeros(jnp.float32), zeros(jnp.float32),
                    include_first_epoch=include_first_epoch)


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
    # asappresearch/aum's runner: margins only `if epoch > 0`
    at_aum = jnp.where((epoch > 0) | records.include_first_epoch, at, n)
    add_aum = lambda total, value: total.at[at_aum].add(value, mode="drop")
    # Welford: the deviations, not p and p^2, are summed, so nothing cancels in float32
    old_mean = records.prob_mean[idx]
    new_mean = old_mean + (prob - old_mean) / (records.presentations[idx] + 1)
    return records.replace(
        presentations=add(records.presentations, 1),
        correct=add(records.correct, right.astype(jnp.int32)),
        forgetting=add(records.forgetting, (before & ~right).astype(jnp.int32)),
        last_correct=put(records.last_correct, right),
        first_learned=put(records.first_learned,
                          jnp.where((first < 0) & right, epoch + 1, first).astype(jnp.int32)),
        last_incorrect=put(records.last_incorrect, jnp.where(
            right, records.last_incorrect[idx], epoch + 1).astype(jnp.int32)),
        margin_sum=add_aum(records.margin_sum, margin(logits, labels)),
        margin_count=add_aum(records.margin_count, 1),
        prob_mean=put(records.prob_mean, new_mean),
        prob_m2=add(records.prob_m2, (prob - old_mean) * (prob - new_mean)))


# the names `scores` returns
SCORES = ("presentations", "forgetting_events", "never_learned", "aum", "confidence",
          "variability", "correctness", "first_learned_epoch", "learned_for_good_epoch",
          "not_learned_for_good")


def scores(records: Dynamics) -> dict[str, np.ndarray]:
    """Per-example scores [M, N] from stacked records (host arrays):
    forgetting_events (never_learned examples: 0, flagged in never_learned), aum (mean
    margin over the presentations after the first epoch, or all of them: see
    `Dynamics`), confidence and variability (mean and population std of p(y | x)),
    correctness (fraction of presentations correct), first_learned_epoch and
    learned_for_good_epoch (1-based; -1: never learned / last presentation incorrect, the
    latter flagged in not_learned_for_good), presentations. NaN where an example was never
    presented to a member (aum: never after the first epoch)."""
    r = jax.tree.map(np.asarray, records)
    count = r.presentations.astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = lambda total, n=count: np.where(n > 0, total / n, np.nan)
        never = r.first_learned < 0
        not_for_good = ~(r.last_correct & ~never)
        return {"presentations": r.presentations, "forgetting_events": r.forgetting,
                "never_learned": never, "aum": mean(r.margin_sum, r.margin_count),
                "confidence": np.where(count > 0, r.prob_mean, np.nan),
                "variability": np.sqrt(mean(r.prob_m2)), "correctness": mean(r.correct),
                "first_learned_epoch": r.first_learned,
                "learned_for_good_epoch": np.where(not_for_good, -1, r.last_incorrect + 1),
                "not_learned_for_good": not_for_good}


# Their -1 means "not learned (for good)": a missing epoch, not one to average. How many
# members it applies to is never_learned_mean / not_learned_for_good_mean.
_EPOCHS_OR_NEVER = ("first_learned_epoch", "learned_for_good_epoch")


def member_means(scores: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """`<score>_mean` [N] for each score of `scores` [M, N]: its mean over the members that
    were presented the example (NaN where none was). first_learned_epoch and
    learned_for_good_epoch: over the members that learned the example (for good), NaN
    where none did; the fraction of the presented members that did not is
    never_learned_mean, resp. not_learned_for_good_mean (a member that never learned the
    example is in both; one that learned it and misclassifies it at its last presentation
    only in the latter)."""
    seen = scores["presentations"] > 0
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an example no member saw: NaN
        return {f"{k}_mean": np.nanmean(np.where(
                    seen & (v >= 0) if k in _EPOCHS_OR_NEVER else seen, v.astype(float),
                    np.nan), 0)
                for k, v in scores.items() if k != "presentations"}


def file_arrays(scores: dict[str, np.ndarray], member_ids: np.ndarray, members,
                split, order: str) -> dict[str, np.ndarray]:
    """What dynamics-<phase>.npz holds: each score [M, N], its member average
    `<score>_mean` [N] (over the members that saw the example), member_ids [M] and what
    else varies across the members (`member_<field>` [M]: widths, input_noise,
    label_noise of memjax.members.Members), and the examples' order-safe columns [N]
    (`index` in `order`, `label`, `image_sha1`) of the training split."""
    varying = {f"member_{name}": np.asarray(value)
               for name in ("widths", "input_noise", "label_noise")
               if (value := getattr(members, name)) is not None}
    return {**scores, **member_means(scores), "member_ids": np.asarray(member_ids), **varying,
            "index": split.index, "label": split.y, "image_sha1": split.image_sha1(),
            "order": np.array(order)}
