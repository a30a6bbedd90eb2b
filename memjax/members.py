"""A sweep is one ensemble: what varies across members, as per-member arrays.

- Width: a max-width MLP whose hidden units are masked per member (`hidden_masks`); each
  member is initialized exactly as the narrow network of its width would be with the same
  key, zero-padded (`init_width_ensemble`), so it trains exactly as that narrow network.
- Dataset size: an example mask [M, N] (`size_masks`, nested subsets); an epoch of member m
  is one pass over its own n_m examples.
- Noise level: one fully noised copy of the training set beside the clean one
  (`NoiseSource`) and per-member masks saying which examples a member sees noised
  (`noise_masks`, nested: the 20 % set is inside the 40 % set, ...).
- Regularizer strengths: `set_regularization` writes them into the variables.
- Adversarial weight w per member: `MemberView.adversarial_weight`.

All masks are deterministic functions of the data seed, independent of model seeds.

Cost: a vmapped member costs what the largest member costs (max width, max dataset size:
smaller members run zero-weight steps that change nothing). Members of very different cost
belong in separate ensembles ("buckets"): e.g. widths 16-256 in one, 512-4096 each alone;
results do not depend on the grouping, since member i's keys depend only on its id.
"""
from __future__ import annotations

import dataclasses
import functools

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from memjax.config import ModelConfig
from memjax.data import Split, random_inputs, random_labels
from memjax.ensemble import INIT, EnsembleState, init_ensemble, map_members, member_keys
from memjax.errors import MemjaxError
from memjax.models import REGULARIZERS, ApplyFn, Network, as_float, build_network
from memjax.sharding import everywhere

# numpy streams of the data seed (noise.py uses 1 and 2)
_SIZE_STREAM, _NOISE_ORDER_STREAM = 3, 4


@flax.struct.dataclass
class MemberView:
    """How each member sees the one shared training set. Any field may be None (unused).

    example_mask: [M, N] bool, the examples a member trains on (dataset size).
    input_noise_mask: [M, N] bool, where a member sees NoiseSource.x instead of x.
    label_noise_mask: [M, N] bool, where a member sees NoiseSource.y instead of y.
    adversarial_weight: [M] float in [0, 1], w in (1 - w) * clean + w * adversarial loss.
    """

    example_mask: jax.Array | None = None
    input_noise_mask: jax.Array | None = None
    label_noise_mask: jax.Array | None = None
    adversarial_weight: jax.Array | None = None


@flax.struct.dataclass
class NoiseSource:
    """The fully noised training set, shared by all members: x [N, H, W, C] float16 in
    [0, 1] units (randX at fraction 1) and y [N] int32 (randY at fraction 1)."""

    x: jax.Array | None = None
    y: jax.Array | None = None


def noise_source(split: Split, num_classes: int, data_seed: int,
                 input_stats: str = "per_pixel") -> NoiseSource:
    """randX and randY of every example of `split` (host arrays)."""
    return NoiseSource(random_inputs(split, 1.0, data_seed, input_stats).x,
                       random_labels(split, 1.0, num_classes, data_seed).y)


def noise_masks(fractions: np.ndarray, num_examples: int, data_seed: int,
                example_mask: np.ndarray | None = None) -> np.ndarray:
    """[M, N] bool: member m sees round(fractions[m] * n_m) of its n_m training examples
    noised (example_mask [M, N]: a member's own examples; None: all N). The examples are
    taken in one order fixed by the data seed, so the sets are nested: among members with
    the same examples, more noise means a superset."""
    fractions = np.asarray(fractions, np.float64)
    if fractions.size and (fractions.min() < 0 or fractions.max() > 1):
        raise MemjaxError(f"noise fractions must be in [0, 1], got {fractions.tolist()}")
    example_mask = (np.ones((len(fractions), num_examples), bool) if example_mask is None
                    else np.asarray(example_mask, bool))
    by_rank = np.random.default_rng([data_seed, _NOISE_ORDER_STREAM]).permutation(num_examples)
    # each example's place among its member's own examples, in that order
    place = np.empty(example_mask.shape, np.int64)
    place[:, by_rank] = np.cumsum(example_mask[:, by_rank], 1) - 1
    counts = np.rint(fractions * example_mask.sum(1)).astype(np.int64)
    return example_mask & (place < counts[:, None])


