"""Loss sensitivity through the unrolled SGD trajectory, against finite differences on a
tiny problem (perturb one training input, retrain from scratch, compare L_t), and the
trajectory against the ensemble trainer."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from memjax.config import ModelConfig
from memjax.ensemble import init_ensemble, make_optimizer
from memjax.keys import DATA
from memjax.metrics import trainer_order, unrolled_loss_sensitivity
from memjax.models import build_network
from memjax.order import epoch_order
from memjax.train import make_train_epoch

N, D, H, C, T, B, LR = 6, 4, 5, 3, 5, 2, 0.7


def apply_fn(variables, x):
    """A smooth (tanh) one-hidden-layer network, so finite differences are accurate."""
    p = variables["params"]
    return jnp.tanh(x.reshape(x.shape[0], -1) @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"]


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(1)
    params = {"w1": rng.normal(size=(2, D, H)), "b1": rng.normal(size=(2, H)) * 0.1,
              "w2": rng.normal(size=(2, H, C)), "b2": np.zeros((2, C))}
    params = {k: v.astype(np.float32) for k, v in params.items()}
    x = rng.uniform(size=(N, 2, 2, 1)).astype(np.float32)
    y = np.array([0, 1, 2, 0, 1, 1], np.int32)
    order = np.stack([rng.permutation(np.tile(np.arange(N), 2))[: T * B].reshape(T, B)
                      for _ in range(2)]).astype(np.int32)
    weight = np.ones((2, T, B), np.float32)
    weight[1, 3, 1] = 0.0  # a padded slot, as in the trainer's last batch
    return {"params": params}, x, y, order, weight


def _reference_losses(params, x, y, order, weight, lr, loss_on, x_loss=None):
    """SGD unrolled as a Python loop (float64 under enable_x64) on inputs x; returns L_t^(i)
    for every step t and class i, evaluated on x_loss (default x): [T, C]. order, weight:
    host arrays [T, B]."""
    x_loss = x if x_loss is None else x_loss
    params = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), params)

    def class_terms(p, idx, w, inputs=x):
        logits = apply_fn({"params": p}, inputs[idx])
        ce = -jax.nn.log_softmax(logits)[jnp.arange(len(idx)), y[idx]] * w
        return jnp.stack([jnp.where(y[idx] == c, ce, 0.0).sum() for c in range(C)]) / max(
            w.sum(), 1.0)

    out = []
    for t in range(len(order)):
        if loss_on == "batch":
            out.append(class_terms(params, order[t], weight[t], x_loss))
        else:
            out.append(class_terms(params, np.arange(N), np.ones(N), x_loss))
        g = jax.grad(lambda p: class_terms(p, order[t], weight[t]).sum())(params)
        params = jax.tree_util.tree_map(lambda p, g: p - lr * g, params, g)
    return jnp.stack(out)


@pytest.mark.parametrize("loss_on,direct", [("batch", False), ("full", False),
                                            ("batch", True), ("full", True)])
def test_matches_finite_differences_through_retraining(problem, loss_on, direct):
    """direct=False (the paper's g_x^t): perturb x where SGD trains on it, evaluate L_t on
    the unperturbed inputs; direct=True: perturb x everywhere."""
    variables, x, y, order, weight = problem
    result = unrolled_loss_sensitivity(apply_fn, variables, x, y, order, weight,
                                       learning_rate=LR, every=2, loss_on=loss_on,
                                       direct=direct, num_classes=C, cotangent_chunk=2)
    first = 0 if direct else 2
    k = len(range(first, T, 2))
    assert result.per_step.shape == (2, k, N) and result.per_class.shape == (2, C, C)
    np.testing.assert_array_equal(result.steps, np.arange(first, T, 2))
    eps = 1e-6
    with jax.enable_x64():
        for m in range(2):
            pm = jax.tree_util.tree_map(lambda a: a[m], variables["params"])
            base = np.asarray(x, np.float64).reshape(N, D)
            # every single-coordinate perturbation, each one a full retraining
            shifts = np.eye(N * D).reshape(N * D, N, D) * eps
            fixed = None if direct else jnp.asarray(base.reshape(x.shape))
            retrain = jax.jit(jax.vmap(lambda xs: _reference_losses(
                pm, xs.reshape(x.shape), y, order[m], weight[m], LR, loss_on, fixed)))
            fd = (retrain(base + shifts) - retrain(base - shifts)) / (2 * eps)  # [N*D, T, C]
            jac = np.moveaxis(np.asarray(fd).reshape(N, D, T, C), (0, 1), (2, 3))  # [T, C, N, D]
            chosen = jac[first::2]  # t = 0, 2, 4 (direct) or 2, 4
            per_step = np.abs(chosen.sum(1)).sum(-1)  # ||dL_t/dx||_1: [K, N]
            np.testing.assert_allclose(result.per_step[m], per_step, rtol=2e-3, atol=1e-5)
            np.testing.assert_allclose(result.mean[m], per_step.mean(0), rtol=2e-3, atol=1e-5)
            class_norms = np.abs(chosen).sum(-1).mean(0)  # [i, N]
            per_class = np.stack([class_norms[:, y == j].mean(1) for j in range(C)], 1)
            np.testing.assert_allclose(result.per_class[m], per_class, rtol=2e-3, atol=1e-5)
            losses = _reference_losses(pm, jnp.asarray(base.reshape(x.shape)), y, order[m],
                                       weight[m], LR, loss_on)
            np.testing.assert_allclose(result.losses[m], np.asarray(losses)[first::2].sum(1),
                                       rtol=1e-4)
    # the trajectory carries x's influence: an example trained on before t = 4 matters then
    for m in range(2):
        trained = np.isin(np.arange(N), order[m, :4][weight[m, :4] > 0])
        assert (np.asarray(result.per_step[m, -1])[trained] > 0).all()


def test_without_the_direct_term_untrained_examples_have_no_sensitivity(problem):
    """An example no step before t trained on cannot influence theta_t: g_x^t = 0 exactly,
    while the direct term (direct=True, loss on all examples) makes it positive."""
    variables, x, y, order, weight = problem
    order = order.copy()
    order[:, :2] = np.array([[0, 1], [2, 3]])  # steps 0-1 train only on examples 0-3
    weight = np.ones_like(weight)
    paper, with_direct = (unrolled_loss_sensitivity(
        apply_fn, variables, x, y, order, weight, learning_rate=LR, every=2, direct=d)
        for d in (False, True))
    assert paper.per_step[:, 0, 4:].max() == 0.0 and paper.per_step[:, 0, :4].min() > 0
    assert with_direct.per_step[:, 1, 4:].min() > 0
    # the same trajectory either way
    for a, b in zip(jax.tree_util.tree_leaves(paper.params),
                    jax.tree_util.tree_leaves(with_direct.params)):
        np.testing.assert_array_equal(a, b)


def test_a_grid_without_chosen_steps_is_an_error(problem):
    variables, x, y, order, weight = problem
    with pytest.raises(ValueError, match="no chosen step"):
        unrolled_loss_sensitivity(apply_fn, variables, x, y, order, weight, learning_rate=LR,
                                  every=T)


def test_trajectory_equals_the_ensemble_trainer():
    """With the trainer's own data order, the unrolled SGD ends where make_train_epoch does."""
    network = build_network(ModelConfig(hidden=(8,)), 10)
    tx = make_optimizer()
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (40, 4, 4, 1), dtype=np.uint8)
    y = rng.integers(0, 10, 40).astype(np.int32)
    state = init_ensemble(network, tx, jnp.zeros((1, 4, 4, 1)), seed=5,
                          member_ids=np.arange(2), learning_rate=0.3)
    start = state.variables
    epochs, batch = 2, 16
    order, weight = trainer_order(5, np.arange(2), num_examples=40, batch_size=batch,
                                  epochs=epochs)
    # the helper's order is the trainer's: epoch 1 of member 1 by hand
    key = jax.random.fold_in(jax.random.fold_in(jax.random.fold_in(jax.random.key(5), 1), DATA), 1)
    np.testing.assert_array_equal(order[1, 3:], epoch_order(key, 40, batch)[0])
    result = unrolled_loss_sensitivity(network.apply, start, x, y, order, weight,
                                       learning_rate=0.3, every=3)
    train_epoch = make_train_epoch(network, tx, batch_size=batch)
    for _ in range(epochs):
        state, _ = train_epoch(state, 5, x, y)
    for a, b in zip(jax.tree_util.tree_leaves(result.params),
                    jax.tree_util.tree_leaves(state.variables["params"])):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    assert result.per_step.shape == (2, 1, 40)  # T = 6 steps, every 3 -> t = 3
