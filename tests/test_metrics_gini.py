"""Gini coefficient on cases with known answers, and against the O(n^2) definition."""
import jax.numpy as jnp
import numpy as np

from memjax.metrics import gini


def test_equal_values_give_zero():
    np.testing.assert_allclose(gini(jnp.full((7,), 3.5)), 0.0, atol=1e-6)


def test_single_nonzero_gives_n_minus_1_over_n():
    for n in (2, 5, 1000):
        v = np.zeros(n, np.float32)
        v[n // 3] = 2.0
        np.testing.assert_allclose(gini(v), (n - 1) / n, rtol=1e-5)


def test_all_zero_gives_zero():
    assert float(gini(jnp.zeros(4))) == 0.0


def test_matches_pairwise_definition_along_any_axis():
    v = np.random.default_rng(0).exponential(size=(3, 50, 4)).astype(np.float32)
    pairwise = np.abs(v[:, :, None, :] - v[:, None, :, :]).sum((1, 2)) / (2 * 50 * v.sum(1))
    np.testing.assert_allclose(gini(v, axis=1), pairwise, rtol=1e-4)
    assert gini(v, axis=1).shape == (3, 4)


def test_documented_examples_run():
    """The usage examples in memjax.metrics' docstrings are executed and their output checked."""
    import doctest

    import memjax.metrics as mm

    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    finder = doctest.DocTestFinder(recurse=False)
    for obj, name in ((mm, "memjax.metrics"), (mm.gini, "gini")):
        tests = finder.find(obj, name, globs={"jnp": jnp, "gini": gini})
        assert sum(len(t.examples) for t in tests) > 0
        for t in tests:
            runner.run(t)
    assert runner.summarize(verbose=False).failed == 0
