"""The model registry (memjax.models.registry): every built-in builds from its name, the
ResNets train as ensembles whose members equal the same members trained alone, a model
written outside memjax (tests/outside_model.py) trains through the Python API and the CLI,
bad models stop with one line, and a Network's input normalization is the module on the
normalized input."""
import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from memjax.cli import main
from memjax.config import DataConfig, ModelConfig, TrainConfig
from memjax.data import load_dataset
from memjax.ensemble import init_ensemble, make_optimizer
from memjax.errors import MemjaxError
from memjax.members import convolution_form
from memjax.models import (Network, ResNet9, build_network, plan_kind, register_model,
                           registered_models)
from memjax.train import make_train_epoch
from test_cli import _error  # (pytest puts tests/ on sys.path: no __init__.py there)

OUTSIDE, OUTSIDE_NNX = "outside_model:factory", "outside_model:nnx_factory"
SMALL = dict(hidden=(8,), conv_channels=4, width=4, batchnorm=True)


@pytest.mark.parametrize("kind", ["mlp", "cnn", "paper-cnn", "resnet9", "resnet18"])
def test_every_builtin_model_builds_from_its_name(kind):
    assert kind in registered_models()
    config = ModelConfig(kind=kind, **SMALL)
    config.check()
    network = build_network(config, 7)
    x = jnp.zeros((3, 32, 32, 3))
    variables = jax.eval_shape(network.init, jax.random.key(0), x[:1])
    assert jax.eval_shape(network.apply, variables, x).shape == (3, 7)
    assert ("batch_stats" in variables) == (kind != "mlp")
    assert plan_kind(kind) == (kind if kind in ("mlp", "resnet9") else "cnn")


def test_resnets_have_their_sources_parameter_counts():
    """Page's ResNet-9 has 6.57M parameters, kuangliu's ResNet-18 11,173,962 (its
    torchsummary count); a width scales every stage."""
    def count(kind, **kw):
        network = build_network(ModelConfig(kind=kind, **kw), 10)
        shapes = jax.eval_shape(network.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
        return sum(leaf.size for leaf in jax.tree_util.tree_leaves(shapes["params"]))

    assert count("resnet18") == 11_173_962
    assert count("resnet9") == 6_573_120
    assert count("resnet9", width=16) < count("resnet9") / 10


def _train(network, epoch, ids, x, y, *, epochs=2):
    state = init_ensemble(network, make_optimizer(0.9), jnp.zeros((1,) + x.shape[1:]), seed=5,
                          member_ids=np.asarray(ids), learning_rate=0.02)
    history = []
    for _ in range(epochs):
        state, metrics = epoch(state, 5, x, y)
        history.append(metrics)
    return state, history


@pytest.mark.parametrize("kind, size", [("resnet9", 12), ("resnet18", 8),
                                        ("outside_model:nnx_factory", 12)])
def test_resnet_member_alone_equals_the_same_member_in_the_ensemble(kind, size):
    """2 members in one vmap group (grouped convolutions; for the NNX model, as Flax's
    bridge writes it) against each trained alone
    (lax.map): 2 epochs of 40 examples in batches of 16, the last one padded (zero-weight
    rows that BatchNorm's statistics must not count). Small images for speed; not ResNet-9
    on 16 x 16 or 20 x 20, whose last stage is 2 x 2: there XLA's CPU backend at the tests'
    optimization level 0 (tests/conftest.py) gives NaN gradients inside lax.map, where
    levels 1 to 3 train it as they should."""
    rng = np.random.default_rng(0)
    nnx_model = kind.startswith("outside")  # (one input channel, no width)
    x = jnp.asarray(rng.integers(0, 256, (40, size, size, 1 if nnx_model else 3),
                                 dtype=np.uint8))
    y = jnp.asarray(rng.integers(0, 10, 40).astype(np.int32))
    network = build_network(ModelConfig(kind=kind, width=None if nnx_model else 4), 10)
    tx = make_optimizer(0.9)
    together, history = _train(network, make_train_epoch(network, tx, batch_size=16,
                                                         member_chunk=2), [0, 1], x, y)
    one = make_train_epoch(network, tx, batch_size=16, member_chunk=1)
    for i in range(2):
        alone, history_alone = _train(network, one, [i], x, y)
        for a, b in zip(jax.tree_util.tree_leaves(jax.tree_util.tree_map(
                lambda leaf: leaf[i], together.variables)), jax.tree_util.tree_leaves(
                jax.tree_util.tree_map(lambda leaf: leaf[0], alone.variables))):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-3, atol=1e-4)
        np.testing.assert_allclose(history[-1]["train_loss"][i],
                                   history_alone[-1]["train_loss"][0], rtol=1e-4)
    assert np.isfinite(history[-1]["train_loss"]).all()
    first = jax.tree_util.tree_leaves(together.variables["batch_stats"])[0]
    assert not np.allclose(first[0], first[1])  # members differ (init and data order)


