"""Per-example memorization and difficulty scores from an ensemble trained on random subsets,
and from per-epoch training records.

Subset scores. Member m trains on the examples with included[m, n] = True and ends with
correct[m, n] (does member m classify training example n correctly). For example n, the
members split into those that trained on n ("in") and those that did not ("out"):
    holdout consistency  C(n)     = P[correct on n | n not in S]
    C-score              C(n)     = E over subset ratios of the held-out accuracy above
                                    (Jiang et al., ICLR 2021)
    memorization         mem(n)   = P[correct on n | n in S] - P[correct on n | n not in S]
    influence            infl(i, j) = P[correct on test j | i in S] - P[... | i not in S]
                                    (Feldman & Zhang, NeurIPS 2020)
each probability estimated by the fraction of the members on that side that are correct.
`balanced_masks` draws the inclusion masks so that every example has the same number of
"in" members (LiRA, Carlini et al., S&P 2022).

Training-dynamics scores. Records stacked over epochs (or presentations) on a LEADING axis,
[E, M, N]:
    forgetting events    correct -> incorrect transitions (Toneva et al., ICLR 2019)
    AUM                  mean over epochs after the first of assigned logit - largest
                         other logit (Pleiss et al., NeurIPS 2020)
    data maps            mean / population std over epochs of p(y | x), fraction correct
                         (Swayamdipta et al., EMNLP 2020)
    EL2N                 ||softmax - onehot(y)||_2 at one epoch (Paul et al., NeurIPS 2021)
    first-learned and learned-for-good epochs (1-based).

Where a function follows or departs from its authors' released code is said in its
docstring. The one departure shared by the subset scores: a side with no member gives NaN
here; the released code divides by max(count, 1e-10) and so reports 0 for it.

>>> import jax.numpy as jnp
>>> included = jnp.array([[1, 0], [1, 1], [0, 1], [0, 0]], bool)  # 4 members, 2 examples
>>> correct = jnp.array([[1, 1], [1, 1], [0, 1], [0, 0]], bool)
>>> memorization(included, correct).tolist()  # example 0: right when in, wrong when out
[1.0, 0.5]
>>> holdout_consistency(included, correct).tolist()
[0.0, 0.5]
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from memjax.dynamics import margin  # noqa: F401  (defined beside the training records)

# Train examples per influence chunk when `chunk` is None: at most this many influence
# values ([chunk, T] float32, 64 MiB) exist at once.
_INFLUENCE_BLOCK = 2 ** 24


def _side_means(included: jax.Array, correct: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(mean correctness over members with n in S, over members without n), each [N]
    float32, NaN where that side has no member."""
    inc = included.astype(bool)
    c = correct.astype(jnp.float32)
    n_in = inc.sum(0).astype(jnp.float32)
    n_out = inc.shape[0] - n_in
    hit_in = jnp.where(inc, c, 0.0).sum(0)
    hit_out = c.sum(0) - hit_in
    mean_in = jnp.where(n_in > 0, hit_in / jnp.maximum(n_in, 1.0), jnp.nan)
    mean_out = jnp.where(n_out > 0, hit_out / jnp.maximum(n_out, 1.0), jnp.nan)
    return mean_in, mean_out


@jax.jit
def holdout_consistency(included: jax.Array, correct: jax.Array) -> jax.Array:
    """Held-out accuracy of each example: the fraction of the members that did NOT train on
    it that classify it correctly (one subset ratio's C-score estimate).

    included: [M, N] bool, example n in member m's training subset. correct: [M, N] bool,
    member m classifies training example n correctly. Returns [N] float32 in [0, 1], NaN
    where every member trained on n (pluskid/structural-regularity reports 0 there).
    """
    return _side_means(included, correct)[1]


