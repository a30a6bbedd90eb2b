"""A model written outside memjax, for tests/test_models_registry.py: a plain Flax module
with BatchNorm and dropout, named as ModelConfig.kind `outside_model:factory` (tests/ is on
sys.path under pytest), and the same in Flax NNX (`outside_model:nnx_factory`). The other
factories are wrong on purpose."""
import flax.linen as nn
import jax
from flax import nnx


class Outside(nn.Module):
    """conv 3x3 stride 2 -> BatchNorm -> ReLU -> dropout -> global mean -> dense. Its
    __call__ takes no example_mask: BatchNorm's statistics count every row of a batch."""

    num_classes: int = 10
    channels: int = 4

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = nn.Conv(self.channels, (3, 3), strides=(2, 2))(x)
        x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9)(x))
        x = nn.Dropout(0.2, deterministic=not train)(x)
        return nn.Dense(self.num_classes)(x.mean((1, 2)))


def factory(num_classes: int) -> nn.Module:
    return Outside(num_classes)


def wrong_shape(num_classes: int) -> nn.Module:
    """Logits one class too wide."""
    return Outside(num_classes + 1)


def not_a_module(num_classes: int):
    return {"num_classes": num_classes}


class OutsideNNX(nnx.Module):
    """Outside written in Flax NNX: conv -> BatchNorm -> ReLU -> dropout -> mean -> linear."""

    def __init__(self, num_classes: int, channels: int = 4, *, rngs: nnx.Rngs):
        self.conv = nnx.Conv(1, channels, (3, 3), strides=(2, 2), rngs=rngs)
        self.norm = nnx.BatchNorm(channels, momentum=0.9, rngs=rngs)
        self.drop = nnx.Dropout(0.2, rngs=rngs)
        self.out = nnx.Linear(channels, num_classes, rngs=rngs)

    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = nnx.relu(self.norm(self.conv(x), use_running_average=not train))
        x = self.drop(x, deterministic=not train)
        return self.out(x.mean((1, 2)))


def nnx_factory(num_classes: int) -> nn.Module:
    """The NNX model through Flax's bridge: each member built from its own key."""
    return nnx.bridge.to_linen(OutsideNNX, num_classes)


def nnx_built(num_classes: int) -> nnx.Module:
    """An NNX module already built (one set of parameters): refused."""
    return OutsideNNX(num_classes, rngs=nnx.Rngs(0))


def no_num_classes() -> nn.Module:
    """A factory that cannot be told the number of classes: refused."""
    return Outside()


def raises(num_classes: int) -> nn.Module:
    """A factory with a bug of its own."""
    raise KeyError(f"no config for {num_classes} classes")


class OutsideNNXMasked(nnx.Module):
    """NNX with BatchNorm over the rows of example_mask (the keyword memjax passes through
    Flax's bridge to this __call__)."""

    def __init__(self, num_classes: int, *, rngs: nnx.Rngs):
        self.norm = nnx.BatchNorm(1, momentum=0.9, rngs=rngs)
        self.out = nnx.Linear(28 * 28, num_classes, rngs=rngs)

    def __call__(self, x: jax.Array, train: bool = False, example_mask=None) -> jax.Array:
        mask = None if example_mask is None else example_mask.reshape(-1, 1, 1, 1)
        x = self.norm(x, use_running_average=not train, mask=mask)
        return self.out(x.reshape((x.shape[0], -1)))


def nnx_masked(num_classes: int) -> nn.Module:
    return nnx.bridge.to_linen(OutsideNNXMasked, num_classes)


class _Broken(nn.Module):
    """A dense read-out that goes wrong in the way `fault` names."""

    num_classes: int = 10
    fault: str = ""

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        assert self.fault != "assert" or x.shape[1:] == (32, 32, 3), "expects CIFAR images"
        x = x.reshape((x.shape[0], -1))
        if train and self.fault == "train":
            x = x.reshape((x.shape[0], 7, -1))  # a bug on the training path alone
        if train and self.fault == "rng":
            x = x + jax.random.normal(self.make_rng("noise"), x.shape)
        if self.fault == "no_params":
            return jax.numpy.zeros((x.shape[0], self.num_classes)) + x.mean()
        logits = nn.Dense(self.num_classes)(x)
        return logits.astype(jax.numpy.int32) if self.fault == "int" else logits


def broken(fault: str):
    return lambda num_classes: _Broken(num_classes, fault)


no_params, asserts, train_bug, other_rng, int_logits = map(
    broken, ("no_params", "assert", "train", "rng", "int"))