def test_resnet9_convolves_in_both_forms_resnet18_in_conv_only():
    x = jnp.asarray(np.random.default_rng(0).uniform(size=(2, 8, 8, 3)), jnp.float32)
    conv, im2col = (build_network(ModelConfig(kind="resnet9", width=2), 10, conv_form=f)
                    for f in ("conv", "im2col"))
    variables = jax.jit(conv.init)(jax.random.key(0), x[:1])
    np.testing.assert_allclose(jax.jit(im2col.apply)(variables, x),
                               jax.jit(conv.apply)(variables, x), rtol=1e-4, atol=1e-5)
    with pytest.raises(MemjaxError, match="'resnet18' convolves in the conv form only"):
        build_network(ModelConfig(kind="resnet18"), 10, conv_form="im2col")
    with pytest.raises(MemjaxError, match="not train.conv_form=im2col"):
        convolution_form(ModelConfig(kind="resnet18"), TrainConfig(conv_form="im2col"))
    assert convolution_form(ModelConfig(kind="resnet9"), TrainConfig(conv_form="im2col")
                            ).conv_form == "im2col"
    assert convolution_form(ModelConfig(kind=OUTSIDE), TrainConfig(conv_form="im2col")
                            ).source == "default"


def test_resnets_compute_in_bf16_end_to_end_with_norm_in_compute_dtype():
    x = jnp.ones((2, 16, 16, 3), jnp.bfloat16)
    for kind in ("resnet9", "resnet18"):
        network = build_network(ModelConfig(kind=kind, width=4), 10,
                                norm_in_compute_dtype=True)
        variables = jax.eval_shape(network.init, jax.random.key(0), x[:1])
        bf16 = jax.tree_util.tree_map(lambda v: jax.ShapeDtypeStruct(v.shape, jnp.bfloat16),
                                      variables)
        logits, _ = jax.eval_shape(lambda v, x: network.apply_train(
            v, x, jax.random.key(0), jnp.ones(2, bool)), bf16, x)
        assert logits.dtype == jnp.bfloat16


def test_model_options_a_model_lacks_are_one_line_errors():
    with pytest.raises(MemjaxError, match="width masks are implemented for the MLP only"):
        build_network(ModelConfig(kind="resnet9"), 10, masked=True)
    with pytest.raises(MemjaxError, match="regularizer strengths .* mlp and cnn models only"):
        build_network(ModelConfig(kind="resnet18"), 10, regularized=True)
    with pytest.raises(MemjaxError, match="regularizer strengths"):
        build_network(ModelConfig(kind=OUTSIDE), 10, regularized=True)
    with pytest.raises(MemjaxError, match="unknown model 'resnet'; known: mlp, cnn"):
        ModelConfig(kind="resnet").check()
    ModelConfig(kind="some.package.module:make_model").check()  # syntax only: no import


def test_a_model_registered_in_python_builds_and_trains():
    seen = {}

    def small(config, num_classes, *, regularized=False):
        seen["regularized"] = regularized
        return _Small(num_classes)

    register_model("small-test", small)
    try:
        config = ModelConfig(kind="small-test", input_mean=(0.5,), input_std=(0.25,))
        config.check()
        network = build_network(config, 10, regularized=True)
        assert seen["regularized"] and network.input_mean == (0.5,)
        assert convolution_form(config, TrainConfig()).source == "default"
        with pytest.raises(MemjaxError, match="width masks"):
            build_network(config, 10, masked=True)
        # a factory may return a whole Network: its own normalization stays unless set
        register_model("small-network", lambda config, num_classes: Network(
            _Small(num_classes), input_mean=(0.1,)))
        assert build_network(ModelConfig(kind="small-network"), 10).input_mean == (0.1,)
        with pytest.raises(MemjaxError, match="without ':'"):
            register_model("a:b", small)
    finally:
        from memjax.models import registry
        registry._REGISTRY.pop("small-test", None)
        registry._REGISTRY.pop("small-network", None)


class _Small(nn.Module):
    """A linear model, registered in Python by the test above."""

    num_classes: int = 10

    @nn.compact
    def __call__(self, x, train: bool = False):
        return nn.Dense(self.num_classes)(x.reshape((x.shape[0], -1)))


