"""A model written outside memjax, for tests/test_models_registry.py: a plain Flax module
with BatchNorm and dropout, named as ModelConfig.kind `outside_model:factory` (tests/ is on
sys.path under pytest). The other factories are wrong on purpose."""
import flax.linen as nn
import jax


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
