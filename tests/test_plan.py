"""`memjax plan`: XLA's cost analysis counted with loop trip counts (against hand counts),
the rates taken from bench records, and the command's JSON."""
import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from memjax import cost, plan, records
from memjax.cli import main
from memjax.config import DataConfig, ModelConfig, TrainConfig
from memjax.data import DataShape, data_shape
from memjax.errors import MemjaxError
from memjax.members import Members


def test_program_cost_counts_every_scan_iteration():
    def f(w, xs):  # 10 steps of a [16, 64] x [64, 32] matmul
        return jax.lax.scan(lambda c, x: (c + jnp.tanh(x @ w).sum(), None), 0.0, xs)[0]

    c = cost.program_cost(f, jax.ShapeDtypeStruct((64, 32), jnp.float32),
                          jax.ShapeDtypeStruct((10, 16, 64), jnp.float32))
    matmuls = 10 * 2 * 16 * 64 * 32
    assert matmuls <= c.flops < 1.02 * matmuls  # (+ the adds of the tanh sums)
    # nested: 3 x the scan above
    g = lambda w, xss: jax.lax.scan(lambda c, xs: (c + f(w, xs), None), 0.0, xss)[0]
    nested = cost.program_cost(g, jax.ShapeDtypeStruct((64, 32), jnp.float32),
                               jax.ShapeDtypeStruct((3, 10, 16, 64), jnp.float32))
    assert nested.flops == pytest.approx(3 * c.flops, rel=0.01)


def test_program_cost_counts_while_loops_as_told():
    def f(w, x):
        return jax.lax.while_loop(lambda c: c[0] < c[1].sum(),
                                  lambda c: (c[0] + 1, c[1] @ w), (0, x))[1]

    args = jax.ShapeDtypeStruct((32, 32), jnp.float32), jax.ShapeDtypeStruct((8, 32), jnp.float32)
    once, five = (cost.program_cost(f, *args, while_trips=t).flops for t in (1, 5))
    assert five - once == pytest.approx(4 * 2 * 8 * 32 * 32, rel=0.02)


def test_program_cost_counts_a_conditional_as_its_dearest_branch_with_its_loops():
    def f(p, w, x):  # 10 scan steps of a [8, 32] x [32, 32] matmul, or one
        return jax.lax.cond(p, lambda x: jax.lax.scan(lambda c, _: (c @ w, None), x, None,
                                                      length=10)[0],
                            lambda x: x @ w, x)

    args = (jax.ShapeDtypeStruct((), jnp.bool_), jax.ShapeDtypeStruct((32, 32), jnp.float32),
            jax.ShapeDtypeStruct((8, 32), jnp.float32))
    assert cost.program_cost(f, *args).flops == pytest.approx(10 * 2 * 8 * 32 * 32, rel=0.02)


def test_training_epoch_matches_the_hand_count_and_not_the_grouping():
    """One epoch of 6 MLPs 784-64-32-10: 6 x the forward multiply-adds per example, less
    the first layer's input gradient (2 x its MACs), within the elementwise work; the same
    whether the members run in one vmap or in groups of 2 (lax.map)."""
    data = data_shape(DataConfig(train_size=512))
    model = ModelConfig(hidden=(64, 32))
    macs = 784 * 64 + 64 * 32 + 32 * 10
    hand = (6 * macs - 2 * 784 * 64) * 6 * 512
    one = cost.training("t", model, TrainConfig(members=6, batch_size=64), data, epochs=1)
    grouped = cost.training("t", model, TrainConfig(members=6, batch_size=64, member_chunk=2),
                            data, epochs=1)
    assert hand <= one.cost.flops < 1.1 * hand
    assert grouped.cost.flops == pytest.approx(one.cost.flops, rel=0.01)
    # a 25 % subset per member: an epoch runs a quarter of the steps
    mask = np.zeros((6, 512), bool)
    mask[:, :128] = True
    part = cost.training("t", model, TrainConfig(members=6, batch_size=64), data,
                         Members(np.arange(6), example_mask=mask), epochs=1)
    assert part.cost.flops == pytest.approx(one.cost.flops / 4, rel=0.05)
    assert part.per_example == 6 * 128


