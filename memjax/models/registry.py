"""Models by name: `ModelConfig.kind` is a registered model or a user's
`package.module:factory`, and `build_network` turns it into a Network.

Registered (the built-ins register here as anyone else would, `register_model`):

- `mlp`: memjax.models.MLP (`hidden`); the only model with width masks;
- `cnn`, also `paper-cnn`: the paper's CNN, memjax.models.PaperCNN (`conv_channels`,
  `batchnorm`);
- `resnet9`: Page's fast CIFAR-10 ResNet-9, memjax.models.ResNet9 (`width`);
- `resnet18`: the CIFAR ResNet-18, memjax.models.ResNet18 (`width`).

`package.module:factory` (any importable module: the current directory or PYTHONPATH): it
is called as factory(num_classes=num_classes) and returns a flax.linen Module whose
__call__(x, train: bool = False) maps x [batch, H, W, C] (floats in [0, 1], or normalized
by ModelConfig.input_mean / input_std) to logits [batch, num_classes]. It may use BatchNorm
(the "batch_stats" collection, updated in training) and dropout (the "dropout" rng). It gets
`example_mask` ([batch] bool, the rows BatchNorm's training statistics should count) only
when its __call__ takes that keyword; otherwise BatchNorm's statistics count every row of a
batch, the trainer's zero-weight rows (padding, examples outside a member's subset)
included, so a member's statistics then depend on rows it does not train on. It has no
width masks or per-member regularizer strengths, convolves as it writes itself (the
default ConvPlan) and `width`, `hidden`, `conv_channels`, `batchnorm` mean nothing to it.

A Flax NNX model enters through Flax's own bridge: the factory returns
`flax.nnx.bridge.to_linen(ModelClass, *args)`, a linen Module that builds the NNX model
from each member's key (nnx.BatchNorm's statistics become the "batch_stats" collection,
nnx.Dropout draws from the "dropout" rng); an NNX module already built is refused, since
its parameters would be one member's.

Registering in Python, `register_model(name, factory, conv_forms=())`: factory(config,
num_classes, **options) returns a flax.linen Module (or a whole Network). options are the
build options its signature names (all of them with **kwargs), of BUILD_OPTIONS: `masked`
(hidden-unit width masks), `regularized` (per-member regularizer strengths),
`conv_form` (how it writes its convolutions, CONV_FORMS) and `norm_in_compute_dtype`
(BatchNorm in the compute dtype). A run that needs masked or regularized members of a
model whose factory does not take them stops with a one-line error. conv_forms: the
CONV_FORMS it can be written in; with some, runs give it the planned convolution form
(memjax.members.convolution_form), one of those; () (the default) the default form.

Every error is one line (MemjaxError): an unknown name (with the known ones), a factory
that does not import (which module or attribute), does not take num_classes, raises (its
error's first line) or returns no Module, a model whose
logits are not [batch, num_classes] (checked on 2 examples when it is first initialized,
memjax.models.Network.check_input).
"""
from __future__ import annotations

import dataclasses
import importlib
import inspect
import os
import re
import sys
from typing import TYPE_CHECKING, Callable

from flax import nnx
import flax.linen as nn

from memjax.errors import MemjaxError
from memjax.models.base import CONV_FORMS, MLP, PaperCNN
from memjax.models.network import Network
from memjax.models.resnet import ResNet9, ResNet18

if TYPE_CHECKING:
    from memjax.config import ModelConfig

BUILD_OPTIONS = ("masked", "regularized", "conv_form", "norm_in_compute_dtype")
# `package.module:factory` (the factory may be an attribute path: module:Class.build)
FACTORY_PATH = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")
# The ResNets' base channels where ModelConfig.width is unset: the architectures' own
RESNET_WIDTH = 64


