"""The per-example score studies (cscore, memorization, el2n) end to end at smoke size, their
exports checked against plain-NumPy recomputations from the saved masks and correctness,
and the statistics that judge them against brute force."""
import csv
import dataclasses
import itertools
import json

import numpy as np
import pytest

from memjax.data import load_dataset
from memjax.errors import MemjaxError
from memjax.experiments import cscore, memorization
from memjax.experiments.example_scores import detection_auc, spearman
from memjax.results import RunDir


def _run(module, config, path):
    run_dir = RunDir(path)
    run_dir.start(module.__name__, {})
    module.run(config, run_dir)
    run_dir.finish()
    return (dict(np.load(path / "results.npz")), json.loads((path / "summary.json").read_text()))


def _csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def _heldout(included, correct):
    """Per example: mean correctness over the members that did not train on it (a loop)."""
    out = np.full(included.shape[1], np.nan)
    for n in range(included.shape[1]):
        held = ~included[:, n]
        if held.any():
            out[n] = correct[held, n].mean()
    return out


def _check_export(path, name, dataset_train, scores_npz):
    rows = _csv(path / f"{name}.csv")
    assert len(rows) == len(dataset_train)
    np.testing.assert_array_equal([int(r["index"]) for r in rows], dataset_train.index)
    np.testing.assert_array_equal(scores_npz["index"], dataset_train.index)
    assert rows[7]["image_sha1"] == dataset_train.image_sha1()[7]
    assert "official MNIST" in str(scores_npz["order"])
    return rows


@pytest.mark.slow
def test_cscore_study(tmp_path):
    config = dataclasses.replace(cscore.PRESETS["smoke"], validation_curve=True)
    arrays, summary = _run(cscore, config, tmp_path)
    included, correct, ratio_ids = arrays["included"], arrays["correct"], arrays["ratio_ids"]
    n = config.data.train_size
    assert included.shape == correct.shape == (8, n)
    for r, ratio in enumerate(config.ratios):  # balanced: every example in round(s * M)
        assert (included[ratio_ids == r].sum(0) == round(ratio * config.seeds)).all()
    scores = dict(np.load(tmp_path / "cscores.npz"))
    per_ratio = [_heldout(included[ratio_ids == r], correct[ratio_ids == r])
                 for r in range(len(config.ratios))]
    np.testing.assert_allclose(scores["cscore"], np.nanmean(per_ratio, 0), rtol=1e-6)
    np.testing.assert_allclose(scores["heldout_0.25"], per_ratio[0], rtol=1e-6)
    train = load_dataset(config.data).train
    rows = _check_export(tmp_path, "cscores", train, scores)
    np.testing.assert_allclose([float(r["cscore"]) for r in rows], scores["cscore"], rtol=1e-6)
    np.testing.assert_array_equal([int(r["label"]) for r in rows], train.y)
    assert 0.0 <= summary["cscore"]["mean"] <= 1.0
    assert scores["one_epoch_error"].shape == (n,)
    assert -1.0 <= summary["spearman_cscore_one_epoch_accuracy"] <= 1.0
    assert (tmp_path / "fig_cscore_examples.png").exists()
    assert summary["order"]["train"].startswith("index in the official MNIST")
    assert len(cscore.evidence(summary)) == 2
    for r in summary["ratios"].values():  # the curve's last epoch is the final evaluation
        curves = r["curves"]
        assert len(curves["train_accuracy"]) == len(curves["validation_accuracy"]) == 2
        assert curves["validation_accuracy"][-1] == pytest.approx(r["validation_accuracy"])


def test_cscore_config_errors():
    smoke = cscore.PRESETS["smoke"]
    with pytest.raises(MemjaxError, match="no member would hold it out"):
        cscore.check(dataclasses.replace(smoke, ratios=(0.95,)))
    with pytest.raises(MemjaxError, match="set seeds"):
        cscore.check(dataclasses.replace(smoke, train=dataclasses.replace(smoke.train,
                                                                          members=4)))


@pytest.mark.slow
def test_memorization_study(tmp_path):
    config = dataclasses.replace(memorization.PRESETS["smoke"], validation_curve=True)
    arrays, summary = _run(memorization, config, tmp_path)
    included, correct = arrays["included"], arrays["correct"]
    m = config.train.members
    assert (included.sum(0) == round(0.7 * m)).all()
    scores = dict(np.load(tmp_path / "memorization.npz"))
    in_acc = np.array([correct[included[:, j], j].mean() for j in range(included.shape[1])])
    np.testing.assert_allclose(scores["memorization"], in_acc - _heldout(included, correct),
                               rtol=1e-5, atol=1e-6)
    # the injected noise is the one saved, and it is what the labels show
    train = load_dataset(config.data).train
    noisy = arrays["noisy"]
    assert noisy.sum() == round(0.1 * len(train))
    np.testing.assert_array_equal(scores["noisy"], noisy)
    rows = _check_export(tmp_path, "memorization", train, scores)
    labels = np.array([int(r["label"]) for r in rows])
    assert (labels[~noisy] == train.y[~noisy]).all()
    for name in ("aum", "forgetting_events", "confidence", "correctness"):
        assert np.isfinite(scores[name]).all(), name
    assert set(summary["label_noise_auc"]) >= {"memorization", "aum (low)"}
    # influence: the top k against the full matrix from the saved correctness
    infl = dict(np.load(tmp_path / "influence.npz"))
    val = arrays["correct_validation"].astype(float)
    full = np.stack([val[included[:, i]].mean(0) - val[~included[:, i]].mean(0)
                     for i in range(included.shape[1])], 1)  # [T, N]
    k = config.influence_top
    np.testing.assert_allclose(infl["influence"], -np.sort(-full, 1)[:, :k], atol=1e-6)
    np.testing.assert_array_equal(infl["train_index"], train.index[infl["train_row"]])
    assert len(_csv(tmp_path / "influence.csv")) == val.shape[1] * k
    assert (tmp_path / "fig_label_noise.png").exists()
    # per-epoch validation accuracy: its last epoch is the final evaluation's
    curves = summary["curves"]
    assert len(curves["train_accuracy"]) == len(curves["validation_accuracy"]) == 2
    assert curves["validation_accuracy"][-1] == pytest.approx(val.mean())
    logged = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [line["validation_accuracy"] for line in logged] == pytest.approx(
        curves["validation_accuracy"])