def size_masks(sizes: np.ndarray, num_examples: int, data_seed: int) -> np.ndarray:
    """[M, N] bool: member m trains on sizes[m] examples, nested random subsets."""
    sizes = np.asarray(sizes)
    if sizes.size and (sizes.min() <= 0 or sizes.max() > num_examples):
        raise MemjaxError(f"dataset sizes must be in 1..{num_examples}, got {sizes.tolist()}")
    rank = np.empty(num_examples, np.int64)
    rank[np.random.default_rng([data_seed, _SIZE_STREAM]).permutation(num_examples)] = \
        np.arange(num_examples)
    return rank[None, :] < sizes.astype(np.int64)[:, None]


def member_batch(x: jax.Array, y: jax.Array, noise: NoiseSource | None, view: MemberView,
                 idx: jax.Array) -> tuple[jax.Array, jax.Array]:
    """One member's minibatch: inputs [B, H, W, C] float32 in [0, 1] and labels [B], from
    indices idx [B] into the shared x [N, ...], y [N]; view holds ONE member's masks."""
    xb, yb = as_float(x[idx]), y[idx]
    if view.input_noise_mask is not None:
        sel = view.input_noise_mask[idx].reshape((-1,) + (1,) * (xb.ndim - 1))
        xb = jnp.where(sel, as_float(noise.x[idx]), xb)
    if view.label_noise_mask is not None:
        yb = jnp.where(view.label_noise_mask[idx], noise.y[idx], yb)
    return xb, yb


# ---- widths ---------------------------------------------------------------------------

def _widths_per_layer(widths: np.ndarray, hidden: tuple[int, ...]) -> np.ndarray:
    widths = np.asarray(widths, np.int64)
    if widths.ndim == 1:
        widths = np.repeat(widths[:, None], len(hidden), axis=1)
    if widths.ndim != 2 or widths.shape[1] != len(hidden):
        raise MemjaxError(f"widths must be [members] or [members, {len(hidden)}]")
    if widths.min() <= 0 or (widths > np.asarray(hidden)[None]).any():
        raise MemjaxError(f"widths must be in 1..{max(hidden)} (the model's width), "
                          f"got {sorted(set(widths.ravel().tolist()))}")
    return widths


def hidden_masks(widths: np.ndarray, hidden: tuple[int, ...]) -> dict[str, jax.Array]:
    """{"hidden_i": [M, hidden[i]] float32}: 1 for the first widths[m] units of layer i.

    widths: [M] (every hidden layer of member m that wide) or [M, layers]."""
    widths = _widths_per_layer(widths, hidden)
    return {f"hidden_{i}": jnp.asarray(np.arange(w)[None, :] < widths[:, i:i + 1], jnp.float32)
            for i, w in enumerate(hidden)}


def init_width_ensemble(model: ModelConfig, num_classes: int, tx: optax.GradientTransformation,
                        example_x: jax.Array, *, seed: int, member_ids: np.ndarray,
                        widths: np.ndarray, learning_rate: float | np.ndarray,
                        weight_decay: float | np.ndarray = 0.0,
                        regularized: bool = False) -> tuple[Network, EnsembleState]:
    """A max-width (model.hidden) masked MLP ensemble where member m is the narrow MLP of
    widths[m], initialized as that narrow network would be from the same key (its fan-in
    scaling included) and zero-padded; unused units stay exactly zero during training.

    One init per distinct width (not per member). Returns the network and the state.
    """
    if model.kind != "mlp":
        raise MemjaxError("width sweeps need model.kind=mlp")
    hidden = tuple(model.hidden)
    per_layer = _widths_per_layer(widths, hidden)
    ids = np.asarray(member_ids)
    network = build_network(model, num_classes, masked=True, regularized=regularized)
    state = init_ensemble(network, tx, example_x, seed=seed, member_ids=ids,
                          learning_rate=learning_rate, weight_decay=weight_decay)
    params = state.variables["params"]
    root = jax.random.key(seed)
    for width in sorted(set(map(tuple, per_layer.tolist()))):
        rows = np.flatnonzero((per_layer == np.asarray(width)).all(axis=1))
        narrow = build_network(dataclasses.replace(model, hidden=width), num_classes)
        keys = member_keys(root, jnp.asarray(ids[rows], jnp.int32))
        small = jax.jit(jax.vmap(
            lambda k: narrow.init(jax.random.fold_in(k, INIT), example_x)["params"]))(keys)
        params = jax.tree_util.tree_map(functools.partial(_place, rows), params, small)
    variables = {**state.variables, "params": params, "masks": hidden_masks(per_layer, hidden)}
    return network, state.replace(variables=variables,
                                  opt_state=jax.jit(jax.vmap(tx.init))(params))


