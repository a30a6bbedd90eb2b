"""`memjax reproduce` on a smoke run, and the studies' evidence lines computed from data."""
import json

import numpy as np
import pytest

from memjax.cli import main
from memjax.experiments import capacity, consistency, convergence, filters, noise_curves
from memjax.experiments import regularization
from memjax.reproduce import CLAIMS, reproduce, verdict


@pytest.mark.slow
def test_reproduce_smoke_writes_report_and_skips_finished(tmp_path):
    logs = []
    report, failed = reproduce("smoke", tmp_path, only=["noise-curves", "filters"],
                               log=logs.append)
    assert failed == 0
    # the plan came first, on this machine, and is kept beside the runs
    planned = json.loads((tmp_path / "plan.json").read_text())
    assert set(planned["studies"]) == {"noise-curves", "filters"}
    assert any(line.startswith("plan on this") for line in logs)
    text = report.read_text()
    assert "![noise-curves: fig7_noise_curves](noise-curves/fig7_noise_curves.png)" in text
    assert "![filters: fig2_filters](filters/fig2_filters.png)" in text
    for claim in CLAIMS.values():
        assert claim in text
    # the evidence is the run's own numbers
    summary = json.loads((tmp_path / "noise-curves" / "summary.json").read_text())
    v = summary["mlp_randY_0.5"]
    assert f"peaked at epoch {v['peak_epoch']} ({v['peak_validation_accuracy']:.3f})" in text
    assert "3. **" in text and "not tested by this run" in text  # no regularization study run
    stamp = (tmp_path / "filters" / "manifest.json").read_text()
    logs.clear()
    report, _ = reproduce("smoke", tmp_path, only=["filters"], log=logs.append)
    assert any("finished earlier with the same settings" in line for line in logs)
    assert not any(line.startswith("plan on") for line in logs)  # nothing runs: no plan
    assert (tmp_path / "filters" / "manifest.json").read_text() == stamp
    # the report still covers every study in the folder, not just the one asked for
    assert f"peaked at epoch {v['peak_epoch']}" in report.read_text()


def test_reproduce_refuses_runs_with_other_settings(tmp_path, monkeypatch, capsys):
    import dataclasses

    import pytest

    from memjax.errors import MemjaxError
    from memjax.reproduce import write_report

    reproduce("smoke", tmp_path, only=["filters"], log=lambda _: None)
    smoke = filters.PRESETS["smoke"]
    other = dataclasses.replace(smoke, shown=smoke.shown + 1)
    monkeypatch.setitem(filters.PRESETS, "smoke", other)
    with pytest.raises(MemjaxError, match=r"other settings than the smoke preset: filters "
                                          r"\(shown: 4 -> 5\); pass --overwrite"):
        reproduce("smoke", tmp_path, only=["filters"], log=lambda _: None)
    text = write_report(tmp_path, "smoke").read_text()
    assert "finished with other settings than the smoke preset (shown: 4 -> 5)" in text
    assert "filters, supports" not in text and "filters, does not support" not in text
    reproduce("smoke", tmp_path, only=["filters"], overwrite=True, log=lambda _: None)
    manifest = json.loads((tmp_path / "filters" / "manifest.json").read_text())
    assert manifest["status"] == "finished" and manifest["config"]["shown"] == 5


