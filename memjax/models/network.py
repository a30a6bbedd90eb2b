"""`Network`: a Flax module with pure `init` and `apply` functions over its variables, the
input normalization, and the one-line checks of a module memjax did not write."""
from __future__ import annotations

import inspect
from dataclasses import dataclass

import flax.linen as nn
import jax
import jax.numpy as jnp

from memjax.errors import MemjaxError
from memjax.models.base import Variables


@dataclass(frozen=True)
class Network:
    """A module with pure `init` and `apply` functions over Flax variables.

    The module is called as module(x, train=...) and returns logits [batch, classes]; in
    training it may update non-parameter collections (BatchNorm's "batch_stats") and draw
    from the "dropout" rng, and it gets `example_mask` (the rows BatchNorm's statistics
    count) when its __call__ takes that keyword (`takes_example_mask`).

    num_classes: the logits' width, checked when the network is first initialized
      (`check_input`; None: not checked).
    input_mean, input_std: per-channel input normalization, x -> (x - mean) / std before
      the module in `apply` and `apply_train` (() each: none), one value per channel of
      the [0, 1] input. Inputs stay in [0, 1] for the data pipeline and every metric
      (LASS and the sensitivities take their steps and gradients in input units), and
      memjax.augment fills cut-out squares with input_mean.
    """

    module: nn.Module
    num_classes: int | None = None
    input_mean: tuple[float, ...] = ()
    input_std: tuple[float, ...] = ()

    @property
    def conv_form(self) -> str | None:
        """How the network convolves (CONV_FORMS), None when it does not."""
        return getattr(self.module, "conv_form", None)

    @property
    def takes_example_mask(self) -> bool:
        """Whether the module's __call__ takes `example_mask`. One that does not computes
        BatchNorm's training statistics over every row of a batch, the zero-weight rows
        (padding, examples outside a member's subset) included."""
        # an NNX module (flax.nnx.bridge.to_linen) passes keywords on to its own __call__
        call = getattr(getattr(self.module, "nnx_class", None), "__call__", self.module.__call__)
        try:
            return "example_mask" in inspect.signature(call).parameters
        except (TypeError, ValueError):
            return False

    def normalize(self, x: jax.Array) -> jax.Array:
        """(x - input_mean) / input_std per channel (the identity without them), computed
        in float32 at least and returned in x's floating dtype (a bf16 input stays bf16)."""
        if not self.input_mean and not self.input_std:
            return x
        work = jnp.promote_types(x.dtype, jnp.float32)
        y = x.astype(work)
        if self.input_mean:
            y = y - jnp.asarray(self.input_mean, work)
        if self.input_std:
            y = y / jnp.asarray(self.input_std, work)
        return y.astype(x.dtype) if jnp.issubdtype(x.dtype, jnp.floating) else y

    @property
    def name(self) -> str:
        """The module's class name (an NNX module's own, not flax's ToLinen wrapper's)."""
        return getattr(self.module, "nnx_class", type(self.module)).__name__

    def check_input(self, example_x: jax.Array) -> None:
        """One-line errors (MemjaxError) for inputs shaped like example_x [batch, H, W, C]
        that the network cannot take: an input_mean or input_std whose length is not the
        channel count, and (num_classes set) a module that cannot take 2 such inputs, in
        evaluation or in training mode (as `apply_train` calls it), has no parameters, or
        whose logits are not floats of shape [2, num_classes] (jax.eval_shape: nothing is
        computed)."""
        shape = tuple(example_x.shape[1:])
        for name in ("input_mean", "input_std"):
            values = getattr(self, name)
            if values and (not shape or len(values) != shape[-1]):
                raise MemjaxError(
                    f"model.{name} has {len(values)} values but the input "
                    f"{'x'.join(map(str, shape))} has {shape[-1] if shape else 0} channels; "
                    f"give one value per channel, or none")
        if self.num_classes is None:
            return
        model, inputs = self.name, f"2 inputs of shape {'x'.join(map(str, shape))}"
        two = jax.ShapeDtypeStruct((2,) + shape, jnp.float32)
        key = jax.random.key(0)

        def first_line(e: Exception) -> str:
            return (str(e).strip().splitlines() or [""])[0]

        try:
            out, variables = jax.eval_shape(lambda x: self.module.init_with_output(
                {"params": key, "dropout": key}, x, train=False), two)
        except TypeError as e:  # e.g. a __call__ without `train`
            raise MemjaxError(f"model {model} cannot be called as module(x, train=False) on "
                              f"{inputs}: {first_line(e)}") from e
        except ValueError as e:  # e.g. images too small for its pools and strides
            raise MemjaxError(f"model {model} cannot take inputs of shape "
                              f"{'x'.join(map(str, shape))}: {first_line(e)}") from e
        except Exception as e:  # the user's __call__ raised (an assert, a KeyError, ...)
            raise MemjaxError(f"model {model} fails as module(x, train=False) on {inputs}: "
                              f"{type(e).__name__}: {first_line(e)}") from e
        got = getattr(out, "shape", None)
        if got is None:
            raise MemjaxError(f"model {model} returns {type(out).__name__}, not logits "
                              f"[batch, num_classes] (an array)")
        if tuple(got) != (2, self.num_classes):
            raise MemjaxError(f"model {model} gives logits of shape {tuple(got)} for 2 inputs "
                              f"of shape {'x'.join(map(str, shape))}; expected (2, "
                              f"{self.num_classes}): [batch, num_classes]")
        if not jnp.issubdtype(out.dtype, jnp.floating):
            raise MemjaxError(f"model {model} gives logits of dtype {out.dtype}; the loss "
                              f"and its gradient need floats")
        if not jax.tree_util.tree_leaves(variables.get("params", {})):
            raise MemjaxError(f"model {model} has no parameters (its variables hold no "
                              f"'params'): nothing to train")
        mask = jnp.ones((2,), bool)
        try:
            jax.eval_shape(lambda v, x: self.apply_train(v, x, key, mask), variables, two)
        except Exception as e:
            hint = (" (memjax gives a module the 'dropout' rng stream only)"
                    if "PRNG" in str(e) or "rng" in type(e).__name__.lower() else "")
            raise MemjaxError(f"model {model} fails in training mode, as module(x, "
                              f"train=True), on {inputs}: "
                              f"{type(e).__name__}: {first_line(e)}{hint}") from e

    def init(self, key: jax.Array, example_x: jax.Array) -> Variables:
        """Variables for one member from its key; example_x: [batch, H, W, C] (its shape
        checked first: `check_input`)."""
        self.check_input(example_x)
        # a "dropout" stream too: an NNX module (flax.nnx.bridge.to_linen) builds its
        # Dropout from it; init (train=False) draws nothing from it, linen's or NNX's
        return self.module.init({"params": key, "dropout": key}, self.normalize(example_x),
                                train=False)

    def apply(self, variables: Variables, x: jax.Array) -> jax.Array:
        """Evaluation-mode logits [batch, classes] for x: [batch, H, W, C] in [0, 1]."""
        return self.module.apply(variables, self.normalize(x), train=False)

    def apply_train(self, variables: Variables, x: jax.Array, rng: jax.Array,
                    example_mask: jax.Array | None = None) -> tuple[jax.Array, Variables]:
        """Training-mode logits and the updated non-parameter collections (BN statistics);
        rng drives stochastic layers (dropout). example_mask: [batch] bool, the rows that
        count in BatchNorm's statistics (None: all; ignored by a module that does not take
        it, `takes_example_mask`)."""
        x = self.normalize(x)
        mutable = [k for k in variables if k != "params"]
        rngs = {"dropout": rng}
        if not mutable:
            return self.module.apply(variables, x, train=True, rngs=rngs), {}
        counted = (example_mask is not None and "batch_stats" in variables
                   and self.takes_example_mask)
        extra = {"example_mask": example_mask} if counted else {}
        logits, updates = self.module.apply(variables, x, train=True, rngs=rngs, mutable=mutable,
                                            **extra)
        return logits, dict(updates)
