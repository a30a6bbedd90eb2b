"""Per-example scores (memjax.metrics.scores) against plain-loop NumPy references written
example by example, and on cases with known answers."""
import doctest

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from memjax.metrics import scores
from memjax.metrics.scores import (aum, balanced_masks, cartography, cscore, el2n,
                                   first_learned_epoch, forgetting_events, holdout_consistency,
                                   influence, learned_for_good_epoch, margin, memorization)


def random_subsets(members, examples, seed, p=0.5):
    rng = np.random.default_rng(seed)
    included = rng.random((members, examples)) < p
    # correctness that depends on inclusion, so in / out accuracies differ
    correct = rng.random((members, examples)) < np.where(included, 0.9, 0.4)
    return included, correct


def loop_side_mean(included, correct, n, inside):
    picked = [float(correct[m, n]) for m in range(included.shape[0])
              if bool(included[m, n]) == inside]
    return sum(picked) / len(picked) if picked else float("nan")


# --- subset scores -------------------------------------------------------------------------

def test_holdout_consistency_matches_loop():
    included, correct = random_subsets(9, 40, seed=1)
    included[:, 3] = True  # no held-out member: NaN
    want = [loop_side_mean(included, correct, n, inside=False) for n in range(40)]
    got = np.asarray(holdout_consistency(included, correct))
    assert got.dtype == np.float32 and got.shape == (40,)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert np.isnan(got[3]) and np.isfinite(np.delete(got, 3)).all()


def test_memorization_matches_loop():
    included, correct = random_subsets(11, 50, seed=2)
    included[:, 0] = False
    included[:, 1] = True
    want = [loop_side_mean(included, correct, n, True) - loop_side_mean(included, correct, n, False)
            for n in range(50)]
    got = np.asarray(memorization(included, correct))
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    assert np.isnan(got[:2]).all() and np.isfinite(got[2:]).all()


def test_memorization_analytic_cases():
    included = balanced_masks(8, 3, 0.5, seed=0)
    correct = np.stack([included[:, 0],         # right iff trained on it: mem 1
                        np.ones(8, bool),        # always right: mem 0
                        ~included[:, 2]], 1)     # right iff held out: mem -1
    np.testing.assert_array_equal(memorization(included, correct), [1.0, 0.0, -1.0])
    np.testing.assert_array_equal(holdout_consistency(included, correct), [0.0, 1.0, 1.0])


def test_cscore_matches_loop_and_skips_empty_ratios():
    rng = np.random.default_rng(3)
    m, n, r = 24, 30, 3
    ratio_ids = np.arange(m) % r
    ratios = np.array([0.2, 0.5, 0.8])[ratio_ids]
    included = rng.random((m, n)) < ratios[:, None]
    correct = rng.random((m, n)) < 0.6
    included[ratio_ids == 2, 5] = True  # ratio 2 never holds example 5 out: left out
    included[:, 6] = True  # no ratio holds example 6 out: NaN
    want = []
    for j in range(n):
        per_ratio = []
        for q in range(r):
            held = [correct[i, j] for i in range(m) if ratio_ids[i] == q and not included[i, j]]
            if held:
                per_ratio.append(np.mean(held))
        want.append(np.mean(per_ratio) if per_ratio else np.nan)
    got = np.asarray(cscore(included, correct, ratio_ids, r))
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert np.isnan(got[6]) and np.isfinite(np.delete(got, 6)).all()
    # one ratio: the held-out accuracy itself
    np.testing.assert_allclose(cscore(included, correct, np.zeros(m, int), 1),
                               holdout_consistency(included, correct), rtol=1e-6)


def loop_influence(included, correct_test):
    m, n = included.shape
    t = correct_test.shape[1]
    infl = np.full((t, n), np.nan)
    for i in range(n):
        ins = [k for k in range(m) if included[k, i]]
        outs = [k for k in range(m) if not included[k, i]]
        if ins and outs:
            for j in range(t):
                infl[j, i] = (sum(correct_test[k, j] for k in ins) / len(ins)
                              - sum(correct_test[k, j] for k in outs) / len(outs))
    return infl


def check_top_k(values, indices, reference, k):
    """A valid top k of each row of `reference` (NaN last): the right values in descending
    order, distinct indices whose reference values they are."""
    values, indices = np.asarray(values), np.asarray(indices)
    assert values.shape == indices.shape == (reference.shape[0], k)
    ranked = np.where(np.isnan(reference), -np.inf, reference)
    want = -np.sort(-ranked, axis=1)[:, :k]
    np.testing.assert_allclose(np.where(np.isnan(values), -np.inf, values), want, atol=1e-6)
    for j in range(reference.shape[0]):
        assert len(set(indices[j].tolist())) == k
        np.testing.assert_allclose(reference[j, indices[j]], values[j], atol=1e-6)