def test_reproduce_cli_rejects_unknown_study_empty_list_and_unusable_out(tmp_path, capsys):
    assert main(["reproduce", "--preset", "smoke", "--out", str(tmp_path), "--only", "nope"]) == 2
    assert "unknown experiment" in capsys.readouterr().err
    assert main(["reproduce", "--preset", "smoke", "--out", str(tmp_path), "--only", ","]) == 2
    assert "--only names nothing" in capsys.readouterr().err
    afile = tmp_path / "afile"
    afile.write_text("")
    assert main(["reproduce", "--preset", "smoke", "--out", str(afile), "--only", "csr"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"memjax: error: cannot write to {afile}")


def test_verdicts():
    assert verdict([]) == "not tested by this run"
    assert verdict([{"supports": True}, {"supports": True}]).startswith("supported")
    assert verdict([{"supports": True}, {"supports": False}]).startswith("mixed")
    assert verdict([{"supports": False}]).startswith("not supported")


def _curve(kind, level, val, train):
    va, tr = np.asarray(val), np.asarray(train)
    return {"part": "mlp", "kind": kind, "level": level, "validation_accuracy": val,
            "train_accuracy": train, "peak_epoch": int(np.argmax(va)) + 1,
            "peak_validation_accuracy": float(va.max()),
            "final_validation_accuracy": float(va[-1]), "final_train_accuracy": float(tr[-1]),
            "epochs": len(va), "high_train_accuracy": 0.9,
            "epoch_train_accuracy_high": next((i + 1 for i, a in enumerate(tr) if a >= 0.9), None)}


def test_noise_curve_evidence_follows_the_data():
    peaked = {"a": _curve("randY", 0.8, [0.5, 0.8, 0.6, 0.4], [0.2, 0.4, 0.7, 0.95])}
    (line,) = noise_curves.evidence(peaked)
    assert line["claim"] == 2 and line["supports"]
    assert "peaked at epoch 2 (0.800)" in line["text"] and "at epoch 4" in line["text"]
    late = {"a": _curve("randY", 0.8, [0.5, 0.6, 0.7, 0.8], [0.95, 0.96, 0.97, 0.99])}
    (line,) = noise_curves.evidence(late)
    assert not line["supports"] and "peaked at epoch 4" in line["text"]
    # training accuracy measured every 2 epochs (NaN between): high at epoch 4, last seen
    # low at epoch 2, so a peak at epoch 3 may have come after it reached 90 %
    nan = float("nan")
    gap = {"a": _curve("randY", 0.8, [0.5, 0.6, 0.8, 0.4], [nan, 0.4, nan, 0.95])}
    (line,) = noise_curves.evidence(gap)
    assert not line["supports"] and "not clearly before" in line["text"]
    assert "still below it at epoch 2" in line["text"]
    gap["a"] = _curve("randY", 0.8, [0.5, 0.8, 0.6, 0.4], [nan, 0.4, nan, 0.95])
    (line,) = noise_curves.evidence(gap)
    assert line["supports"] and "before training accuracy reached 90% at epoch 4" in line["text"]


def test_capacity_and_convergence_evidence_follow_the_data():
    s = {"real_0": {"kind": "real", "level": 0.0, "max": 0.95, "width_to_reach_best": 64,
                    "tolerance": 0.01, "widths": [16, 64, 512],
                    "best_validation_accuracy": [0.93, 0.95, 0.95]},
         "randX_0.8": {"kind": "randX", "level": 0.8, "max": 0.6, "width_to_reach_best": 512,
                       "tolerance": 0.01, "widths": [16, 64, 512],
                       "best_validation_accuracy": [0.4, 0.5, 0.6]}}
    (line,) = capacity.evidence(s)
    assert line["supports"] and "+0.020 on real data" in line["text"]
    assert "+0.200 with 80% randX" in line["text"] and "from width 512" in line["text"]
    s["randX_0.8"]["best_validation_accuracy"] = [0.59, 0.6, 0.6]
    assert not capacity.evidence(s)[0]["supports"]
    c = {"cap": 50, "threshold": 1.0,
         "width_0": {"part": "width", "level": 0.0, "x": [16, 256], "median_epochs": [10, 5],
                     "censored": [0, 0]},
         "width_0.8": {"part": "width", "level": 0.8, "x": [16, 256], "median_epochs": [50, 30],
                       "censored": [1, 0]},
         "size_0": {"part": "size", "level": 0.0, "x": [100, 1000], "median_epochs": [4, 6],
                    "censored": [0, 0]},
         "size_0.8": {"part": "size", "level": 0.8, "x": [100, 1000], "median_epochs": [10, 50],
                      "censored": [0, 1]}}
    lines = convergence.evidence(c)
    assert [l["supports"] for l in lines] == [True, True]
    assert "> 50 (censored)" in lines[1]["text"] and "x1.5" in lines[1]["text"]


def test_regularization_points_keep_adversarial_pairs_apart():
    """Two dropout + adversarial pairs with the same dropout and different weights w are
    two points, each the mean over its own members."""
    rows = {"regularizer": np.array(["none", "dropout+adversarial", "dropout+adversarial"] * 2),
            "strength": np.array([0.0, 0.3, 0.3] * 2), "adversarial_weight": np.array(
                [0.0, 0.2, 0.7] * 2), "data": np.array(["real"] * 3 + ["randY"] * 3)}
    curves = {"train_accuracy": np.array([[0.9, 0.5, 0.1, 0.8, 0.4, 0.2]]),
              "validation_accuracy": np.array([[0.9, 0.9, 0.9, 0.0, 0.0, 0.0]]),
              "train_loss": np.ones((1, 6))}
    points = regularization.summarize(rows, curves, 0.02)["points"]
    assert sorted(points) == ["dropout+adversarial=0.3,w=0.2", "dropout+adversarial=0.3,w=0.7",
                              "none=0"]
    assert points["dropout+adversarial=0.3,w=0.7"]["final_randY_train_accuracy"] == 0.2
    (line,) = regularization.evidence(regularization.summarize(rows, curves, 0.02))
    assert "dropout+adversarial 0.3 w 0.7 lowers it most, to 0.200" in line["text"]


def test_regularization_filters_consistency_evidence():
    p = lambda r, s, tr, va: {"regularizer": r, "strength": s, "final_randY_train_accuracy": tr,
                              "best_real_validation_accuracy": va}
    s = {"keep_validation": 0.02, "points": {
        "none=0": p("none", 0.0, 0.9, 0.95), "dropout=0.5": p("dropout", 0.5, 0.3, 0.95),
        "weight_decay=1": p("weight_decay", 1.0, 0.1, 0.5),  # hurts validation: excluded
        "input_noise=1": p("input_noise", 1.0, 0.6, 0.94)}}
    (line,) = regularization.evidence(s)
    assert line["supports"] and "dropout 0.5 lowers it most, to 0.300" in line["text"]
    s["points"]["input_noise=1"]["final_randY_train_accuracy"] = 0.2
    assert not regularization.evidence(s)[0]["supports"]
    f = {"real": {"adjacent_correlation_of_learned_change": 0.6, "final_train_accuracy": 0.5},
         "randY": {"adjacent_correlation_of_learned_change": 0.1, "final_train_accuracy": 0.2}}
    assert filters.evidence(f)[0]["supports"]
    row = lambda std, ref: {"std_misclassification_rate": std, "std_binomial_reference": ref,
                            "mean_error": 0.3, "fraction_misclassified_by_10pct_or_fewer": 0.6,
                            "fraction_misclassified_by_90pct": 0.1}
    lines = consistency.evidence({"real": row(0.33, 0.04), "randY": row(0.04, 0.03)})
    assert [l["claim"] for l in lines] == [1, 2] and all(l["supports"] for l in lines)
    assert "x8.2" in lines[0]["text"] and "would give 0.0%" in lines[1]["text"]
    few_easy = row(0.33, 0.04)
    few_easy["fraction_misclassified_by_10pct_or_fewer"] = 0.0
    assert not consistency.evidence({"real": few_easy})[1]["supports"]


def test_filter_smoothness_measure():
    rng = np.random.default_rng(0)
    noise = rng.standard_normal((5, 5, 3, 50))
    smooth = np.cumsum(np.cumsum(noise, 0), 1)
    assert abs(filters.adjacent_correlation(noise).mean()) < 0.1
    assert filters.adjacent_correlation(smooth).mean() > 0.5
