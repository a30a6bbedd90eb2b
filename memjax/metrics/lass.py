"""Critical samples (PAPER.md E5): Langevin Adversarial Sample Search (LASS) and the
critical sample ratio.

x is critical if some x' with ||x' - x||_inf <= r changes the predicted class. LASS looks
for such an x' by noisy sign-gradient ascent on the cross-entropy of the original
prediction, kept inside the L_inf box around x (and the valid pixel range):
    x~ <- clip(x~ + alpha * sign(grad CE(f(x~), y^(x))) + beta * eta),  eta ~ N(0, I).
An example found critical is frozen at the point that flipped; the search stops as soon as
every example is decided or after `max_iterations`. beta = 0 is plain sign-gradient PGD.

Two protocols (`PROTOCOLS`): "exhaustive" searches every example for all iterations inside
the pixel range; "authors" is the authors' code (lass_tf.py, "Code from Devansh Arpit", in
github.com/xingjunm/dimensionality-driven-learning): no clip to the pixel range
(clip_min=-inf, clip_max=inf), and the whole search stops after the first iteration that
adds fewer than 20 new critical samples over the searched set. memjax follows that code in
the ascent (the sign of the gradient of the CE of the original prediction: the sign is the
same for the mean loss it differentiates), the Gaussian noise, the box and "critical if the
prediction ever changed"; it differs in freezing a critical example at the point that
flipped (that code keeps moving it; its flag is sticky, so the flags are the same) and in
stopping once every example is decided (that code runs on; nothing changes).

The authors' CSR callback (`LoggerCallback.on_epoch_end` in callback_util.py) divides the
paper's alpha, beta and r by `255 / (max(X_test) - min(X_test))` of its preprocessed data:
x / 255 for MNIST (range 1.0, no change), x / 255 minus the per-pixel training mean for
CIFAR-10, CIFAR-100 and SVHN (range 1.158 on CIFAR-10: a 16 % larger radius).
`authors_scale` computes that factor and `validation_search(..., scale=)` applies it.
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from memjax.ensemble import map_members
from memjax.chunks import map_example_chunks
from memjax.models import ApplyFn, as_float, computing_in
from memjax.sharding import everywhere

# The paper's values (alpha 0.25, beta 0.2, r 0.3 on the 0-255 scale; 100 iterations, the
# authors' code), converted to [0, 1] pixels.
PAPER_LASS = dict(radius=0.3 / 255, step_size=0.25 / 255, noise_scale=0.2 / 255,
                  max_iterations=100)
# How a search ends and where its points may go: `clip` the valid pixel range (None:
# anywhere in the box), `stop_below` new critical samples per iteration (0: never stop early).
PROTOCOLS = {"exhaustive": dict(clip=(0.0, 1.0), stop_below=0),
             "authors": dict(clip=None, stop_below=20)}


class LassResult(NamedTuple):
    """critical: [..., N] bool. points: [..., N, H, W, C] float32, the point that changed the
    prediction (critical examples) or the last iterate. iterations: [..., N] int32, the
    iteration at which the prediction changed, or the iterations run."""

    critical: jax.Array
    points: jax.Array
    iterations: jax.Array


def lass_search(apply_fn: ApplyFn, member_variables, x: jax.Array, key: jax.Array, *,
                radius: float, step_size: float, noise_scale: float,
                max_iterations: int = 100, clip: tuple[float, float] | None = (0.0, 1.0),
                stop_below: int = 0, example_ids: jax.Array | None = None,
                compute_dtype: str | None = None) -> LassResult:
    """LASS for ONE member: pure, jittable and vmappable (usable inside a training step).

    apply_fn(member_variables, x[B, H, W, C]) -> logits [B, classes].
    x: [N, H, W, C] uint8 or float in [0, 1]; radius, step_size, noise_scale in the same
    pixel units as x after scaling (use PAPER_LASS for the paper's values). clip: valid
    pixel range, or None; the box is [x - radius, x + radius] cut to that range, and never
    cut past x itself (a pixel outside the range, as in unclipped Gaussian randX inputs,
    keeps a box around its own value, so no point is ever farther than radius from x).
    stop_below: stop after an iteration that finds fewer than this many new critical
    examples among the N searched (the authors' rule: 20; 0: run to `max_iterations`).
    key: typed PRNG key; example n draws its noise at iteration i from
    fold_in(fold_in(key, example_ids[n]), i) (example_ids default arange(N)), so an
    example's search does not depend on which other examples share the batch.
    compute_dtype "bfloat16": the network's forward and backward passes in bf16 (points,
    steps and the box stay float32); None: float32. The network then sees each point
    rounded to bf16, whose spacing (up to 2^-8 = 0.0039 for pixels in [0.5, 1)) exceeds the
    paper's radius (0.3/255 = 0.0012): use float32 for CSR at radii that small.
    Returns LassResult([N] bool, [N, H, W, C] float32, [N] int32).
    """
    apply_fn = computing_in(apply_fn, compute_dtype)
    x = as_float(x)
    # (One function past 60 lines: the search is one while_loop whose probe, condition and
    # body share the box, the keys and the original prediction.)
    n = x.shape[0]
    ids = jnp.arange(n) if example_ids is None else example_ids
    example_keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(ids)
    low, high = x - radius, x + radius
    if clip is not None:
        low = jnp.minimum(jnp.maximum(low, clip[0]), x)
        high = jnp.maximum(jnp.minimum(high, clip[1]), x)

    def probe(points, label=None):
        """(logits at points, label, sign of d CE(logits, label) / d points): one forward
        and one backward pass. label None: the prediction at points."""
        logits, pullback = jax.vjp(lambda p: apply_fn(member_variables, p), points)
        label = jnp.argmax(logits, -1) if label is None else label
        # examples are independent: the gradient of the summed loss is each one's own
        d_logits = jax.grad(lambda l: optax.softmax_cross_entropy_with_integer_labels(
            l, label).sum())(logits)
        return logits, label, jnp.sign(pullback(d_logits)[0])

    _, predicted, direction = probe(x)

    def cond(carry):
        i, _, _, critical, _, found = carry
        return (i < max_iterations) & ~jnp.all(critical) & (found >= stop_below)

    def body(carry):
        # The forward pass that checks a proposal is also the one the next step's gradient
        # needs (an example still searching moves to its proposal), so an iteration costs
        # one forward and one backward pass, not two forwards and a backward.
        i, points, direction, critical, iterations, _ = carry
        noise = jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, i), x.shape[1:]))(
            example_keys)
        proposal = jnp.clip(points + step_size * direction + noise_scale * noise, low, high)
        logits, _, next_direction = probe(proposal, predicted)
        flipped = jnp.argmax(logits, -1) != predicted
        active = ~critical
        keep = active.reshape((n,) + (1,) * (x.ndim - 1))
        points = jnp.where(keep, proposal, points)
        iterations = jnp.where(active, i + 1, iterations)
        found = jnp.sum(active & flipped, dtype=jnp.int32)
        # a decided example's direction is never used again
        return i + 1, points, next_direction, critical | (active & flipped), iterations, found

    init = (jnp.int32(0), x, direction, jnp.zeros((n,), bool), jnp.zeros((n,), jnp.int32),
            jnp.int32(stop_below))
    _, points, _, critical, iterations, _ = jax.lax.while_loop(cond, body, init)
    return LassResult(critical, points, iterations)


@functools.partial(jax.jit, static_argnames=(
    "apply_fn", "max_iterations", "clip", "stop_below", "member_chunk", "chunk",
    "compute_dtype"))
def lass(apply_fn: ApplyFn, variables, x: jax.Array, key: jax.Array, *, radius: float,
         step_size: float, noise_scale: float, max_iterations: int = 100,
         clip: tuple[float, float] | None = (0.0, 1.0), stop_below: int = 0,
         member_chunk: int | None = None, chunk: int | None = None,
         member_ids: jax.Array | None = None, compute_dtype: str | None = None) -> LassResult:
    """LASS for every member of an ensemble and every example.

    variables: stacked [M, ...]; x: [N, H, W, C]; other arguments as `lass_search`. With
    `stop_below`, each member stops on its own, counting over a chunk's examples: leave
    `chunk` None to count over all N, as the authors do.
    Member m searches with fold_in(key, member_ids[m]) (default ids arange(M)), so its
    result does not depend on the ensemble size, `member_chunk` or `chunk` (examples per
    search; each chunk stops early on its own). Returns LassResult with a leading member
    axis: critical [M, N] bool, points [M, N, H, W, C], iterations [M, N] int32.

    >>> import memjax.metrics as mm
    >>> found = mm.lass(network.apply, state.variables, x_val, jax.random.key(0),
    ...                 **mm.PAPER_LASS)  # doctest: +SKIP
    >>> csr = mm.critical_sample_ratio(found.critical)  # [M]  # doctest: +SKIP
    """
    m = jax.tree_util.tree_leaves(variables)[0].shape[0]
    ids = jnp.arange(m) if member_ids is None else member_ids
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(ids)
    n = x.shape[0]

    def on_chunk(xb, example_ids):
        search = functools.partial(
            lass_search, apply_fn, x=xb, radius=radius, step_size=step_size,
            noise_scale=noise_scale, max_iterations=max_iterations, clip=clip,
            stop_below=stop_below, example_ids=example_ids, compute_dtype=compute_dtype)
        return map_members(lambda v, k: search(v, key=k), member_chunk)(variables, keys)

    return LassResult(*everywhere(map_example_chunks(on_chunk, (x, jnp.arange(n)), chunk), m))


def authors_scale(train_x: np.ndarray, eval_x: np.ndarray) -> float:
    """The factor by which the authors' CSR callback scales the paper's alpha, beta and r:
    the range max - min of the searched images as their datasets.py preprocesses them,
    x / 255 and, for colour images (CIFAR-10, CIFAR-100, SVHN: three channels), minus
    the per-pixel mean of the training images. memjax searches x / 255 itself; a shift
    changes no distance, so only the range matters.

    train_x: [N, H, W, C] uint8 training images (the mean of colour images); eval_x:
    [K, H, W, C] uint8 images searched (the authors took the range over the whole test
    set; memjax over the validation split it searches). Returns a float, 1.0 for MNIST.
    """
    high, low = eval_x.max(0) / 255.0, eval_x.min(0) / 255.0  # per pixel: [H, W, C]
    if eval_x.shape[-1] == 3:
        mean = np.mean(train_x, axis=0, dtype=np.float64) / 255.0
        high, low = high - mean, low - mean
    return float(high.max() - low.min())


_DRAW = 2 ** 31 - 1  # folded into the key of a search for the authors' random draw


def validation_search(apply_fn: ApplyFn, variables, x: jax.Array, key: jax.Array, *,
                      protocol: str, examples: int | None, member_chunk: int | None = None,
                      chunk: int | None = None, member_ids: jax.Array | None = None,
                      scale: float = 1.0, **settings) -> LassResult:
    """The search a study runs after an epoch to measure CSR on validation inputs x [N, ...].

    protocol "authors" (their CSR callback, callback_util.py): `examples` inputs drawn at
    random from x with `key` (a fresh draw for every key; the authors drew 500 per epoch;
    None: all of x), every member searching all of them at once, so the stop rule counts
    over the whole draw. "exhaustive": the first `examples` inputs (None: all), searched in
    chunks of `chunk`. settings: radius, step_size, noise_scale, max_iterations (as `lass`);
    radius, step_size and noise_scale are multiplied by `scale` (the studies pass
    `authors_scale` of their data under "authors", as the authors' callback scaled them).
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown LASS protocol {protocol!r}; known: {', '.join(PROTOCOLS)}")
    n = x.shape[0]
    if protocol == "authors":
        chunk = None
        if examples is not None and examples < n:
            x = x[jax.random.choice(jax.random.fold_in(key, _DRAW), n, (examples,),
                                    replace=False)]
    else:
        x = x[:examples]
    scaled = {k: v * scale if k in ("radius", "step_size", "noise_scale") else v
              for k, v in settings.items()}
    return lass(apply_fn, variables, x, key, member_chunk=member_chunk, chunk=chunk,
                member_ids=member_ids, **scaled, **PROTOCOLS[protocol])


@jax.jit
def critical_sample_ratio(critical: jax.Array) -> jax.Array:
    """Fraction of examined examples that are critical. critical: [M, N] bool -> [M] float32."""
    return jnp.mean(critical.astype(jnp.float32), axis=-1)


# LASS inside every training step multiplies the step's cost by its iterations, so training
# searches 10 iterations (ours; the paper's limit of 100 is for measuring CSR). The search
# stops earlier once every example in the batch has changed class.
TRAINING_LASS = {**PAPER_LASS, "max_iterations": 10}


def lass_adversarial_examples(apply_fn, variables, x: jax.Array, y: jax.Array,
                              key: jax.Array, protocol: str = "exhaustive") -> jax.Array:
    """The points adversarial training trains on (E7's dropout + adversarial training):
    LASS around one member's minibatch with TRAINING_LASS settings; memjax.runner hands it
    to the trainer (`memjax.train.Trainer.adversarial_examples`).

    apply_fn(variables, x) -> logits; variables: ONE member's; x: [B, H, W, C] float32 in
    [0, 1]; y: [B] int labels (unused: LASS moves away from the predicted class); key: this
    step's ATTACK-stream key; protocol: PROTOCOLS ("authors": unclipped points, and the
    search ends after an iteration that finds fewer than 20 new critical points in the
    minibatch; the paper's r, alpha, beta unscaled: `authors_scale` is the CSR callback's,
    not the training's). Returns [B, H, W, C] float32 within the L-infinity radius of x (in [0, 1]
    unless the protocol leaves points unclipped; gradients are stopped by the caller).
    """
    return lass_search(apply_fn, variables, x, key, **TRAINING_LASS, **PROTOCOLS[protocol]).points
