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