def test_only_the_adversarial_members_count_the_search():
    """Adversarial training as three steps of one program: every member's clean epoch (in
    the training's precision), and, for the members that search (on one device: the
    Runner's static `searching`), whatever their grouping, the adversarial pass and the
    in-step search's iterations (both float32, as memjax.train runs them): against hand
    counts (a pass: forward and weight gradient; an iteration: forward and input gradient)
    and linear in the steps. (A layer of 256 units: in smaller ones the search's Gaussian
    draws count as much.)"""
    model = ModelConfig(hidden=(256,))

    def steps(weights, chunk, n=128, dtype="float32"):
        train = TrainConfig(members=len(weights), batch_size=64, member_chunk=chunk,
                            compute_dtype=dtype)
        members = Members(np.arange(len(weights)), adversarial_weight=np.asarray(weights, float))
        return cost.adversarial_training("t", model, train, data_shape(DataConfig(train_size=n)),
                                         members, epochs=1)

    plain = cost.training("t", model, TrainConfig(members=4, batch_size=64, member_chunk=1),
                          data_shape(DataConfig(train_size=128)), epochs=1).cost.flops
    train, adversarial, search = steps([0, 0.5, 0, 0], 1)
    trips = cost.in_step_iterations("exhaustive", 10)
    assert trips == 10 and search.kind == "search" and search.programs == 0
    assert adversarial.kind == "train" and adversarial.programs == 0 and train.programs == 1
    assert train.cost.flops == pytest.approx(plain, rel=1e-3)  # the clean epoch
    one_pass = 128 * 2 * (784 * 256 + 256 * 10)  # one member's forward pass
    assert 0.9 * 2 * one_pass <= adversarial.cost.flops <= 1.1 * 2 * one_pass
    hand = (trips + 1) * 2 * one_pass  # one member's search, first probe too
    assert hand <= search.cost.flops < 1.2 * hand
    grouped = steps([0, 0.5, 0, 0], 4)
    for a, b in zip(grouped, (train, adversarial, search)):
        assert a.cost.flops == pytest.approx(b.cost.flops, rel=1e-3), a.name
    _, every_adversarial, every_search = steps([0.5] * 4, 1)  # (groups of one, each searching)
    assert every_adversarial.cost.flops == pytest.approx(4 * adversarial.cost.flops, rel=1e-3)
    assert every_search.cost.flops == pytest.approx(4 * search.cost.flops, rel=1e-3)
    assert steps([0.5] * 4, 1, n=256)[2].cost.flops == pytest.approx(
        2 * every_search.cost.flops, rel=0.01)
    # under bf16 compute the clean epoch is bf16, the adversarial pass and search float32
    assert [s.precision for s in steps([0, 0.5], 1, dtype="bfloat16")] == [
        "bfloat16", "float32", "float32"]
    with pytest.raises(ValueError, match="adversarial_training"):
        cost.training("t", model, TrainConfig(members=4, batch_size=64),
                      data_shape(DataConfig(train_size=128)),
                      Members(np.arange(4), adversarial_weight=np.full(4, 0.5)), epochs=1)


def test_data_shape_is_what_load_dataset_gives():
    from memjax.data import load_dataset

    config = DataConfig(train_size=300, validation_size=40, downscale=2)
    d = load_dataset(config)
    assert data_shape(config) == DataShape(len(d.train), len(d.validation), d.image_shape,
                                           d.num_classes)
    assert data_shape(DataConfig(name="mnist")).train == 50_000
    assert data_shape(DataConfig(name="cifar10", test_as_validation=True)) == DataShape(
        50_000, 10_000, (32, 32, 3), 10)


def _record(kind, rows, roofline):
    return {"file": f"{kind}.json", "device": {"kind": kind}, "roofline": roofline,
            "rows": rows}