@dataclasses.dataclass(frozen=True)
class ModelEntry:
    """A registered model: factory(config, num_classes, **options) -> Module or Network;
    conv_forms, the CONV_FORMS it can be written in (register_model)."""

    factory: Callable
    conv_forms: tuple[str, ...] = ()

    @property
    def options(self) -> frozenset[str]:
        """The BUILD_OPTIONS the factory takes (its keyword names; all with **kwargs)."""
        try:
            params = inspect.signature(self.factory).parameters
        except (TypeError, ValueError):
            return frozenset()
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            return frozenset(BUILD_OPTIONS)
        return frozenset(o for o in BUILD_OPTIONS if o in params)


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(name: str, factory: Callable, *, conv_forms: tuple[str, ...] = ()) -> None:
    """Make `name` a ModelConfig.kind (the module docstring says what factory and
    conv_forms are); registering a name again replaces it."""
    if not name or ":" in name or name != name.strip():
        raise MemjaxError(f"a model name is a word without ':' (that is the form of "
                          f"package.module:factory), got {name!r}")
    unknown = [f for f in conv_forms if f not in CONV_FORMS]
    if unknown:
        raise MemjaxError(f"unknown conv_forms {', '.join(map(repr, unknown))}; known: "
                          f"{', '.join(CONV_FORMS)}")
    if not callable(factory):
        raise MemjaxError(f"the factory of model {name!r} is not callable")
    _REGISTRY[name] = ModelEntry(factory, tuple(conv_forms))


def registered_models() -> tuple[str, ...]:
    """The registered names, in the order they were registered."""
    return tuple(_REGISTRY)


def is_factory_path(kind: str) -> bool:
    """Whether `kind` has the form package.module:factory (its syntax only)."""
    return bool(FACTORY_PATH.match(kind))


def check_kind(kind: str) -> None:
    """ModelConfig.kind's check without importing anything: a registered name or the
    syntax of package.module:factory; else a one-line error naming the known ones."""
    if kind in _REGISTRY or is_factory_path(kind):
        return
    raise MemjaxError(f"unknown model {kind!r}; known: {', '.join(_REGISTRY)}, or "
                      f"package.module:factory (a function returning a flax.linen Module)")


def plan_kind(kind: str) -> str:
    """Which measured rate the plan times a model's programs with (memjax.plan.rates):
    "mlp" for the MLP, "resnet9" for ResNet-9 (its `resnet9` bench rows; the CNN's where a
    device has none), "cnn" (the paper's CNN's `c_cnn` bench rows) for every other model,
    ResNet-18 and users' models included, until they have bench rows of their own."""
    return kind if kind in ("mlp", "resnet9") else "cnn"


def model_entry(kind: str) -> ModelEntry:
    """The registry's entry of `kind`, or for package.module:factory an entry that calls
    factory(num_classes=...) (importing its module: one-line errors if it does not)."""
    check_kind(kind)
    if kind in _REGISTRY:
        return _REGISTRY[kind]
    user = _import_factory(kind)
    try:
        inspect.signature(user).bind(num_classes=0)
    except TypeError:
        raise MemjaxError(f"model {kind!r}: its factory must take the keyword argument "
                          f"num_classes (it is called as factory(num_classes=N))") from None
    except ValueError:  # no signature to read (a builtin): the call will tell
        pass

    def factory(config: ModelConfig, num_classes: int):
        try:
            return user(num_classes=num_classes)
        except Exception as e:  # noqa: BLE001 (a user's factory: any error it raises)
            raise MemjaxError(f"model {kind!r}: its factory raised {type(e).__name__}: "
                              f"{_one_line(e)}") from None
    return ModelEntry(factory)


def _import_factory(kind: str) -> Callable:
    module_name, _, attribute = kind.partition(":")
    here = os.getcwd()
    if here not in sys.path and "" not in sys.path:
        # the current directory, as `python -m` has it, last (it shadows no installed
        # package); kept, since a factory may import its siblings when it is called
        sys.path.append(here)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name and (module_name == e.name or module_name.startswith(e.name + ".")):
            raise MemjaxError(f"model {kind!r}: no module named {module_name!r} (not in the "
                              f"current directory or on PYTHONPATH)") from None
        raise MemjaxError(f"model {kind!r}: importing {module_name} failed: "
                          f"{_one_line(e)}") from None
    except Exception as e:  # noqa: BLE001 (a user's module: any error while importing it)
        raise MemjaxError(f"model {kind!r}: importing {module_name} failed: "
                          f"{type(e).__name__}: {_one_line(e)}") from None
    found = module
    for part in attribute.split("."):
        if not hasattr(found, part):
            raise MemjaxError(f"model {kind!r}: module {module_name} has no attribute "
                              f"{attribute!r}")
        found = getattr(found, part)
    if not callable(found):
        raise MemjaxError(f"model {kind!r}: {module_name}.{attribute} is not callable")
    return found


