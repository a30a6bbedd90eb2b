"""The training recipes of the fast CIFAR-10 trainers (TrainConfig's lr_schedule,
warmup_epochs, nesterov, label_smoothing, eval_flip, augment_*): schedules against optax's
own, each step's learning rate, Nesterov momentum against optax.sgd, label smoothing and
flip test-time augmentation against hand-written references, a resumed run with them
against an uninterrupted one, and the defaults' program against the one without them."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from memjax import keys
from memjax.augment import Augmentation
from memjax.config import DataConfig, ModelConfig, TrainConfig
from memjax.data import load_dataset
from memjax.ensemble import init_ensemble, make_optimizer
from memjax.errors import MemjaxError
from memjax.evaluation import evaluate, evaluation_program
from memjax.members import Members, build_ensemble, epoch_program
from memjax.metrics.lass import lass_adversarial_examples
from memjax.models import as_float, build_network, computing_in
from memjax.order import epoch_order
from memjax.results import RunDir
from memjax.runner import Runner
from memjax.sharding import member_mesh
from memjax.train import example_losses, make_train_epoch, schedule_multiplier

MODEL = ModelConfig(hidden=(16,))


@pytest.fixture(scope="module")
def data():
    d = load_dataset(DataConfig(train_size=160, validation_size=64))
    return d, jnp.asarray(d.train.x), jnp.asarray(d.train.y)


def _optax_schedule(name, warmup, total):
    if name == "onecycle":
        return optax.join_schedules([optax.linear_schedule(0.0, 1.0, warmup),
                                     optax.linear_schedule(1.0, 0.0, total - warmup)], [warmup])
    return optax.warmup_cosine_decay_schedule(0.0, 1.0, warmup, total, 0.0)


@pytest.mark.parametrize("name", ["onecycle", "cosine"])
@pytest.mark.parametrize("steps,warmup_epochs,epochs", [(7, 2, 5), (4, 1.5, 3), (5, 0, 2)])
def test_schedules_equal_optax(name, steps, warmup_epochs, epochs):
    warmup, total = int(warmup_epochs * steps), epochs * steps
    count = np.arange(total + 3)  # (and past the end: 0)
    ours = jax.jit(functools.partial(schedule_multiplier, name, warmup_steps=warmup,
                                     total_steps=total))(count)
    if warmup == 0:
        reference = (optax.linear_schedule(1.0, 0.0, total) if name == "onecycle" else
                     optax.cosine_decay_schedule(1.0, total))(count)
    else:
        reference = jax.vmap(_optax_schedule(name, warmup, total))(count)
    np.testing.assert_allclose(ours, reference, rtol=1e-6, atol=1e-7)
    if name == "onecycle":  # ffcv's np.interp and Page's PiecewiseLinear
        np.testing.assert_allclose(ours, np.interp(count, [0, warmup, total], [0, 1, 0]),
                                   rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(schedule_multiplier("constant", count, warmup, total), 1.0)


def test_every_step_takes_the_scheduled_rate(data):
    """The rate in the optimizer state after each epoch is the member's rate times the
    schedule at that epoch's last step; and a member trained with onecycle, Nesterov
    momentum, weight decay and label smoothing equals a plain loop over its batches with
    optax.chain(add_decayed_weights, sgd(schedule, nesterov=True)) and a hand-written
    smoothed cross-entropy."""
    _, x, y = data
    network = build_network(MODEL, 10)
    lrs, epochs, steps, a, wd = np.array([0.2, 0.05]), 3, 5, 0.1, 5e-4
    tx = make_optimizer(0.9, nesterov=True)
    state = init_ensemble(network, tx, jnp.zeros((1, 28, 28, 1)), seed=2,
                          member_ids=np.array([1, 6]), learning_rate=lrs, weight_decay=wd)
    start = jax.device_get(state.variables["params"])
    epoch_fn = make_train_epoch(network, tx, batch_size=32, lr_schedule="onecycle",
                                warmup_epochs=1, schedule_epochs=epochs, label_smoothing=a)
    schedule = _optax_schedule("onecycle", steps, epochs * steps)
    for e in range(epochs):
        state, _ = epoch_fn(state, 2, x, y)
        np.testing.assert_allclose(state.opt_state.hyperparams["learning_rate"],
                                   lrs * schedule((e + 1) * steps - 1), rtol=1e-6)

    for m, member in enumerate([1, 6]):
        reference = optax.chain(optax.add_decayed_weights(wd), optax.sgd(
            lambda count: lrs[m] * schedule(count), momentum=0.9, nesterov=True))
        params = jax.tree_util.tree_map(lambda l: l[m], start)
        opt = reference.init(params)
        for e in range(epochs):
            order, weight = epoch_order(keys.order_key(2, member, e), 160, 32)
            assert order.shape[0] == steps
            for idx in np.asarray(order):
                xb, yb = as_float(x[idx]), np.asarray(y[idx])
                targets = (1 - a) * np.eye(10)[yb] + a / 10

                def loss(p):
                    logp = jax.nn.log_softmax(network.apply({"params": p}, xb))
                    return -(targets * logp).sum(-1).mean()

                updates, opt = reference.update(jax.grad(loss)(params), opt, params)
                params = optax.apply_updates(params, updates)
        for u, v in zip(jax.tree_util.tree_leaves(jax.tree_util.tree_map(
                lambda l: l[m], state.variables["params"])), jax.tree_util.tree_leaves(params)):
            np.testing.assert_allclose(u, v, rtol=5e-4, atol=5e-5)


def test_nesterov_equals_optax_sgd():
    rng = np.random.default_rng(0)
    params = {"w": jnp.asarray(rng.normal(size=(4, 3)), jnp.float32)}
    ours = make_optimizer(0.9, nesterov=True)
    theirs = optax.chain(optax.add_decayed_weights(1e-3),
                         optax.sgd(0.1, momentum=0.9, nesterov=True))
    s1, s2 = ours.init(params), theirs.init(params)
    s1.hyperparams.update(learning_rate=jnp.float32(0.1), weight_decay=jnp.float32(1e-3))
    p1 = p2 = params
    for _ in range(4):
        g = {"w": jnp.asarray(rng.normal(size=(4, 3)), jnp.float32)}
        u1, s1 = ours.update(g, s1, p1)
        u2, s2 = theirs.update(g, s2, p2)
        p1, p2 = optax.apply_updates(p1, u1), optax.apply_updates(p2, u2)
    np.testing.assert_array_equal(p1["w"], p2["w"])
    # and it is not heavy-ball momentum
    heavy = make_optimizer(0.9)
    s = heavy.init(params)
    s.hyperparams.update(learning_rate=jnp.float32(0.1))
    g = {"w": jnp.ones((4, 3))}
    assert not np.allclose(heavy.update(g, s, params)[0]["w"],
                           ours.update(g, ours.init(params), params)[0]["w"])


def test_label_smoothing_loss():
    rng = np.random.default_rng(1)
    logits = jnp.asarray(rng.normal(size=(6, 5)), jnp.float32)
    labels = jnp.asarray([0, 4, 2, 2, 1, 3])
    logp = np.asarray(jax.nn.log_softmax(logits))
    for a in (0.1, 0.3):
        targets = (1 - a) * np.eye(5)[np.asarray(labels)] + a / 5
        np.testing.assert_allclose(example_losses(logits, labels, a),
                                   -(targets * logp).sum(-1), rtol=1e-6)
        # Page's form: (1 - a) cross-entropy + a x mean over classes of -log p
        page = (1 - a) * -logp[np.arange(6), np.asarray(labels)] + a * -logp.mean(-1)
        np.testing.assert_allclose(example_losses(logits, labels, a), page, rtol=1e-6)
    np.testing.assert_array_equal(example_losses(logits, labels, 0.0),
                                  optax.softmax_cross_entropy_with_integer_labels(logits, labels))


def test_eval_flip_averages_the_logits_of_x_and_its_mirror(data):
    d, x, y = data
    network = build_network(MODEL, 10)
    state = init_ensemble(network, make_optimizer(), jnp.zeros((1, 28, 28, 1)), seed=0,
                          member_ids=np.arange(3), learning_rate=0.1)
    xv, yv = jnp.asarray(d.validation.x), jnp.asarray(d.validation.y)
    train = TrainConfig(eval_chunk=32, eval_flip=True)
    out = evaluation_program(network.apply, train)(state.variables, xv, yv)
    for m in range(3):
        v = jax.tree_util.tree_map(lambda l: l[m], state.variables)
        logits = (network.apply(v, as_float(xv)) + network.apply(v, as_float(xv)[:, :, ::-1])) / 2
        np.testing.assert_array_equal(out["correct"][m], np.argmax(logits, -1) == np.asarray(yv))
        np.testing.assert_allclose(out["loss"][m], optax.softmax_cross_entropy_with_integer_labels(
            logits, yv), rtol=1e-5, atol=1e-6)
    # off, and in bf16: evaluate itself
    for dtype in ("float32", "bfloat16"):
        plain = evaluation_program(network.apply, TrainConfig(eval_chunk=32, compute_dtype=dtype))(
            state.variables, xv, yv)
        direct = evaluate(computing_in(network.apply, dtype), state.variables, xv, yv, chunk=32)
        np.testing.assert_array_equal(plain["loss"], direct["loss"])
    flipped = evaluation_program(network.apply, TrainConfig(eval_chunk=32, eval_flip=True,
                                                            compute_dtype="bfloat16"))
    assert np.isfinite(flipped(state.variables, xv, yv)["loss"]).all()


RECIPES = dict(lr_schedule="onecycle", warmup_epochs=0.5, momentum=0.9, nesterov=True,
               weight_decay=5e-4, label_smoothing=0.1, augment_crop=2, augment_flip=True,
               augment_cutout=6, eval_flip=True)


def _measure(runner, epoch):
    return {"val": runner.evaluate(runner.x[:64], runner.y[:64])["correct"].mean(1)}


@pytest.mark.parametrize("model", [MODEL, ModelConfig(kind="resnet9", width=4)],
                         ids=["mlp", "resnet9"])
def test_resumed_run_with_recipes_is_bit_identical(data, model, tmp_path, capsys):
    """The ResNet carries BatchNorm statistics through the checkpoint as well."""
    d, *_ = data
    train = TrainConfig(members=3, epochs=2, batch_size=32, learning_rate=0.1, **RECIPES)
    train.check()
    whole_dir = RunDir(tmp_path / "whole")
    whole_dir.start("test", {})
    whole = Runner(model, train, d.train, 10)
    history = whole.run(2, phase="p", run_dir=whole_dir, measure=_measure)
    # a run that stops after its first epoch, then is resumed to the second
    part = RunDir(tmp_path / "part", checkpoint_every=1)
    part.start("test", {})
    Runner(model, train, d.train, 10).run(1, phase="p", run_dir=part, measure=_measure)
    resumed_dir = RunDir(tmp_path / "part", resume=True, checkpoint_every=1)
    resumed_dir.start("test", {})
    resumed = Runner(model, train, d.train, 10)
    capsys.readouterr()
    resumed_history = resumed.run(2, phase="p", run_dir=resumed_dir, measure=_measure)
    assert "p: resumed from the checkpoint of epoch 1/2" in capsys.readouterr().err
    for name in history:
        np.testing.assert_array_equal(resumed_history[name], history[name], err_msg=name)
    for u, v in zip(jax.tree_util.tree_leaves(whole.member_state()),
                    jax.tree_util.tree_leaves(resumed.member_state())):
        np.testing.assert_array_equal(np.asarray(u), np.asarray(v))
    assert np.isfinite(history["train_loss"]).all()


def test_recipes_train_in_bf16(data):
    d, *_ = data
    train = TrainConfig(members=2, epochs=2, batch_size=32, learning_rate=0.1,
                        compute_dtype="bfloat16", **RECIPES)
    runner = Runner(MODEL, train, d.train, 10)
    history = runner.run(2, phase="bf16", measure=_measure)
    assert np.isfinite(history["train_loss"]).all()
    assert not np.asarray(runner.member_state().diverged).any()
    assert history["train_loss"][1].mean() < history["train_loss"][0].mean()


def test_defaults_compile_the_program_without_recipes(data):
    """A TrainConfig at its defaults gives the epoch that make_train_epoch builds without
    the recipe arguments (the same lowered program); augmentation off adds nothing."""
    _, x, y = data
    train = TrainConfig(members=2, batch_size=32, learning_rate=0.1, momentum=0.9)
    network, tx, state = build_ensemble(MODEL, train, 10, np.zeros((1, 28, 28, 1), np.float32),
                                        Members(np.arange(2)))
    mesh = member_mesh(1)
    wired = epoch_program(network, tx, train, mesh, None)
    bare = make_train_epoch(network, tx, batch_size=32, member_chunk=None, mesh=mesh,
                            adversarial_examples=functools.partial(
                                lass_adversarial_examples, protocol="exhaustive"))
    text = lambda fn: fn.lower(state, 0, x, y).as_text()
    assert text(wired) == text(bare)
    augmented = make_train_epoch(network, tx, batch_size=32, mesh=mesh,
                                 augmentation=Augmentation(flip=True))
    assert text(augmented) != text(bare)
    inactive = make_train_epoch(network, tx, batch_size=32, mesh=mesh,
                                augmentation=Augmentation())
    assert text(inactive) == text(make_train_epoch(network, tx, batch_size=32, mesh=mesh))


@pytest.mark.parametrize("fields,match", [
    (dict(lr_schedule="step"), "lr_schedule"),
    (dict(lr_schedule="onecycle", warmup_epochs=3, epochs=3), "warmup_epochs"),
    (dict(lr_schedule="cosine", lr_halving_epochs=2, epochs=4), "lr_halving_epochs"),
    (dict(warmup_epochs=-1.0), "warmup_epochs"),
    (dict(nesterov=True), "nesterov"),
    (dict(label_smoothing=1.0), "label_smoothing"),
    (dict(label_smoothing=-0.1), "label_smoothing")])
def test_bad_recipes_are_one_line_errors(fields, match):
    with pytest.raises(MemjaxError, match=f"train.{match}"):
        TrainConfig(**fields).check()