def test_a_device_without_records_borrows_the_nearest_scaled_by_its_bound_per_kind():
    h100 = _record("NVIDIA H100 80GB HBM3", [
        # bandwidth-bound on its measured roofline: 1e5 B / 2000 GB/s > 4e6 FLOP / 400 TFLOP/s
        {"case": "a_mlp512", "impl": "jax-ensemble", "tflops": 40.0,
         "flops_per_model_example": 4e6, "bytes_per_model_example": 1e5},
        {"case": "c_cnn", "impl": "jax-lax.map", "tflops": 75.0, "compile_s": 5.0,
         "flops_per_model_example": 1.27e9, "bytes_per_model_example": 1e6}],
        {"peak_tflops": 370.0, "bandwidth_gbs": 2000.0})
    step = lambda model: cost.Step("s", "train", model, cost.Cost(4e6 * 100, 0), 10,
                                   per_example=100)
    own = plan.Rates("h100", [h100])
    assert own.rate(step("mlp")).flops_per_s == 40e12 and own.scale_note is None
    h200 = plan.Rates("h200", [h100])
    assert h200.rate(step("mlp")).flops_per_s == pytest.approx(40e12 * 4.8 / 3.35)
    assert h200.rate(step("cnn")).flops_per_s == pytest.approx(75e12)  # same peak
    a100 = plan.Rates("a100", [h100])
    assert a100.rate(step("cnn")).flops_per_s == pytest.approx(75e12 * 156 / 494.7)
    assert "borrowed from h100" in a100.scale_note
    # a bf16 program with only float32 records: the compute-bound row at the bf16 peak,
    # labelled as an assumption; a bf16 record, once there, is used as measured
    bf16 = dataclasses.replace(step("cnn"), precision="bfloat16")
    assumed = h200.rate(bf16)
    assert assumed.flops_per_s == pytest.approx(75e12 * 2) and "unmeasured" in assumed.source
    h100["rows"].append({**h100["rows"][1], "impl": "jax-lax.map-bf16", "tflops": 110.0})
    measured = plan.Rates("h100", [h100]).rate(bf16)
    assert measured.flops_per_s == 110e12 and "unmeasured" not in measured.source
    planned = plan.plan_steps([step("mlp")], own)
    assert planned["seconds"] == pytest.approx(10 * 4e8 / 40e12 + 5.0)
    with pytest.raises(MemjaxError, match="unknown device"):
        plan.Rates("gpu9000", [h100])
    # a device whose own records lack a kind borrows that kind alone from the nearest
    h200_cnn = _record("NVIDIA H200", [{**h100["rows"][1], "tflops": 87.0, "compile_s": 6.0}],
                       {"peak_tflops": 352.0, "bandwidth_gbs": 2700.0})
    partial = plan.Rates("h200", [h100, h200_cnn])
    cnn, mlp = partial.rate(step("cnn")), partial.rate(step("mlp"))
    assert cnn.flops_per_s == 87e12 and cnn.device == "h200" and "borrowed" not in cnn.source
    assert mlp.flops_per_s == pytest.approx(40e12 * 4.8 / 3.35) and mlp.device == "h100"
    assert mlp.source.startswith("borrowed from h100: a_mlp512")
    assert partial.compile_seconds() == 6.0 and partial.scale_note is None
    planned = plan.plan_steps([step("cnn"), step("mlp")], partial)
    assert planned["measured_here"] == 1
    assert "1 of 2 programs" in plan.format_plan(
        {"device": "h200", "note": None, "studies": {"s": planned},
         "total_seconds": planned["seconds"]})
    with pytest.raises(MemjaxError, match="no bench record"):
        plan.Rates("h100", [h100]).rate(cost.Step("s", "search", "mlp", cost.Cost(), 1, 1))