@functools.partial(jax.jit, static_argnames=("num_ratios",))
def cscore(included: jax.Array, correct: jax.Array, ratio_ids: jax.Array,
           num_ratios: int) -> jax.Array:
    """Consistency score (C-score; Jiang, Zhang, Talwar & Mozer, ICLR 2021): for each subset
    ratio the held-out accuracy of n over that ratio's members, then the mean over ratios.

    included, correct: [M, N] bool as in `holdout_consistency`. ratio_ids: [M] int in
    [0, num_ratios), the subset ratio member m was trained with (its index, not the ratio).
    Returns [N] float32 in [0, 1]; a ratio none of whose members held n out is left out of
    n's mean, and n gets NaN if every ratio is left out.

    Follows pluskid/structural-regularity (mnist.py, `estimate_cscores`): per ratio
    sum(correct * ~included) / sum(~included) over the ratio's runs, then an unweighted
    mean over the ratios (that script: 9 ratios 0.1, ..., 0.9 with 200 runs each, every run
    a uniform subset of exactly int(ratio * N) examples, correctness of the final model on
    the whole training set). Differs: that code divides by max(count, 1e-10), so a ratio
    with no held-out run counts as accuracy 0 in the mean; memjax leaves it out. The two
    agree whenever every ratio holds every example out at least once. How the subsets are
    drawn (fixed-size per member there, `balanced_masks` here, or anything else) is the
    caller's: this function takes the masks as given.
    """
    onehot = jax.nn.one_hot(ratio_ids, num_ratios, dtype=jnp.float32)  # [M, R]
    out = (~included.astype(bool)).astype(jnp.float32)
    held = onehot.T @ out  # [R, N] held-out members per ratio
    hits = onehot.T @ (out * correct.astype(jnp.float32))
    per_ratio = hits / jnp.maximum(held, 1.0)
    used = held > 0
    n_used = used.sum(0)
    total = jnp.where(used, per_ratio, 0.0).sum(0)
    return jnp.where(n_used > 0, total / jnp.maximum(n_used, 1), jnp.nan).astype(jnp.float32)


@jax.jit
def memorization(included: jax.Array, correct: jax.Array) -> jax.Array:
    """Memorization estimate (Feldman & Zhang, NeurIPS 2020):
        mem(n) = P[correct on n | n in S] - P[correct on n | n not in S]
    with each probability the fraction of the members on that side that are correct.

    included, correct: [M, N] bool as in `holdout_consistency`. Returns [N] float32 in
    [-1, 1]; NaN where no member, or every member, trained on n.

    Follows google-research/heldout-influence-estimation (mnist-example/mnist_infl_mem.py,
    `estimate_infl_mem`: mem = _masked_avg(correct, mask) - _masked_avg(correct, ~mask);
    2000 runs on random 70% subsets there). Differs only where a side is empty: that code
    divides by max(count, 1e-10) and reports that side's accuracy as 0; memjax gives NaN.
    """
    mean_in, mean_out = _side_means(included, correct)
    return mean_in - mean_out


class TopInfluence(NamedTuple):
    """values: [T, k] float32, the k largest influences on each test example, descending
    (NaN for a train example with no "in" or no "out" member; those rank below every
    number). indices: [T, k] int32, the train examples they belong to (ties: lower index
    first)."""

    values: jax.Array
    indices: jax.Array


# An influence is in [-1, 1]: NaN ranks as this (below every influence), and padding or an
# empty slot of the running top-k as -inf (below that), so NaN examples are still returned
# before anything that is not an example.
_NAN_RANK = -2.0