def _one_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__


def build_network(config: ModelConfig, num_classes: int, *, masked: bool = False,
                  regularized: bool = False, conv_form: str = "conv",
                  norm_in_compute_dtype: bool = False) -> Network:
    """The Network of `config` (its kind from the registry or package.module:factory) for
    `num_classes` classes, normalizing its inputs by config.input_mean / input_std.

    masked: hidden-unit width masks (the MLP's); regularized: per-member regularizer
    strengths (mlp, cnn); conv_form, norm_in_compute_dtype: how a convolutional model
    convolves and normalizes (models that do not take them ignore them)."""
    config.check()
    if conv_form not in CONV_FORMS:
        raise MemjaxError(f"unknown conv_form {conv_form!r}; known: {', '.join(CONV_FORMS)}")
    entry = model_entry(config.kind)
    options = entry.options
    if masked and "masked" not in options:
        raise MemjaxError(f"width masks are implemented for the MLP only, not model "
                          f"{config.kind!r}")
    if regularized and "regularized" not in options:
        raise MemjaxError(f"per-member regularizer strengths (dropout, input noise) are "
                          f"implemented for the mlp and cnn models only, not model "
                          f"{config.kind!r}")
    if entry.conv_forms and conv_form not in entry.conv_forms:
        raise MemjaxError(f"model {config.kind!r} convolves in the "
                          f"{' or '.join(entry.conv_forms)} form only, not {conv_form} "
                          f"(train.conv_form)")
    requested = dict(masked=masked, regularized=regularized, conv_form=conv_form,
                     norm_in_compute_dtype=norm_in_compute_dtype)
    built = entry.factory(config, num_classes, **{k: v for k, v in requested.items()
                                                  if k in options})
    mean, std = tuple(config.input_mean), tuple(config.input_std)
    if isinstance(built, Network):
        return dataclasses.replace(
            built, num_classes=num_classes if built.num_classes is None else built.num_classes,
            input_mean=mean or built.input_mean, input_std=std or built.input_std)
    if isinstance(built, nnx.Module):
        raise MemjaxError(f"model {config.kind!r}: its factory returned a built NNX module "
                          f"({type(built).__name__}); return flax.nnx.bridge.to_linen("
                          f"{type(built).__name__}, *args) so that each member is built "
                          f"from its own key")
    if not isinstance(built, nn.Module):
        raise MemjaxError(f"model {config.kind!r}: its factory returned "
                          f"{type(built).__name__}, not a flax.linen Module")
    return Network(built, num_classes, mean, std)


def _mlp(config: ModelConfig, num_classes: int, *, masked: bool = False,
         regularized: bool = False) -> nn.Module:
    return MLP(tuple(config.hidden), num_classes, masked, regularized)


def _paper_cnn(config: ModelConfig, num_classes: int, *, regularized: bool = False,
               conv_form: str = "conv", norm_in_compute_dtype: bool = False) -> nn.Module:
    return PaperCNN(num_classes, config.batchnorm, config.conv_channels,
                    regularized=regularized, conv_form=conv_form,
                    norm_in_compute_dtype=norm_in_compute_dtype)


def _resnet(cls: type[nn.Module]) -> Callable:
    def build(config: ModelConfig, num_classes: int, *, conv_form: str = "conv",
              norm_in_compute_dtype: bool = False) -> nn.Module:
        return cls(num_classes, config.width or RESNET_WIDTH, conv_form, norm_in_compute_dtype)

    return build


register_model("mlp", _mlp)
register_model("cnn", _paper_cnn, conv_forms=tuple(CONV_FORMS))
register_model("paper-cnn", _paper_cnn, conv_forms=tuple(CONV_FORMS))
register_model("resnet9", _resnet(ResNet9), conv_forms=tuple(CONV_FORMS))
register_model("resnet18", _resnet(ResNet18), conv_forms=("conv",))
