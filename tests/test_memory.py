"""Planned memory: the byte count of one member's computation, and the member chunk it
gives under a budget, against hand-counted cases."""
import jax
import jax.numpy as jnp
import numpy as np

from memjax import memory
from memjax.ensemble import map_members
from memjax.sharding import member_mesh


def test_member_bytes_counts_arguments_results_and_activations():
    x = jnp.ones((32, 8))  # shared data, closed over: not per member

    def f(w):  # w: [8, 16] -> activations [32, 16], result [16]
        return jnp.tanh(x @ w).sum(0)

    state, temporary = memory.member_bytes(f, jax.ShapeDtypeStruct((8, 16), jnp.float32))
    assert state == 4 * (8 * 16 + 16)
    # 2 copies of the argument, dot [32, 16], tanh [32, 16], sum [16]
    assert temporary == 4 * (2 * 8 * 16 + 2 * 32 * 16 + 16)


def test_plan_member_chunk_fits_the_budget():
    x = jnp.ones((64, 8))
    f = lambda w: (x @ w).sum()
    w = jnp.ones((10, 8, 4))
    state, temporary = memory.member_bytes(f, jax.ShapeDtypeStruct((8, 4), jnp.float32))
    assert memory.plan_member_chunk(f, (w,), budget_bytes=10 ** 9) == 10
    # not all at once: room for 3 copies of all 10 states (grouping copies them) and the
    # temporaries of 3: 4 groups of 3 -> balanced
    budget = 3 * 10 * state + 3 * temporary
    assert memory.plan_member_chunk(f, (w,), budget_bytes=budget) == 3
    # with one copy of the states the temporaries of 3 would fit, but not the regrouping
    assert memory.plan_member_chunk(f, (w,), budget_bytes=10 * state + 3 * temporary) < 3
    assert memory.plan_member_chunk(f, (w,), budget_bytes=1) == 1
    # per device: 10 members on 4 devices -> 3 a device
    assert memory.plan_member_chunk(f, (w,), devices=4, budget_bytes=10 ** 9) == 3


def test_tight_budget_chunks_and_keeps_results(monkeypatch):
    x = jnp.linspace(0, 1, 256).reshape(64, 4)
    f = lambda w, b: jnp.tanh(x @ w + b).mean(0)
    w, b = jnp.arange(7 * 4 * 3.0).reshape(7, 4, 3) / 50, jnp.ones((7, 3))
    run = jax.jit(map_members(f, None, mesh=member_mesh(1)))
    monkeypatch.setenv("MEMJAX_MEMORY_BYTES", "1")
    tight = jax.make_jaxpr(run)(w, b)
    np.testing.assert_allclose(run(w, b), jax.vmap(f)(w, b), rtol=1e-6)
    monkeypatch.setenv("MEMJAX_MEMORY_BYTES", str(10 ** 9))
    roomy = jax.make_jaxpr(jax.jit(map_members(f, None, mesh=member_mesh(1))))(w, b)
    assert "scan" in str(tight) and "scan" not in str(roomy)


def test_device_memory_is_known():
    assert memory.device_memory_bytes() > 2 ** 20
    assert 0 < memory.memory_budget_bytes() < memory.device_memory_bytes()


def test_convolutions_run_one_member_at_a_time_unless_told():
    x = jnp.ones((2, 8, 8, 3))
    conv = lambda w: jax.lax.conv_general_dilated(
        x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")).sum()
    w = jnp.ones((6, 3, 3, 3, 4))
    assert memory.plan_member_chunk(conv, (w,), budget_bytes=10 ** 9) == memory.CONV_CHUNK
    dense = lambda v: (x.reshape(2, -1) @ v).sum()
    assert memory.plan_member_chunk(dense, (jnp.ones((6, 192, 4)),), budget_bytes=10 ** 9) == 6
    out = map_members(conv, None, mesh=member_mesh(1))(w)
    np.testing.assert_allclose(out, jax.vmap(conv)(w), rtol=1e-6)