@functools.partial(jax.jit, static_argnames=("k", "chunk"))
def influence(included: jax.Array, correct_test: jax.Array, k: int,
              chunk: int | None = None) -> TopInfluence:
    """The k train examples of largest estimated influence on each test example
    (Feldman & Zhang, NeurIPS 2020):
        infl(i, j) = P[correct on test j | i in S] - P[correct on test j | i not in S].

    included: [M, N] bool train inclusion masks. correct_test: [M, T] bool, member m
    classifies test example j correctly. k: 1 <= k <= N. chunk: train examples per step
    (default: as many as keep chunk * T <= 2^24, so one step when N * T is small). The
    [N, T] matrix is never built whole: a scan over chunks of train examples computes a
    [chunk, T] block by one matmul of counts and merges it into a running top-k
    (jax.lax.top_k). The counts are exact in float32 (up to 2^24 members), so the result
    does not depend on `chunk`. Returns TopInfluence(values [T, k], indices [T, k]).

    Follows google-research/heldout-influence-estimation (mnist-example/mnist_infl_mem.py,
    `estimate_infl_mem`: infl = _masked_dot(correct_test, mask) - _masked_dot(correct_test,
    ~mask), the full [T, N] matrix, then np.argsort(infl[j])[::-1] for the ranking).
    Differs: the top k only, never the matrix; a train example with no "in" or no "out"
    member gets NaN (that code: that side's accuracy taken as 0) and ranks last; ties go to
    the lower train index (argsort(...)[::-1] puts the higher index first).
    """
    m, n = included.shape
    t = correct_test.shape[1]
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, {n}] (the number of train examples), got {k}")
    if chunk is None:
        chunk = max(1, _INFLUENCE_BLOCK // max(t, 1))
    chunk = min(chunk, n)
    steps = -(-n // chunk)
    inc = jnp.pad(included.astype(jnp.float32), ((0, 0), (0, steps * chunk - n)))
    blocks = jnp.moveaxis(inc.reshape(m, steps, chunk), 1, 0)  # [steps, M, chunk]
    ct = correct_test.astype(jnp.float32)
    test_hits = ct.sum(0)  # [T]

    def step(best, xs):
        block, start = xs
        # 0/1 operands: exact at any matmul precision, accumulated in float32
        hit_in = jnp.matmul(block.T, ct, preferred_element_type=jnp.float32)  # [chunk, T]
        n_in = block.sum(0)[:, None]
        n_out = m - n_in
        infl = (hit_in / jnp.maximum(n_in, 1.0)
                - (test_hits - hit_in) / jnp.maximum(n_out, 1.0))
        ids = start + jnp.arange(chunk, dtype=jnp.int32)
        rank = jnp.where((n_in > 0) & (n_out > 0), infl, _NAN_RANK)
        rank = jnp.where((ids < n)[:, None], rank, -jnp.inf).T  # [T, chunk]
        values = jnp.concatenate([best[0], rank], axis=1)
        owners = jnp.concatenate([best[1], jnp.broadcast_to(ids, (t, chunk))], axis=1)
        # top_k puts the earlier of equal values first, and the running set (lower
        # indices) comes first: ties go to the lower train index, as in one global top_k
        top, where = jax.lax.top_k(values, k)
        return (top, jnp.take_along_axis(owners, where, axis=1)), None

    init = (jnp.full((t, k), -jnp.inf, jnp.float32), jnp.zeros((t, k), jnp.int32))
    starts = jnp.arange(steps, dtype=jnp.int32) * chunk
    (values, indices), _ = jax.lax.scan(step, init, (blocks, starts))
    return TopInfluence(jnp.where(values == _NAN_RANK, jnp.nan, values), indices)


class ForgettingEvents(NamedTuple):
    """events: [M, N] int32, correct -> incorrect transitions between consecutive
    presentations. never_learned: [M, N] bool, never correct at any presentation (its
    events count is 0)."""

    events: jax.Array
    never_learned: jax.Array


@jax.jit
def forgetting_events(correct: jax.Array) -> ForgettingEvents:
    """Forgetting events (Toneva et al., ICLR 2019): how often an example goes from
    classified correctly at one presentation to misclassified at the next.

    correct: [E, M, N] bool, the correctness recorded at each of E presentations (epochs,
    or each time the example is in a mini-batch: the records define what a presentation
    is). Returns ForgettingEvents(events [M, N] int32, never_learned [M, N] bool).

    Follows mtoneva/example_forgetting (order_examples_by_forgetting.py: transitions =
    acc[1:] - acc[:-1], a forgetting event wherever it is -1; its training scripts record
    acc when the example is presented in a training mini-batch). Differs: an example never
    correct is flagged in `never_learned` with 0 events; that code (and mansheej/data_diet,
    which uses inf) gives it the largest count, npresentations, when ranking. Combine as
    `jnp.where(never_learned, E, events)` for the authors' ranking.
    """
    c = correct.astype(bool)
    events = (c[:-1] & ~c[1:]).sum(0, dtype=jnp.int32)
    return ForgettingEvents(events, ~c.any(0))


@jax.jit
def first_learned_epoch(correct: jax.Array) -> jax.Array:
    """The first presentation (1-based) at which each example is classified correctly.

    correct: [E, M, N] bool. Returns [M, N] int32 in [1, E], or -1 where never correct.
    (mtoneva/example_forgetting's `first_learned` is the same, 0-based, NaN for never.)
    -1 is no epoch: average over members only where it is >= 0 (memjax.dynamics.member_means
    does), and count the rest separately.
    """
    c = correct.astype(bool)
    return jnp.where(c.any(0), jnp.argmax(c, axis=0).astype(jnp.int32) + 1, -1)


@jax.jit
def learned_for_good_epoch(correct: jax.Array) -> jax.Array:
    """The presentation (1-based) from which each example stays classified correctly through
    the last one: 1 + the last incorrect presentation, 1 if never incorrect.

    correct: [E, M, N] bool. Returns [M, N] int32 in [1, E], or -1 where the last
    presentation is incorrect. (mtoneva/example_forgetting's `presentations_needed_to_learn`
    is the last incorrect presentation, 1-based, i.e. this minus 1; it reports it even when
    the example ends incorrect.) As for `first_learned_epoch`, -1 is not to be averaged.
    """
    c = correct.astype(bool)
    # correct at every presentation from e to the end, read from the end backwards
    to_end = jnp.flip(jnp.cumprod(jnp.flip(c, 0).astype(jnp.int32), axis=0), 0)
    tail = to_end.sum(0, dtype=jnp.int32)  # length of the final run of correct presentations
    return jnp.where(tail > 0, c.shape[0] - tail + 1, -1).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames="include_first_epoch")
def aum(margins: jax.Array, include_first_epoch: bool = False) -> jax.Array:
    """Area under the margin (Pleiss, Zhang, Elenberg & Weinberger, NeurIPS 2020): the mean
    over epochs of `margin`, from the second epoch on. Low or negative AUM flags mislabeled
    examples.

    margins: [E, M, N] float, `margin(logits_e, labels)` at each of E epochs (or at each
    epoch's presentation in a training mini-batch, as asappresearch/aum records it).
    include_first_epoch: also average margins[0]. Returns [M, N] float32, in logit units;
    NaN when E = 1 and the first epoch is left out.

    Follows asappresearch/aum: aum/aum.py, `AUMCalculator.update` adds each margin to a
    per-sample sum and count and `finalize` reports sums / counts; its paper-replication
    runner (examples/paper_replication/runner.py, `Runner.train_epoch`) calls update on
    the training mini-batch's outputs only `if aum_calculator and epoch > 0` ("after the
    first epoch due to variability of random initialization"), which is the default
    here; its examples/cifar100/train.py updates at every epoch, which
    include_first_epoch=True gives. Differs: that runner rounds the logits to float16
    (`outputs.detach().cpu().half().float()`) before the margin; memjax keeps them as
    given. Not provided: AUM's threshold samples, i.e. N // C random training examples
    (one class's worth) relabeled to a fake extra class C, trained with a (C + 1)-way
    output (runner.py, `use_threshold_samples`), and the cut: an example is flagged as
    mislabeled when its AUM is below the 99th percentile of theirs (`generate_aum_details`,
    AUM_WTR: more than 1 % of the threshold samples have a larger AUM). Build them from
    a relabeled training set and this function.
    """
    m = margins.astype(jnp.float32)
    return jnp.mean(m if include_first_epoch else m[1:], axis=0)


@jax.jit
def cartography(prob_true: jax.Array, correct: jax.Array) -> dict[str, jax.Array]:
    """Data-map coordinates (Swayamdipta et al., EMNLP 2020).

    prob_true: [E, M, N] float, softmax probability of the gold label at each epoch.
    correct: [E, M, N] bool. Returns a dict of [M, N] float32 arrays:
      confidence  mean over epochs of prob_true;
      variability its POPULATION std over epochs (divide by E);
      correctness fraction of epochs at which the example is classified correctly.

    Follows allenai/cartography (cartography/selection/train_dy_filtering.py,
    `compute_train_dy_metrics`: np.mean, np.std with its default ddof=0, in float64 on
    the float32 softmax). jnp.std also takes two passes (the mean, then the squared
    deviations), so in float32 it is within 1e-5 of that even for confident examples,
    where E[p^2] - E[p]^2 would lose the variability to cancellation. Differs:
    correctness is the fraction of epochs (the paper's definition); that code stores the
    count, sum(trend), and divides by the largest count only when plotting. Its
    --include_ci variance correction and --burn_out epoch cut are not provided (slice the
    epoch axis for the latter).
    """
    p = prob_true.astype(jnp.float32)
    return {"confidence": jnp.mean(p, axis=0),
            "variability": jnp.std(p, axis=0),
            "correctness": jnp.mean(correct.astype(jnp.float32), axis=0)}


@jax.jit
def el2n(probs: jax.Array, labels: jax.Array) -> jax.Array:
    """EL2N score (Paul, Ganguli & Dziugaite, NeurIPS 2021): ||p(x) - onehot(y)||_2.

    probs: [M, N, C] softmax probabilities of ONE epoch (the paper: early in training).
    labels: [N] int. Returns [M, N] float32 in [0, sqrt(2)]. The paper's score is the mean
    over independently trained members, `el2n(...).mean(0)`, left to the caller.

    Follows mansheej/data_diet (data_diet/scores.py, `get_lord_error_fn` with ord=2:
    norm(softmax(logits) - Y)), which takes logits; pass jax.nn.softmax(logits) here.
    The paper's other score, GraNd, needs the network: memjax.metrics.grand.
    """
    p = probs.astype(jnp.float32)
    target = jax.nn.one_hot(labels, p.shape[-1], dtype=jnp.float32)
    return jnp.linalg.norm(p - target, axis=-1)


def members_holding(fraction: float, num_members: int) -> int:
    """How many of `num_members` members hold each example in `balanced_masks`:
    round(fraction * num_members), halves up."""
    return int(np.floor(fraction * num_members + 0.5))


def balanced_masks(num_members: int, num_examples: int, fraction: float,
                   seed: int = 0) -> np.ndarray:
    """Inclusion masks in which every example is in exactly round(fraction * M) members, the
    members chosen uniformly at random per example (host NumPy, deterministic from `seed`).

    Returns [num_members, num_examples] bool. Each member's subset size is only about
    fraction * N (it varies from member to member). The count rounds to the nearest integer,
    halves up.

    Follows tensorflow/privacy research/mi_lira_2021/train.py (`get_data` with
    num_experiments): keep = uniform(0, 1, (M, N)); keep = keep.argsort(0) < k, member
    `expid` taking row expid. With seed 0 and the same k this is LiRA's draw bit for bit
    (LiRA calls np.random.seed(0), the same stream as RandomState(0)). Differs: LiRA
    always seeds 0 and takes k = int(pkeep * M), which floors (int(0.29 * 100) = 28);
    memjax takes the seed as an argument and rounds.
    """
    if num_members < 1 or num_examples < 0:
        raise ValueError(f"need num_members >= 1 and num_examples >= 0, got "
                         f"{num_members} and {num_examples}")
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    k = members_holding(fraction, num_members)
    draws = np.random.RandomState(seed).uniform(0, 1, size=(num_members, num_examples))
    return draws.argsort(0) < k
