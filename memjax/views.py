"""How each member sees the one shared training set: example masks (dataset size), noise
masks (which examples a member sees noised) and adversarial weights, as per-member arrays.

- Dataset size: an example mask [M, N] (`size_masks`, nested subsets); an epoch of member m
  is one pass over its own n_m examples.
- Noise level: one fully noised copy of the training set beside the clean one
  (`NoiseSource`) and per-member masks saying which examples a member sees noised
  (`noise_masks`, nested: the 20 % set is inside the 40 % set, ...).
- Adversarial weight w per member: `MemberView.adversarial_weight`.

All masks are deterministic functions of the data seed, independent of model seeds.
"""
from __future__ import annotations

import flax
import jax
import jax.numpy as jnp
import numpy as np

from memjax.data import Split, random_inputs, random_labels
from memjax.errors import MemjaxError
from memjax.keys import host_rng
from memjax.models import as_float


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
    by_rank = host_rng(data_seed, "noise order").permutation(num_examples)
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
    rank[host_rng(data_seed, "dataset size").permutation(num_examples)] = np.arange(num_examples)
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