@pytest.mark.parametrize("chunk", [None, 1, 7, 64])
def test_influence_top_k_matches_loop_for_any_chunk(chunk):
    included, _ = random_subsets(16, 45, seed=4)
    correct_test = np.random.default_rng(5).random((16, 6)) < 0.5
    included[:, 10] = True  # NaN influence: ranks last
    reference = loop_influence(included, correct_test)
    for k in (1, 5, 45):  # k = N reaches the NaN example
        top = influence(included, correct_test, k, chunk=chunk)
        check_top_k(top.values, top.indices, reference, k)
    assert np.isnan(top.values[:, -1]).all() and (np.asarray(top.indices)[:, -1] == 10).all()
    # the same numbers and the same tie-breaking (lower index first) whatever the chunk
    whole = influence(included, correct_test, 5, chunk=45)
    part = influence(included, correct_test, 5, chunk=chunk)
    np.testing.assert_array_equal(part.values, whole.values)
    np.testing.assert_array_equal(part.indices, whole.indices)


def test_influence_ties_go_to_lower_index():
    m, n = 8, 10
    included = balanced_masks(m, n, 0.5, seed=1)
    included[:, 4] = included[:, 2]  # examples 2 and 4 have the same masks: tied
    correct_test = np.stack([included[:, 2], included[:, 7]], 1)
    top = influence(included, correct_test, 2, chunk=3)
    np.testing.assert_array_equal(top.indices[0], [2, 4])  # both influence 1
    np.testing.assert_array_equal(top.values[0], [1.0, 1.0])
    assert int(top.indices[1, 0]) == 7 and float(top.values[1, 0]) == 1.0


def test_influence_rejects_bad_k():
    with pytest.raises(ValueError, match="k must be"):
        influence(np.ones((2, 3), bool), np.ones((2, 1), bool), 4)


# --- training dynamics ---------------------------------------------------------------------

def test_forgetting_and_learning_epochs_by_hand():
    sequences = {  # presentations -> (events, never, first learned, learned for good)
        (1, 0, 1, 1, 0, 0, 1): (2, False, 1, 7),
        (0, 0, 1, 1, 1, 1, 1): (0, False, 3, 3),
        (0, 0, 0, 0, 0, 0, 0): (0, True, -1, -1),
        (1, 1, 1, 1, 1, 1, 1): (0, False, 1, 1),
        (0, 1, 0, 1, 0, 1, 0): (3, False, 2, -1),
    }
    correct = np.array(list(sequences), bool).T[:, None, :]  # [E=7, M=1, N=5]
    want = np.array(list(sequences.values()), dtype=object)
    f = forgetting_events(correct)
    np.testing.assert_array_equal(f.events[0], want[:, 0].astype(int))
    np.testing.assert_array_equal(f.never_learned[0], want[:, 1].astype(bool))
    np.testing.assert_array_equal(first_learned_epoch(correct)[0], want[:, 2].astype(int))
    np.testing.assert_array_equal(learned_for_good_epoch(correct)[0], want[:, 3].astype(int))


def test_training_dynamics_match_loops():
    rng = np.random.default_rng(6)
    e, m, n = 9, 3, 25
    correct = rng.random((e, m, n)) < rng.random((1, m, n))
    correct[:, 0, 0] = False
    f = forgetting_events(correct)
    first, good = first_learned_epoch(correct), learned_for_good_epoch(correct)
    for i in range(m):
        for j in range(n):
            seq = [bool(x) for x in correct[:, i, j]]
            forgotten = 0
            for before, after in zip(seq, seq[1:]):
                if before and not after:
                    forgotten += 1
            assert int(f.events[i, j]) == forgotten
            assert bool(f.never_learned[i, j]) == (True not in seq)
            assert int(first[i, j]) == (seq.index(True) + 1 if True in seq else -1)
            stays = -1
            for start in range(e, 0, -1):  # latest start first; keep the earliest that holds
                if all(seq[start - 1:]):
                    stays = start
            assert int(good[i, j]) == stays
    assert f.events.dtype == jnp.int32 and good.dtype == jnp.int32


