"""The convolution forms (memjax.models.CONV_FORMS, TrainConfig.conv_form) against members
trained alone: through the Runner, a small paper CNN with BatchNorm and momentum trained in
each form, chunked or one at a time, equals each of its members trained by itself in the
plain form; the program has the form it claims; and the planned form comes from the
device's own bench records, else today's default."""
import jax
import numpy as np
import pytest

from memjax import memory
from memjax.config import ModelConfig, TrainConfig
from memjax.data import Split
from memjax.members import Members
from memjax.runner import Runner

MODEL = ModelConfig(kind="cnn", conv_channels=6, batchnorm=True)
IDS = [3, 7]  # two members in one vmap group (chunk 2), or one at a time (chunk 1)


@pytest.fixture(scope="module")
def split():
    rng = np.random.default_rng(0)
    return Split(rng.integers(0, 256, (64, 16, 16, 3), dtype=np.uint8),
                 rng.integers(0, 10, 64).astype(np.int32), None)


def _runner(split, ids, **train) -> Runner:
    config = TrainConfig(batch_size=32, learning_rate=0.05, momentum=0.9, seed=5, **train)
    return Runner(MODEL, config, split, 10, Members(np.asarray(ids)))


def _trained(split, ids, epochs=2, **train):
    """Variables after `epochs` epochs (2 steps each: 4 SGD steps), on the host."""
    runner = _runner(split, ids, **train)
    for _ in range(epochs):
        runner.epoch()
    return jax.device_get(runner.variables)


_ALONE = {}


def _alone(split, **train):
    """Each member of IDS trained by itself, one member in the program."""
    key = tuple(sorted(train.items()))
    if key not in _ALONE:
        _ALONE[key] = [_trained(split, [i], member_chunk=1, **train) for i in IDS]
    return _ALONE[key]


def _assert_members_equal(together, alone, rtol, atol):
    for m, single in enumerate(alone):
        for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(together),
                                jax.tree_util.tree_leaves(single)):
            np.testing.assert_allclose(np.asarray(a)[m], np.asarray(b)[0], rtol=rtol, atol=atol,
                                       err_msg=jax.tree_util.keystr(path))


PLAIN = dict(conv_form="conv", norm_in_compute_dtype=False, compute_dtype="float32")
# (name, the form, the member alone it must equal): in float32 every form equals the plain
# member (lax.conv, flax's BatchNorm) within float32 rounding, so each computes the same
# function. In bf16 two algorithms differ by bf16 rounding, which 4 SGD steps amplify to
# the size of bf16 training's own gap from float32 (~0.03 on kernels of scale 0.3); there a
# member of a chunk equals itself trained alone in the same form (on this CPU within 1e-4).
FORMS = [
    ("lax.map", dict(PLAIN, member_chunk=1), PLAIN),
    ("grouped conv, 2 members", dict(PLAIN, member_chunk=2), PLAIN),
    ("im2col, one member", dict(PLAIN, conv_form="im2col", member_chunk=1), PLAIN),
    ("im2col, batched matmul of 2", dict(PLAIN, conv_form="im2col", member_chunk=2), PLAIN),
    # with float32 inputs ComputeDtypeBatchNorm is nn.BatchNorm's arithmetic
    ("grouped conv, BatchNorm in the compute dtype",
     dict(PLAIN, norm_in_compute_dtype=True, member_chunk=2), PLAIN),
    ("im2col, BatchNorm in the compute dtype",
     dict(PLAIN, conv_form="im2col", norm_in_compute_dtype=True, member_chunk=2), PLAIN),
]
for conv in ("conv", "im2col"):
    for norm in (False, True):
        bf16 = dict(conv_form=conv, norm_in_compute_dtype=norm, compute_dtype="bfloat16")
        FORMS.append((f"bf16 {conv}{', BatchNorm in bf16' if norm else ''}, 2 members",
                      dict(bf16, member_chunk=2), bf16))
TOLERANCE = {"float32": dict(rtol=2e-4, atol=2e-5), "bfloat16": dict(rtol=2e-3, atol=2e-4)}


@pytest.mark.parametrize("form", FORMS, ids=[f[0] for f in FORMS])
def test_every_form_trains_each_member_as_it_trains_alone(split, form):
    _, train, reference = form
    together = _trained(split, IDS, **train)
    _assert_members_equal(together, _alone(split, **reference),
                          **TOLERANCE[train["compute_dtype"]])
    # the members differ (their own keys): the comparison is not of two equal members
    kernels = together["params"]["Conv_1"]["kernel"]
    assert not np.allclose(kernels[0], kernels[1])