def _place(rows: np.ndarray, big: jax.Array, small: jax.Array) -> jax.Array:
    pad = [(0, 0)] + [(0, b - s) for b, s in zip(big.shape[1:], small.shape[1:])]
    return big.at[rows].set(jnp.pad(small, pad))


def narrow_params(params, width: tuple[int, ...] | int, hidden: tuple[int, ...]):
    """One member's max-width MLP params cut to the narrow network of `width` (for checks)."""
    widths = (width,) * len(hidden) if isinstance(width, int) else tuple(width)
    sizes = [None] + list(widths) + [None]
    out = {}
    for i in range(len(hidden) + 1):
        layer = params[f"Dense_{i}"]
        k = layer["kernel"]
        k = k[: sizes[i] or k.shape[0], : sizes[i + 1] or k.shape[1]]
        out[f"Dense_{i}"] = {"kernel": k, "bias": layer["bias"][: sizes[i + 1] or k.shape[1]]}
    return out


# ---- regularizers ---------------------------------------------------------------------

def set_regularization(variables, **strengths) -> dict:
    """Variables with per-member regularizer strengths set: each keyword one of
    dropout, input_dropout (drop probabilities in [0, 1)), input_noise, hidden_noise (std,
    >= 0), as a scalar or [M] array. The network must be built with regularized=True."""
    if "regularization" not in variables:
        raise MemjaxError("the network was built without regularizers (regularized=True)")
    current = dict(variables["regularization"]["strengths"])
    m = jax.tree_util.tree_leaves(variables["params"])[0].shape[0]
    for name, value in strengths.items():
        if name not in REGULARIZERS:
            raise MemjaxError(f"unknown regularizer {name!r}; known: {', '.join(REGULARIZERS)}")
        value = np.broadcast_to(np.asarray(value, np.float32), (m,))
        if name.endswith("dropout") and (value.min() < 0 or value.max() >= 1):
            raise MemjaxError(f"{name} rate must be in [0, 1), got {value.tolist()}")
        if value.min() < 0:
            raise MemjaxError(f"{name} must be non-negative, got {value.tolist()}")
        current[name] = jnp.asarray(value)
    return {**variables, "regularization": {"strengths": current}}


# ---- evaluation through the members' own views ------------------------------------------

@functools.partial(jax.jit, static_argnames=("apply_fn", "chunk", "member_chunk"))
def predict(apply_fn: ApplyFn, variables, x: jax.Array, *, chunk: int = 2048,
            member_chunk: int | None = None) -> jax.Array:
    """Predicted classes [M, N] int32 of every member on x [N, H, W, C] (evaluation mode)."""
    n = x.shape[0]
    chunk = min(chunk, n)
    chunks = -(-n // chunk)
    xs = jnp.concatenate([x, jnp.zeros((chunks * chunk - n,) + x.shape[1:], x.dtype)])
    xs = xs.reshape((chunks, chunk) + x.shape[1:])
    out = jax.lax.map(lambda xb: map_members(
        lambda v: jnp.argmax(apply_fn(v, as_float(xb)), -1).astype(jnp.int32),
        member_chunk)(variables), xs)
    m = out.shape[1]
    return everywhere(jnp.moveaxis(out, 1, 0).reshape(m, chunks * chunk)[:, :n], m)


def member_accuracy(apply_fn: ApplyFn, variables, x: jax.Array, y: jax.Array,
                    view: MemberView | None = None, noise: NoiseSource | None = None, *,
                    chunk: int = 2048, member_chunk: int | None = None) -> dict[str, jax.Array]:
    """Each member's accuracy on its own view of a training set (its inputs, its labels, its
    examples). Returns {"correct": [M, N] bool, "accuracy": [M] float32 in [0, 1] over the
    member's examples}. One forward pass over x, and one over noise.x if inputs are noised."""
    view = view or MemberView()
    kw = dict(chunk=chunk, member_chunk=member_chunk)
    pred = predict(apply_fn, variables, x, **kw)
    if view.input_noise_mask is not None:
        pred = jnp.where(view.input_noise_mask, predict(apply_fn, variables, noise.x, **kw), pred)
    labels = y[None, :]
    if view.label_noise_mask is not None:
        labels = jnp.where(view.label_noise_mask, noise.y[None, :], labels)
    correct = pred == labels
    mask = (jnp.ones_like(correct) if view.example_mask is None else view.example_mask)
    accuracy = jnp.sum(correct & mask, -1) / jnp.maximum(jnp.sum(mask, -1), 1)
    return {"correct": correct, "accuracy": accuracy.astype(jnp.float32)}