def test_checkpoint_writes_are_timed_by_the_nearest_recorded_disk():
    """A named device times checkpoints by a bench record's measured write cost, its own
    first, else the nearest device's (the table says whose); with none, bytes alone."""
    roof = {"peak_tflops": 370.0, "bandwidth_gbs": 2000.0}
    row = {"case": "a_mlp512", "impl": "jax-ensemble", "tflops": 1.0,
           "flops_per_model_example": 4e6}
    h100 = _record("NVIDIA H100 80GB HBM3", [row], roof)
    h200 = _record("NVIDIA H200", [row], roof)
    # 1500 s of training: saves at 10 and 20 minutes, and at the end (5 min >= half of 10)
    step = cost.Step("s", "train", "mlp", cost.Cost(1.5e15, 0), 1, per_example=1,
                     checkpoint_bytes=2e9)
    table = lambda rates: plan.format_plan({
        "device": rates.name, "note": None, "checkpoints_from": rates.checkpoint_from,
        "studies": {"s": plan.plan_steps([step], rates)}, "total_seconds": 1.0})
    untimed = plan.Rates("h200", [h100, h200])
    assert (untimed.checkpoint, untimed.checkpoint_from) == (None, None)
    planned = plan.plan_steps([step], untimed)
    assert planned["checkpoint_bytes"] == 6e9 and planned["checkpoint_seconds"] == 0
    assert "not: checkpoint writes (no bench record has timed a disk)" in table(untimed)
    h100["checkpoint"] = {"seconds_per_save": 0.5, "bytes_per_s": 1e9}
    borrowed = plan.Rates("h200", [h100, h200])
    assert borrowed.checkpoint_from == "h100"
    planned = plan.plan_steps([step], borrowed)
    assert planned["checkpoint_seconds"] == pytest.approx(3 * (0.5 + 2.0))
    assert planned["seconds"] == pytest.approx(1500 + 3 * 2.5)  # (no compile recorded)
    assert "checkpoint writes (at h100's recorded disk rate) included" in table(borrowed)
    h200["checkpoint"] = {"seconds_per_save": 0.2, "bytes_per_s": 2e9}
    own = plan.Rates("h200", [h100, h200])
    assert own.checkpoint_from == "h200"
    assert plan.plan_steps([step], own)["checkpoint_seconds"] == pytest.approx(3 * 1.2)
    assert "compilation and checkpoint writes included" in table(own)