class _MaskedBN(nn.Module):
    """BatchNorm over the rows of example_mask, then a linear read-out."""

    num_classes: int = 10

    @nn.compact
    def __call__(self, x, train: bool = False, example_mask=None):
        mask = None if example_mask is None else example_mask.reshape(-1, 1, 1, 1)
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x, mask=mask)
        return nn.Dense(self.num_classes)(x.reshape((x.shape[0], -1)))


def test_network_normalizes_its_input_per_channel():
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.5)
    register_model("masked-bn-test", lambda config, num_classes: _MaskedBN(num_classes))
    try:
        model = ModelConfig(kind="masked-bn-test")
        plain = build_network(model, 10)
        normalized = build_network(dataclasses.replace(model, input_mean=mean, input_std=std),
                                   10)
    finally:
        from memjax.models import registry
        registry._REGISTRY.pop("masked-bn-test", None)
    assert normalized.input_mean == mean and normalized.input_std == std
    assert normalized.takes_example_mask
    x = jnp.asarray(np.random.default_rng(1).uniform(size=(4, 8, 8, 3)), jnp.float32)
    z = (x - jnp.asarray(mean)) / jnp.asarray(std)
    variables = normalized.init(jax.random.key(0), x[:1])
    np.testing.assert_allclose(normalized.apply(variables, x),
                               plain.module.apply(variables, z, train=False),
                               rtol=1e-5, atol=1e-6)
    mask = jnp.array([True, True, False, True])
    got, got_stats = normalized.apply_train(variables, x, jax.random.key(1), mask)
    want, want_stats = plain.module.apply(variables, z, train=True, example_mask=mask,
                                          mutable=["batch_stats"])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    for a, b in zip(jax.tree_util.tree_leaves(got_stats), jax.tree_util.tree_leaves(want_stats)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    with pytest.raises(MemjaxError, match="input_mean has 3 values but the input 28x28x1 "
                                          "has 1 channels"):
        normalized.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
    with pytest.raises(MemjaxError, match="input_mean has 3 values and model.input_std 2"):
        ModelConfig(input_mean=mean, input_std=(1.0, 1.0)).check()
    with pytest.raises(MemjaxError, match="input_std must be positive"):
        ModelConfig(input_std=(0.0,)).check()


@pytest.mark.parametrize("kind", [OUTSIDE, OUTSIDE_NNX])
def test_outside_model_trains_as_an_ensemble_through_the_python_api(kind):
    from memjax.runner import Runner

    data = load_dataset(DataConfig(train_size=128, validation_size=32))
    runner = Runner(ModelConfig(kind=kind), TrainConfig(members=3, batch_size=32,
                                                           learning_rate=0.1, momentum=0.9),
                    data.train, data.num_classes)
    assert not runner.network.takes_example_mask
    assert Network(ResNet9()).takes_example_mask
    start = jax.device_get(runner.member_state().variables)
    history = runner.run(2, phase="outside")
    assert history["train_loss"].shape == (2, 3) and np.isfinite(history["train_loss"]).all()
    after = runner.member_state().variables
    norm = "norm" if kind == OUTSIDE_NNX else "BatchNorm_0"
    mean = after["batch_stats"][norm]["mean"]
    assert not np.allclose(mean, start["batch_stats"][norm]["mean"])  # updated
    assert not np.allclose(mean[0], mean[1])  # each member its own statistics
    correct = runner.evaluate(runner.x[:32], runner.y[:32])["correct"]
    assert correct.shape == (3, 32)


@pytest.mark.parametrize("kind", [OUTSIDE, OUTSIDE_NNX])
def test_outside_model_runs_a_study_from_the_cli_and_exports_scores(kind, capsys, tmp_path):
    out = tmp_path / "run"
    assert main(["run", "cscore", "--preset", "smoke", "--model", kind, "--out", str(out),
                 "--seeds", "2", "--set", "ratios=0.5", "--set", "one_epoch_members=0",
                 "--set", "data.train_size=128", "--set", "data.validation_size=32",
                 "--set", "train.epochs=1", "--set", "train.batch_size=32"]) == 0
    scores = np.load(out / "cscores.npz")
    assert scores["cscore"].shape == (128,) and len(scores["index"]) == 128
    assert (out / "cscores.csv").exists()
    manifest = (out / "manifest.json").read_text()
    assert kind in manifest


@pytest.mark.parametrize("model, message", [
    ("rnn", "unknown model 'rnn'; known: mlp, cnn, paper-cnn, resnet9, resnet18"),
    ("no_such_module:factory", "no module named 'no_such_module'"),
    ("outside_model:nosuch", "module outside_model has no attribute 'nosuch'"),
    ("outside_model:not_a_module", "its factory returned dict, not a flax.linen Module"),
    ("outside_model:nnx_built", "its factory returned a built NNX module (OutsideNNX); "
                                "return flax.nnx.bridge.to_linen(OutsideNNX, *args)"),
    ("outside_model:wrong_shape", "gives logits of shape (2, 11) for 2 inputs of shape "
                                  "28x28x1; expected (2, 10)"),
    ("outside_model:no_num_classes", "its factory must take the keyword argument num_classes"),
    ("outside_model:raises", "its factory raised KeyError: 'no config for 10 classes'"),
    ("outside_model:no_params", "model _Broken has no parameters"),
    ("outside_model:asserts", "model _Broken fails as module(x, train=False) on 2 inputs of "
                              "shape 28x28x1: AssertionError: expects CIFAR images"),
    ("outside_model:train_bug", "model _Broken fails in training mode, as module(x, "
                                "train=True), on 2 inputs of shape 28x28x1: ScopeParamShapeError"),
    ("outside_model:other_rng", "InvalidRngError: None needs PRNG for \"noise\""),
    ("outside_model:int_logits", "model _Broken gives logits of dtype int32"),
])
def test_bad_models_are_one_line_from_the_cli(capsys, tmp_path, model, message):
    line = _error(capsys, ["run", "cscore", "--preset", "smoke", "--model", model,
                           "--out", str(tmp_path / "run")])
    assert message in line, line


def test_images_too_small_for_the_model_are_one_line(capsys, tmp_path):
    """ResNet-9's three pools and its global max leave nothing of 7 x 7 images."""
    line = _error(capsys, ["run", "cscore", "--preset", "smoke", "--model", "resnet9",
                           "--set", "data.downscale=4", "--out", str(tmp_path / "run")])
    assert "model ResNet9 cannot take inputs of shape 7x7x1: zero-size array" in line, line


def test_model_flag_needs_a_study_with_a_model(capsys, tmp_path, monkeypatch):
    from memjax import cli

    @dataclasses.dataclass(frozen=True)
    class NoModel:
        train: TrainConfig = TrainConfig()

    class Study:
        PRESETS = {"cpu": NoModel()}

    monkeypatch.setattr(cli, "_experiment", lambda name: Study)
    assert "has no `model` setting for --model" in _error(
        capsys, ["run", "nomodel", "--model", "resnet9", "--out", str(tmp_path / "r")])


def test_the_plan_times_resnet9_by_its_rows_and_other_models_at_the_cnn_rate():
    """ResNet-9 by its own bench rows, in its precision (a row's compute_dtype: the
    resnet9 rows' impl has no -bf16 suffix), the CNN's rate where none is recorded;
    every other model but the MLP at the CNN's rate."""
    from memjax import cost, plan

    record = {"file": "h100.json", "device": {"kind": "NVIDIA H100 80GB HBM3"},
              "roofline": {"peak_tflops": 370.0, "bandwidth_gbs": 2000.0}, "rows": [
                  {"case": "a_mlp512", "impl": "jax-ensemble", "tflops": 40.0},
                  {"case": "c_cnn", "impl": "jax-lax.map", "tflops": 75.0}]}
    rates = plan.Rates("h100", [record])
    for kind, rate in (("mlp", 40e12), ("cnn", 75e12), ("resnet9", 75e12),
                       ("resnet18", 75e12), (OUTSIDE, 75e12)):
        step = cost.Step("s", "train", kind, cost.Cost(1e9, 0), 1, per_example=10)
        assert rates.rate(step).flops_per_s == rate
    step = cost.Step("s", "evaluate", "resnet9", cost.Cost(1e9, 0), 1, per_example=10)
    assert "no resnet9 evaluate record here" in rates.rate(step).source
    record["rows"].append({"case": "resnet9", "impl": "jax-ensemble", "tflops": 120.0,
                           "compute_dtype": "bfloat16"})
    rates = plan.Rates("h100", [record])
    for kind in ("train", "evaluate", "search"):
        bf16 = cost.Step("s", kind, "resnet9", cost.Cost(1e9, 0), 1, per_example=10,
                         precision="bfloat16")
        rate = rates.rate(bf16)
        assert rate.flops_per_s == 120e12 and rate.source.startswith("resnet9 jax-ensemble")
    # a float32 ResNet-9 is not timed by a bf16 row: the CNN's float32 rate
    float32 = cost.Step("s", "train", "resnet9", cost.Cost(1e9, 0), 1, per_example=10)
    assert rates.rate(float32).flops_per_s == 75e12
    assert rates.rate(cost.Step("s", "train", "resnet18", cost.Cost(1e9, 0), 1,
                                per_example=10)).flops_per_s == 75e12
    # rows of the program's convolution form first; another form's, saying so, if none
    record["rows"][-1]["conv_form"] = "conv"
    record["rows"].append({"case": "resnet9", "impl": "jax-ensemble", "tflops": 200.0,
                           "compute_dtype": "bfloat16", "conv_form": "im2col"})
    rates = plan.Rates("h100", [record])
    step = lambda form: cost.Step("s", "train", "resnet9", cost.Cost(1e9, 0), 1,
                                  per_example=10, precision="bfloat16", conv_form=form)
    assert rates.rate(step("im2col")).flops_per_s == 200e12
    assert rates.rate(step("conv")).flops_per_s == 120e12
    del record["rows"][-2]
    rate = plan.Rates("h100", [record]).rate(step("conv"))
    assert rate.flops_per_s == 200e12 and "im2col form (no conv row)" in rate.source


def test_an_nnx_model_gets_example_mask_through_the_bridge():
    """Flax's bridge passes keywords on to the NNX module's __call__: one that takes
    example_mask gets it, and its BatchNorm statistics are those of the masked rows alone."""
    network = build_network(ModelConfig(kind="outside_model:nnx_masked"), 10)
    assert network.name == "OutsideNNXMasked" and network.takes_example_mask
    x = jnp.asarray(np.random.default_rng(2).uniform(size=(4, 28, 28, 1)), jnp.float32)
    variables = network.init(jax.random.key(0), x[:1])
    _, masked = network.apply_train(variables, x, jax.random.key(1),
                                    jnp.array([True, True, False, True]))
    _, alone = network.apply_train(variables, x[jnp.array([0, 1, 3])], jax.random.key(1))
    for a, b in zip(jax.tree_util.tree_leaves(masked), jax.tree_util.tree_leaves(alone)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    _, everything = network.apply_train(variables, x, jax.random.key(1))
    assert not np.allclose(jax.tree_util.tree_leaves(masked)[0],
                           jax.tree_util.tree_leaves(everything)[0])


def test_a_factory_in_the_current_directory_may_import_its_siblings_when_called(
        tmp_path, monkeypatch):
    """As under `python -m`, the current directory stays importable: a factory that imports
    a module beside it only when memjax calls it finds that module."""
    import sys

    (tmp_path / "lazy_model.py").write_text(
        "def factory(num_classes):\n    import lazy_helper\n"
        "    return lazy_helper.Dense(num_classes)\n")
    (tmp_path / "lazy_helper.py").write_text(
        "import flax.linen as nn\n\nclass Dense(nn.Module):\n    num_classes: int\n\n"
        "    @nn.compact\n    def __call__(self, x, train=False):\n"
        "        return nn.Dense(self.num_classes)(x.reshape((x.shape[0], -1)))\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    for name in ("lazy_model", "lazy_helper"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    network = build_network(ModelConfig(kind="lazy_model:factory"), 10)
    assert network.name == "Dense"
    network.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
    for name in ("lazy_model", "lazy_helper"):
        sys.modules.pop(name, None)


def test_subset_members_of_a_batchnorm_model_without_example_mask_are_noted_once(
        capsys, monkeypatch):
    """Members on subsets (cscore, memorization) of a BatchNorm model whose __call__ takes
    no example_mask: its statistics count the other examples too, which is said once per
    model; one that takes the mask, or members on all examples, are not noted."""
    from memjax import members as members_module
    from memjax.members import Members
    from memjax.runner import Runner

    monkeypatch.setattr(members_module, "_NOTED", set())
    data = load_dataset(DataConfig(train_size=64, validation_size=16))
    subsets = np.arange(64)[None, :] < np.array([[32], [48]])
    train = TrainConfig(members=2, batch_size=16)

    def notes(kind, members):
        capsys.readouterr()
        Runner(ModelConfig(kind=kind), train, data.train, data.num_classes, members)
        return capsys.readouterr().err.count("memjax: note: model ")

    assert notes(OUTSIDE, Members(np.arange(2))) == 0
    assert notes(OUTSIDE, Members(np.arange(2), example_mask=subsets)) == 1
    assert notes(OUTSIDE, Members(np.arange(2), example_mask=subsets)) == 0
    assert notes("outside_model:nnx_masked", Members(np.arange(2), example_mask=subsets)) == 0