def test_margin_and_aum_match_loops():
    rng = np.random.default_rng(7)
    e, m, n, c = 4, 2, 12, 5
    logits = rng.normal(size=(e, m, n, c)).astype(np.float32) * 3
    labels = rng.integers(0, c, n)
    got = np.asarray(margin(logits, labels))
    assert got.shape == (e, m, n)
    want = np.empty((e, m, n))
    for a in range(e):
        for b in range(m):
            for j in range(n):
                row = logits[a, b, j]
                others = [row[q] for q in range(c) if q != labels[j]]
                want[a, b, j] = row[labels[j]] - max(others)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    # asappresearch/aum's runner leaves the first epoch out; its cifar100 example does not
    np.testing.assert_allclose(aum(got), want[1:].sum(0) / (e - 1), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(aum(got, include_first_epoch=True), want.sum(0) / e,
                               rtol=1e-5, atol=1e-6)
    # on logits, not softmax: a constant shift of the logits leaves the margin unchanged,
    # and it is negative exactly when another class wins
    np.testing.assert_allclose(margin(logits + 100.0, labels), got, atol=1e-4)
    assert (got > 0).tolist() == (logits.argmax(-1) == labels).tolist()
    np.testing.assert_allclose(margin(jnp.array([[2.0, 5.0, -1.0]]), jnp.array([1])), [3.0])


def test_cartography_matches_loop_with_population_std():
    rng = np.random.default_rng(8)
    e, m, n = 5, 2, 10
    prob = rng.random((e, m, n)).astype(np.float32)
    correct = rng.random((e, m, n)) < 0.5
    got = cartography(prob, correct)
    for i in range(m):
        for j in range(n):
            seq = [float(prob[a, i, j]) for a in range(e)]
            mean = sum(seq) / e
            std = (sum((s - mean) ** 2 for s in seq) / e) ** 0.5  # divide by E, not E - 1
            np.testing.assert_allclose(got["confidence"][i, j], mean, rtol=1e-5)
            np.testing.assert_allclose(got["variability"][i, j], std, rtol=1e-4, atol=1e-6)
            assert float(got["correctness"][i, j]) == pytest.approx(
                sum(bool(x) for x in correct[:, i, j]) / e)
    flat = cartography(np.array([0.2, 0.8])[:, None, None], np.array([0, 1])[:, None, None])
    np.testing.assert_allclose(flat["variability"], [[0.3]], rtol=1e-6)  # ddof=1: 0.42
    # confident examples (p ~ 0.999, 20 epochs): allenai/cartography's float64 np.std of
    # the float32 probabilities, where E[p^2] - E[p]^2 in float32 is off by up to 7e-4
    sure = (0.999 + 1e-4 * rng.standard_normal((20, 1, 50))).astype(np.float32)
    np.testing.assert_allclose(cartography(sure, sure > 0)["variability"],
                               np.std(sure.astype(np.float64), axis=0), rtol=0, atol=1e-5)


def test_el2n_matches_loop_and_bounds():
    rng = np.random.default_rng(9)
    m, n, c = 3, 8, 4
    probs = np.asarray(jax.nn.softmax(rng.normal(size=(m, n, c)) * 2, axis=-1), np.float32)
    labels = rng.integers(0, c, n)
    got = np.asarray(el2n(probs, labels))
    for i in range(m):
        for j in range(n):
            err = [probs[i, j, q] - (1.0 if q == labels[j] else 0.0) for q in range(c)]
            assert got[i, j] == pytest.approx(sum(x * x for x in err) ** 0.5, rel=1e-5)
    onehot = np.eye(c, dtype=np.float32)[[0, 1]][None]  # right with certainty, then wrong
    np.testing.assert_allclose(el2n(onehot, np.array([0, 0])), [[0.0, np.sqrt(2)]], rtol=1e-6)


# --- masks and documentation ---------------------------------------------------------------

def test_balanced_masks_counts_and_lira_draw():
    keep = balanced_masks(10, 500, 0.5, seed=0)
    assert keep.shape == (10, 500) and keep.dtype == bool
    for n in range(500):
        assert sum(bool(keep[m, n]) for m in range(10)) == 5
    # bit for bit the LiRA construction (tensorflow/privacy mi_lira_2021/train.py)
    draws = np.random.RandomState(0).uniform(0, 1, size=(10, 500))
    np.testing.assert_array_equal(keep, draws.argsort(0) < int(0.5 * 10))
    # deterministic from the seed, different across seeds, members about evenly loaded
    np.testing.assert_array_equal(balanced_masks(10, 500, 0.5, seed=3),
                                  balanced_masks(10, 500, 0.5, seed=3))
    assert (balanced_masks(10, 500, 0.5, seed=3) != keep).any()
    assert np.all(np.abs(keep.mean(1) - 0.5) < 0.1)
    # rounds, where LiRA's int() floors
    assert balanced_masks(100, 7, 0.29, seed=1).sum(0).tolist() == [29] * 7
    assert balanced_masks(4, 7, 0.3, seed=1).sum(0).tolist() == [1] * 7
    with pytest.raises(ValueError):
        balanced_masks(4, 7, 1.5)


def test_documented_examples_run():
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    tests = doctest.DocTestFinder().find(scores, "memjax.metrics.scores")
    assert sum(len(t.examples) for t in tests) > 0
    for t in tests:
        runner.run(t)
    assert runner.failures == 0