def test_plan_command_prints_json_and_its_progress_on_stderr(capsys):
    assert main(["plan", "--preset", "smoke", "--only", "consistency,csr", "--device", "h200",
                 "--json"]) == 0
    printed = capsys.readouterr()
    result = json.loads(printed.out)
    # a bar over the studies, naming each program as it is counted (csr has 3)
    assert "counting csr's programs" in printed.err and "2/2" in printed.err
    assert "3 counted: " in printed.err
    assert result["device"] == "h200"
    studies = result["studies"]
    assert set(studies) == {"consistency", "csr"}
    assert studies["csr"]["probes"] > 0 and studies["consistency"]["probes"] == 0
    assert all(s["flops"] > 0 and s["seconds"] > 0 for s in studies.values())
    assert result["total_seconds"] == pytest.approx(sum(s["seconds"] for s in studies.values()))
    # the table names the study that takes longest, and its dearest program
    assert main(["plan", "--preset", "smoke", "--only", "consistency,csr", "--device",
                 "h200"]) == 0
    longest = max(studies, key=lambda name: studies[name]["seconds"])
    step = max(studies[longest]["steps"], key=lambda p: p["seconds"])["name"]
    out = capsys.readouterr().out
    assert f"longest: {longest}, " in out and f"its {step} takes" in out
    assert out == plan.format_plan(result) + "\n"  # the table alone: no progress in it
    assert main(["plan", "--preset", "smoke", "--only", "nope"]) == 2
    capsys.readouterr()
    assert main(["plan", "--preset", "smoke", "--device", "gpu9000"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("memjax: error: unknown device 'gpu9000'")  # before any progress
    assert main(["plan", "--preset", "smoke", "--only", "consistency", "--device", "H200"]) == 0
    assert "on h200" in capsys.readouterr().out
    # a preset of some studies only: the line names them
    assert main(["plan", "--preset", "cifar-cpu", "--only", "consistency,cscore"]) == 2
    assert ("consistency has no preset 'cifar-cpu'; the studies that have it: cscore, "
            "memorization (--only cscore,memorization)") in capsys.readouterr().err


def test_cpu_preset_predictions_hold_against_recorded_runs():
    """The recorded cpu-preset runs (memjax/records/plan-cpu-*.json: wall times measured
    on this CPU, with its roofline and checkpoint speed measured beside them) are predicted
    within 2x."""
    from memjax.reproduce import study_configs

    for name in ("csr", "consistency", "convergence", "noise-curves", "regularization"):
        table = next(t for t in reversed(records.plan_checks())
                     if t["preset"] == "cpu" and name in t["studies"])
        predicted = plan.plan(study_configs("cpu", [name]), "this",
                              table["measured"])["total_seconds"]
        measured = table["studies"][name]["measured_seconds"]
        assert 0.5 < predicted / measured < 2, (name, predicted, measured)


def test_checkpoints_saved_follow_the_run_clock():
    """As memjax.checkpoint.SaveClock writes them in one phase: one each 10 minutes, and one
    at the end once what followed the last reached 5 minutes (epochs of one second)."""
    from memjax.checkpoint import SaveClock

    for seconds in (5, 299, 300, 600, 899, 900, 60_000):
        clock_time = [0.0]
        clock = SaveClock(10, now=lambda: clock_time[0])
        epochs, saved = seconds, 0
        for e in range(epochs):
            clock_time[0] += 1.0
            if clock.due(last=e == epochs - 1):
                clock.saved()
                saved += 1
        assert plan.checkpoints_saved(seconds) == saved, seconds
    assert [plan.checkpoints_saved(s) for s in (5, 300, 900, 60_000)] == [0, 1, 2, 100]


def test_the_plan_reads_shipped_records_and_imports_no_benchmark():
    """The records are memjax's package data (memjax/records/), each read once with its
    file name, dated names in date order; no library module imports a benchmark (they
    import the library's roofline), but at most the `memjax bench` command that runs them."""
    import pathlib
    import re

    bench = records.bench_records()
    assert [r["file"] for r in bench] == sorted(r["file"] for r in bench)
    assert {"2026-11-26-nvidia-h100-80gb-hbm3.json", "2026-12-04-nvidia-h200-c_cnn.json"} <= {
        r["file"] for r in bench}
    assert all(r["device"]["kind"] and r["rows"] for r in bench)
    assert all(t["file"].startswith("plan-") and t["studies"] for t in records.plan_checks())
    library = pathlib.Path(plan.__file__).parents[1]
    importers = {str(p.relative_to(library)) for p in library.rglob("*.py")
                 if re.search(r"^\s*(from|import) memjax\.benchmarks|^\s*from memjax import .*"
                              r"\bbenchmarks\b", p.read_text(), re.M)}
    assert importers <= {"cli.py"}, importers  # (the `memjax bench` command, at most)


def test_planned_evaluation_is_the_program_the_runner_runs():
    """cost.evaluation counts the Runner's own evaluation program: in bf16 for members that
    train in bf16 (it once counted a float32 one under a bf16 label)."""
    from memjax.data import Split
    from memjax.evaluation import evaluate
    from memjax.runner import Runner

    model = ModelConfig(kind="cnn", conv_channels=4, batchnorm=True)
    train = TrainConfig(members=2, batch_size=16, compute_dtype="bfloat16", eval_chunk=32)
    data = DataShape(train=64, validation=48, image_shape=(32, 32, 3), num_classes=10)
    split = Split(np.zeros((64, 32, 32, 3), np.uint8), np.zeros(64, np.int32), np.zeros(64, bool))
    runner = Runner(model, train, split, 10)
    images = jax.ShapeDtypeStruct((48, 32, 32, 3), np.uint8)
    labels = jax.ShapeDtypeStruct((48,), np.int32)
    variables = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), runner.variables)
    ran = cost.program_cost(runner.evaluation, variables, images, labels)
    planned = cost.evaluation("validation", model, train, data, Members(np.arange(2)), 48, runs=1)
    assert planned.cost == ran and planned.precision == "bfloat16"
    float32 = cost.program_cost(  # the program the plan counted before
        lambda v, x, y: evaluate(runner.apply, v, x, y, chunk=32, mesh=runner.mesh),
        variables, images, labels)
    assert float32 != ran