def test_memorization_config_errors():
    smoke = memorization.PRESETS["smoke"]
    with pytest.raises(MemjaxError, match="train on it and members that do not"):
        memorization.check(dataclasses.replace(smoke, fraction=1.0))
    with pytest.raises(MemjaxError, match="label_noise must be in"):
        memorization.check(dataclasses.replace(smoke, label_noise=1.5))


def test_detection_auc_and_spearman_against_brute_force():
    rng = np.random.default_rng(0)
    score = rng.integers(0, 5, 60).astype(float)  # many ties
    positive = rng.random(60) < 0.3
    pairs = [(1.0 if a > b else 0.5 if a == b else 0.0)
             for a, b in itertools.product(score[positive], score[~positive])]
    assert detection_auc(score, positive) == pytest.approx(np.mean(pairs))
    assert detection_auc(np.append(score, np.nan), np.append(positive, True)) == \
        pytest.approx(np.mean(pairs))
    assert np.isnan(detection_auc(score, np.zeros(60, bool)))
    a, b = rng.random(40), rng.random(40)
    rank = lambda v: np.argsort(np.argsort(v)) + 1.0  # no ties
    assert spearman(a, b) == pytest.approx(np.corrcoef(rank(a), rank(b))[0, 1])
    assert spearman(a, a ** 3) == pytest.approx(1.0)


def test_write_csv_round_trip(tmp_path):
    run_dir = RunDir(tmp_path)
    run_dir.write_csv("t.csv", {"i": np.arange(3), "v": np.array([0.5, np.nan, 1e-9]),
                                "b": np.array([True, False, True]), "s": np.array(["a", "b", "c"])})
    rows = _csv(tmp_path / "t.csv")
    assert rows[0] == {"i": "0", "v": "0.5", "b": "1", "s": "a"}
    assert rows[1]["v"] == "nan" and rows[2]["v"] == "1e-09"
    with pytest.raises(ValueError, match="unequal"):
        run_dir.write_csv("u.csv", {"a": np.arange(2), "b": np.arange(3)})


@pytest.mark.slow
def test_el2n_study_scores_match_each_member_scored_alone(tmp_path):
    """el2n's export: the member means of EL2N and GraNd, each member's scores equal to a
    plain loop over its own examples (softmax error norm; one jax.grad per example)."""
    import jax
    import optax

    from memjax.experiments import el2n
    from memjax.runner import Runner

    config = el2n.PRESETS["smoke"]
    arrays, summary = _run(el2n, config, tmp_path)
    dataset = load_dataset(config.data)
    scores = dict(np.load(tmp_path / "el2n.npz"))
    _check_export(tmp_path, "el2n", dataset.train, scores)
    np.testing.assert_allclose(scores["el2n"], arrays["el2n_members"].mean(0), rtol=1e-6)
    np.testing.assert_allclose(scores["grand"], arrays["grand_members"].mean(0), rtol=1e-6)
    assert -1 <= summary["spearman_el2n_grand"] <= 1 and summary["epoch"] == 2
    assert "official MNIST" in summary["order"]["train"]  # (what the export's index means)
    logged = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [line["epoch"] for line in logged] == [1, 2] and 0 <= logged[-1]["train_accuracy"] <= 1
    # the same members again (their keys derive from their ids), scored one by one
    runner = Runner.of(el2n.phases(config)[0], dataset)
    runner.run(config.train.epochs, phase="early")
    member = jax.tree.map(lambda a: a[1], runner.member_state().variables)
    x, y = dataset.train.x[:5] / 255.0, dataset.train.y[:5]
    p = np.asarray(jax.nn.softmax(runner.apply(member, x)))
    np.testing.assert_allclose(arrays["el2n_members"][1, :5],
                               np.linalg.norm(p - np.eye(10)[y], axis=1), rtol=1e-5)

    def loss(params, xi, yi):
        logits = runner.apply({**member, "params": params}, xi[None])
        return optax.softmax_cross_entropy_with_integer_labels(logits, yi[None])[0]

    norms = [np.sqrt(sum(float(np.sum(np.square(g))) for g in jax.tree_util.tree_leaves(
        jax.grad(loss)(member["params"], x[i], y[i])))) for i in range(5)]
    np.testing.assert_allclose(arrays["grand_members"][1, :5], norms, rtol=1e-4)