def test_batchnorm_in_bf16_is_flax_batchnorm_within_bf16_rounding():
    """One training-mode pass on bf16 inputs, with a mask: ComputeDtypeBatchNorm's output
    and running statistics against nn.BatchNorm's (float32 arithmetic) on the same input."""
    import flax.linen as nn
    import jax.numpy as jnp

    from memjax.models import ComputeDtypeBatchNorm

    x = (jax.random.normal(jax.random.key(0), (16, 5, 5, 8)) * 3 + 1).astype(jnp.bfloat16)
    mask = (jnp.arange(16) < 12).reshape(16, 1, 1, 1)
    flax_bn, ours = nn.BatchNorm(use_running_average=False, momentum=0.9), \
        ComputeDtypeBatchNorm(False, 0.9)
    variables = flax_bn.init(jax.random.key(1), x)
    variables = {"params": {"scale": jnp.linspace(0.5, 2, 8), "bias": jnp.linspace(-1, 1, 8)},
                 "batch_stats": variables["batch_stats"]}
    want, want_stats = flax_bn.apply(variables, x, mask=mask, mutable=["batch_stats"])
    got, got_stats = ours.apply(variables, x, mask=mask, mutable=["batch_stats"])
    assert got.dtype == jnp.bfloat16 and want.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(got, np.float32), want, rtol=2e-2, atol=2e-2)
    # the statistics are reduced in float32 from the same bf16 input: equal
    for a, b in zip(jax.tree_util.tree_leaves(got_stats), jax.tree_util.tree_leaves(want_stats)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


def test_a_broken_form_fails_the_comparison(split, monkeypatch):
    """The comparison can fail: im2col with its windows in the wrong order (the kernel read
    transposed in space) trains other members."""
    from memjax.models import base as models  # (where PaperCNN finds its im2col_conv)

    real = models.im2col_conv

    def transposed(lhs, rhs, *args, **kw):
        return real(lhs, rhs.transpose(1, 0, 2, 3), *args, **kw)

    monkeypatch.setattr(models, "im2col_conv", transposed)
    broken = _trained(split, IDS, **dict(PLAIN, conv_form="im2col", member_chunk=2))
    with pytest.raises(AssertionError):
        _assert_members_equal(broken, _alone(split, **PLAIN), **TOLERANCE["float32"])


def _program_text(runner: Runner) -> str:
    return runner.train_epoch.lower(runner.state, runner.train.seed, runner.x, runner.y,
                                    runner.view, runner.noise).as_text()


def test_the_program_has_the_form_it_claims(split):
    grouped = _program_text(_runner(split, IDS, conv_form="conv", member_chunk=2))
    # vmap of lax.conv: the members as channels of one grouped convolution, forward and back
    assert "feature_group_count = 2" in grouped
    one = _program_text(_runner(split, IDS, conv_form="conv", member_chunk=1))
    assert "stablehlo.convolution" in one and "feature_group_count = 2" not in one
    im2col = _program_text(_runner(split, IDS, conv_form="im2col", member_chunk=2))
    assert "stablehlo.convolution" not in im2col
    # one batched matmul over the 2 members: [2, B, H, W, 25 C] x [2, 25 C, O]
    assert "tensor<2x32x12x12x75xf32>" in im2col and "batching_dims = [0] x [0]" in im2col


def _row(impl, rate, form, chunk, dtype="float32", norm=False):
    return {"case": "c_cnn", "impl": impl, "model_examples_per_s": rate, "conv_form": form,
            "member_chunk": chunk, "compute_dtype": dtype, "norm_in_compute_dtype": norm}


def _record(kind, rows, platform="gpu", file="x.json"):
    return {"device": {"kind": kind, "platform": platform}, "rows": rows, "file": file}


def test_planned_form_is_the_fastest_recorded_on_this_device():
    h200 = "NVIDIA H200"
    old = _record(h200, [_row("jax-im2col-25", 9e5, "im2col", 25)], file="old.json")
    new = _record(h200, [
        _row("jax-lax.map", 7e4, "conv", 1), _row("jax-grouped-25", 6e4, "conv", 25),
        _row("jax-im2col-25", 1.4e5, "im2col", 25),
        _row("jax-im2col-25-bf16-bn", 2.6e5, "im2col", 25, "bfloat16", True),
        _row("jax-lax.map-bf16", 1.1e5, "conv", 1, "bfloat16"),
        {**_row("jax-vmap", None, "conv", 100), "note": "failed: out of memory"},
        {"case": "c_cnn", "impl": "torch-loop", "model_examples_per_s": 1e9}],
        file="new.json")
    other = _record("NVIDIA H100 80GB HBM3", [_row("jax-grouped-25", 1e9, "conv", 25)])
    records = [old, new, other]  # oldest first, as memjax.records.bench_records() gives them
    plan = memory.plan_conv_form("float32", device_kind=h200, platform="gpu", records=records)
    # the newest record of this device that has the forms, its fastest float32 row
    assert (plan.conv_form, plan.member_chunk, plan.norm_in_compute_dtype) == ("im2col", 25, False)
    assert plan.source.startswith("new.json: jax-im2col-25")
    bf16 = memory.plan_conv_form("bfloat16", device_kind=h200, platform="gpu", records=records)
    assert (bf16.conv_form, bf16.member_chunk, bf16.norm_in_compute_dtype) == ("im2col", 25, True)
    # what a run sets wins; a named form takes the planned chunk only if it is that form
    kw = dict(device_kind=h200, platform="gpu", records=records)
    assert memory.conv_plan("conv", None, None, "float32", **kw) == memory.ConvPlan(
        "conv", None, False, plan.source)
    assert memory.conv_plan(None, 5, None, "float32", **kw).member_chunk == 5
    assert memory.conv_plan("im2col", None, None, "float32", **kw).member_chunk == 25


@pytest.mark.parametrize("where", ["no record of the device", "records without the forms",
                                   "a CPU"])
def test_planned_form_is_todays_default_without_the_devices_rows(where):
    legacy = _record("NVIDIA H200", [{"case": "c_cnn", "impl": "jax-lax.map",
                                      "model_examples_per_s": 7e4, "member_chunk": 1}])
    kind, platform, records = {
        "no record of the device": ("NVIDIA A100-SXM4-80GB", "gpu", [legacy]),
        "records without the forms": ("NVIDIA H200", "gpu", [legacy]),
        "a CPU": ("cpu", "cpu", [_record("cpu", [_row("jax-im2col-2", 1e9, "im2col", 2)],
                                         platform="cpu")]),
    }[where]
    plan = memory.plan_conv_form("float32", device_kind=kind, platform=platform, records=records)
    assert (plan.conv_form, plan.member_chunk, plan.norm_in_compute_dtype) == ("conv", None, False)
    assert plan.source.startswith("default")


def test_runner_trains_in_the_planned_form(split, monkeypatch):
    """A run that leaves the form unset gets the planned one: its network, and its members
    grouped by the planned chunk (as memory allows)."""
    planned = memory.ConvPlan("im2col", 2, True, "a test's record")
    monkeypatch.setattr(memory, "plan_conv_form", lambda *a, **k: planned)
    runner = _runner(split, [0, 1, 2])
    assert runner.network.module.conv_form == "im2col"
    assert runner.network.module.norm_in_compute_dtype
    assert runner.placement()["member_chunk"] == 2
    # memory lowers a planned chunk it cannot hold
    monkeypatch.setenv("MEMJAX_MEMORY_BYTES", "1")
    assert _runner(split, [0, 1, 2]).placement()["member_chunk"] == 1
    # the run's own settings win
    monkeypatch.delenv("MEMJAX_MEMORY_BYTES")
    own = _runner(split, [0, 1, 2], conv_form="conv", norm_in_compute_dtype=False)
    assert own.network.module.conv_form == "conv" and own.placement()["member_chunk"] == 1


def test_bench_rows_name_the_form_that_ran():
    """The c_cnn rows carry what plan_conv_form reads, as the Runner ran it, and the row
    named grouped is the grouped convolution (one row, a tiny case)."""
    from memjax.benchmarks import cases, throughput

    case = cases.Case(ModelConfig(kind="cnn", conv_channels=2, batchnorm=True),
                      (12, 12, 3), 3, 1, 1, 0.9, batch=8, form_chunk=2)
    forms = {impl: (kw, note) for impl, kw, note in throughput.cnn_forms(case)}
    assert set(forms) == {"jax-lax.map", "jax-grouped-2", "jax-im2col-2", "jax-lax.map-bf16",
                          "jax-lax.map-bf16-bn", "jax-im2col-2-bf16-bn"}
    assert "feature_group_count=2" in forms["jax-grouped-2"][1]
    x, y = cases.synthetic_data(case.image, 8)
    kw, _ = forms["jax-im2col-2-bf16-bn"]
    row = throughput.jax_ensemble_row(case, x, y, impl="jax-im2col-2-bf16-bn", repeats=1, **kw)
    assert {k: row[k] for k in ("conv_form", "member_chunk", "compute_dtype",
                                "norm_in_compute_dtype")} == {
        "conv_form": "im2col", "member_chunk": 2, "compute_dtype": "bfloat16",
        "norm_in_compute_dtype": True}
    assert row["model_examples_per_s"] > 0
