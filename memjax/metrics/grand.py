"""GraNd score (Paul, Ganguli & Dziugaite, "Deep Learning on a Data Diet", NeurIPS 2021):
the L2 norm of each example's loss gradient with respect to the network's parameters,

    GraNd_m(x_i, y_i) = || d CE(f_m(x_i), y_i) / d params_m ||_2,

for every member m of an ensemble (the paper's score is its mean over independently
initialized or trained members, left to the caller as for `el2n`).

Unlike the input gradients of memjax.metrics.sensitivity, a parameter gradient is shared by
the whole batch, so the summed loss does not hold the per-example gradients: each example's
gradient is taken on its own (vmap of jax.grad over the examples of a chunk) and reduced to
its norm inside the chunk.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax

from memjax.chunks import map_example_chunks
from memjax.ensemble import map_members
from memjax.models import ApplyFn, as_float, computing_in
from memjax.sharding import everywhere


def _member_grad_norms(apply_fn: ApplyFn, variables, x: jax.Array, y: jax.Array) -> jax.Array:
    """[c] float32: ||d CE / d params|| of each example of x [c, H, W, C] for one member.
    Every other collection (batch_stats, masks, regularization) is held fixed."""
    if "params" not in variables:
        raise ValueError(f"variables have no 'params' collection (got {list(variables)})")
    params = variables["params"]
    fixed = {k: v for k, v in variables.items() if k != "params"}

    def loss(p, xi, yi):
        logits = apply_fn({**fixed, "params": p}, xi[None])
        return optax.softmax_cross_entropy_with_integer_labels(logits, yi[None])[0]

    def norm(xi, yi):
        grads = jax.grad(loss)(params, xi, yi)
        squares = [jnp.sum(jnp.square(g.astype(jnp.float32)))
                   for g in jax.tree_util.tree_leaves(grads)]
        return jnp.sqrt(sum(squares))

    return jax.vmap(norm)(as_float(x), y)


@functools.partial(jax.jit, static_argnames=("apply_fn", "chunk", "member_chunk",
                                             "compute_dtype"))
def grand(apply_fn: ApplyFn, variables, x: jax.Array, y: jax.Array, *,
          chunk: int | None = None, member_chunk: int | None = None,
          compute_dtype: str | None = None) -> jax.Array:
    """GraNd score (Paul, Ganguli & Dziugaite, NeurIPS 2021): ||d CE(f_m(x_i), y_i) /
    d params_m||_2 over ALL of member m's parameters, for every member and example.

    apply_fn(variables_of_one_member, x[B, H, W, C]) -> logits [B, classes], in evaluation
    mode (`Network.apply`: BatchNorm's running statistics, no dropout or noise), so each
    example's score does not depend on the others in its chunk. variables: stacked
    [M, ...]; only variables["params"] is differentiated, every other collection
    (batch_stats, masks, regularization) is held fixed. x: [N, H, W, C] uint8 (scaled by
    1/255) or float in [0, 1]; y: [N] int. chunk: examples per step (None: all);
    member_chunk: members per vmap group (None: planned, memjax.ensemble.map_members);
    compute_dtype "bfloat16": forward and backward passes in bf16, the gradients and their
    norms in float32 (None: float32). Each step holds chunk x (members in a group) per-example
    gradients, each the size of one member's parameters: choose `chunk` for that. Returns
    [M, N] float32, in nats per unit parameter. The paper's score, the mean over members,
    is `grand(...).mean(0)`.

    Follows mansheej/data_diet (commit 1910b07), data_diet/scores.py, `get_grad_norm_fn`:
    jacrev of vmap(cross_entropy_loss) (data_diet/metrics.py: per-example softmax cross
    entropy) with respect to `params`, flatten_jacobian, then the L2 norm of each row, i.e.
    over every parameter; `params` is state.optim.target (data_diet/utils.py,
    `get_fn_params_state`), all of them (BatchNorm scales and biases included), while the
    model state (BatchNorm statistics) is held fixed; `fn` is data_diet/models.py,
    `get_apply_fn_test`: model.apply(..., train=False, mutable=False), evaluation mode.
    Weight decay is in its optimizer (flax optim.Momentum), not in the loss, so not in the
    gradient, as here. Differs: every member in one call, [M, N]; data_diet scores one run
    per call (scripts/get_run_score.py) and averages runs in scripts/get_mean_score.py.
    Integer labels here, one-hot there (the same loss). Per-example gradients by vmap of
    jax.grad, summed squares per parameter array, not the concatenated Jacobian: the same
    number up to float32 rounding. Any chunk size, the last chunk padded; data_diet's
    `compute_scores` takes np.split(X, N // batch_sz), which fails unless that count
    divides N (the scores do not depend on the batching in either). Inputs follow the
    memjax network's convention ([0, 1] pixels); data_diet feeds per-channel standardized
    images (data_diet/data.py, `normalize_cifar10_images`), which changes the numbers,
    as any input scaling does. The bf16 option is memjax's. The paper scores at
    initialization or early in training: which checkpoint is the caller's.

    >>> import memjax.metrics as mm
    >>> s = mm.grand(network.apply, state.variables, x, y, chunk=256)  # doctest: +SKIP
    >>> s.mean(0)  # the paper's GraNd, [N]                              # doctest: +SKIP
    """
    apply_fn = computing_in(apply_fn, compute_dtype)
    m = jax.tree_util.tree_leaves(variables)[0].shape[0]

    def on_chunk(xb, yb):
        # The chunk is handed to each member as its own copy: with one input shared by
        # the members, a convolution's per-example kernel gradient is a grouped
        # convolution batched over the members in its kernel alone, which jax does not
        # batch once the members are sharded (NotImplementedError in the Runner).
        copies = jnp.broadcast_to(xb, (m,) + xb.shape)
        return map_members(lambda v, xm: _member_grad_norms(apply_fn, v, xm, yb),
                           member_chunk)(variables, copies)

    return everywhere(map_example_chunks(on_chunk, (x, y), chunk), m)
