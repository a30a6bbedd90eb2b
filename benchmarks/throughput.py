"""Training throughput of whole ensembles against baselines (the cases of cases.py).

    memjax bench --preset cpu|gpu [--cases a_mlp512,c_cnn]

The cases and their sizes are in benchmarks/cases.py (resnet9 compares memjax's ensemble
with the same network and recipe in PyTorch, one model at a time). Implementations, all
timed in the same run:
  jax-ensemble        memjax's jitted epoch, members vmapped (planned chunks)
  jax-ensemble-bf16   (MLPs) the same in bf16 compute, float32 master weights
                      (TrainConfig(compute_dtype="bfloat16")), compared with torch-bmm-bf16
  jax-one-at-a-time   the same jitted epoch on one member at a time (a Python loop)
  plain-jax           (MLPs) reference: a straightforward vmap + scan of plain SGD, without
                      memjax's per-member features; what those features cost
  jax-lax.map, jax-grouped-K, jax-im2col-K, jax-vmap and their -bf16 / -bf16-bn rows
                      (CNN) the convolution forms (`cnn_forms`, memjax.models.CONV_FORMS),
                      each trained by the Runner as TrainConfig selects it
  torch-*             PyTorch baselines (benchmarks/torch_baselines.py) when torch imports
bf16 rows are left out of the TF32 comparisons; the MLPs' are compared in bf16 with
torch-bmm-bf16 (harness.BF16_TARGETS).
Serial baselines time `serial` members and report their rate (the rate of a loop does not
depend on how many members it runs). The gpu preset keeps 100 members and times fewer
steps so the whole benchmark fits in a few minutes of one H100. Each row records its wall
time (`wall_s`: set-up, compilation, warm-up and timed runs), what sizes the presets.
"""
from __future__ import annotations

import functools
import time

import jax
import numpy as np

from memjax.benchmarks.cases import (CSCORE_SIZES, PRESETS, Case, models_per_hour,
                                     synthetic_data, training_costs)
from memjax.config import DataConfig, ModelConfig, TrainConfig
from memjax.data import Split
from memjax.models import build_network
from memjax.members import Members
from memjax.runner import Runner


def _timed(fn, repeats: int = 2) -> float:
    """Best wall time of fn() after one warm-up call; fn blocks until done."""
    fn()
    return min(_once(fn) for _ in range(repeats))


def _once(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _runner(case: Case, x, y, member_ids, chunk=None, compute_dtype="float32",
            conv_form=None, norm_in_compute_dtype=None) -> Runner:
    """A CNN's rows name their convolution form: as today's default unless told."""
    if case.model.kind == "cnn":
        conv_form = conv_form or "conv"
        norm_in_compute_dtype = bool(norm_in_compute_dtype)
    train = TrainConfig(batch_size=case.batch, learning_rate=0.01, momentum=case.momentum,
                        member_chunk=chunk, compute_dtype=compute_dtype, conv_form=conv_form,
                        norm_in_compute_dtype=norm_in_compute_dtype)
    return Runner(case.model, train, Split(x, y, None), 10, Members(np.asarray(member_ids)))


def jax_ensemble_row(case: Case, x, y, chunk=None, impl="jax-ensemble", repeats=2,
                     compute_dtype="float32", conv_form=None,
                     norm_in_compute_dtype=None) -> dict:
    """One epoch (= case.steps steps) of all members in one program (memjax.runner). A
    CNN's row names its convolution form (conv_form, member_chunk, compute_dtype,
    norm_in_compute_dtype: what memjax.memory.plan_conv_form reads)."""
    runner = _runner(case, x, y, np.arange(case.members), chunk, compute_dtype, conv_form,
                     norm_in_compute_dtype)
    compile_s = runner.compile()
    seconds = _timed(runner.epoch, repeats)  # (the epoch ends with its metrics on the host)
    row = {"impl": impl, "members": case.members, "member_chunk": chunk,
           "model_examples_per_s": case.members * len(y) / seconds, "seconds": seconds,
           "compile_s": compile_s, "compute_dtype": compute_dtype}
    if case.model.kind == "cnn":
        module = runner.network.module
        row.update(conv_form=module.conv_form,
                   norm_in_compute_dtype=module.norm_in_compute_dtype,
                   member_chunk=runner.placement()["member_chunk"])
    return row


def resnet9_row(case: Case, x, y) -> dict:
    """memjax's ensemble of case.members ResNet-9s trained by the recipe
    (memjax.recipes.resnet9_cifar10: onecycle learning rate, label smoothing 0.1, flip,
    translate and cutout on the device, SGD momentum 0.9 with weight decay 5e-4) in
    case.compute_dtype, at case.batch; the convolution form case.conv_form (None: planned
    as training plans it) and the member chunk planned (the row names them). One epoch =
    case.steps steps."""
    from memjax.recipes import resnet9_cifar10

    model, train = resnet9_cifar10(case.model.width, members=case.members,
                                   batch_size=case.batch, compute_dtype=case.compute_dtype,
                                   conv_form=case.conv_form)
    runner = Runner(model, train, Split(x, y, None), 10, Members(np.arange(case.members)))
    compile_s = runner.compile()
    seconds = _timed(runner.epoch, 2)
    module, placement = runner.network.module, runner.placement()
    precision = ("bf16 compute, float32 master weights" if case.compute_dtype == "bfloat16"
                 else "float32")
    return {"impl": "jax-ensemble", "members": case.members,
            "model_examples_per_s": case.members * len(y) / seconds, "seconds": seconds,
            "compile_s": compile_s, "compute_dtype": case.compute_dtype,
            "conv_form": getattr(module, "conv_form", None),
            "member_chunk": placement.get("member_chunk"),
            "note": f"recipe settings (augmentation, onecycle, label smoothing), {precision}"}


def cnn_forms(case: Case) -> list[tuple[str, dict, str]]:
    """(impl, jax_ensemble_row's keywords, note) of each convolution form the CNN case
    times, in order (the vmap over all members last: the likeliest to run out of memory).
    Training selects the same forms with TrainConfig's conv_form, member_chunk,
    compute_dtype and norm_in_compute_dtype, as these rows do.

    Left out, as they cannot win: im2col one member at a time (the same patch traffic as
    im2col-K, with K times the launches of its small kernels), forcing XLA's NCHW layout
    for cuDNN (XLA picks NHWC on Hopper already, `xla_gpu_force_conv_nhwc`), and members
    folded into the batch dimension (one convolution cannot give members their own
    weights there; vmap folds them into the channels, the grouped form). Left out to keep
    the gpu preset's time: the grouped form in bf16 (it trailed lax.map in float32 on an
    H200, without BatchNorm)."""
    k = case.form_chunk
    grouped = (f"vmap over {k} members: one grouped convolution (feature_group_count={k}, "
               f"the members as channels)")
    im2col = f"im2col (patches x kernel), vmap over {k} members: one batched matmul"
    bf16_bn = "bf16 end to end (BatchNorm normalizes in bf16)"
    forms = [
        ("jax-lax.map", dict(chunk=1, conv_form="conv"),
         "lax.map: one member's plain convolution at a time (the default)"),
        (f"jax-grouped-{k}", dict(chunk=k, conv_form="conv"), grouped),
        (f"jax-im2col-{k}", dict(chunk=k, conv_form="im2col"), im2col),
        ("jax-lax.map-bf16", dict(chunk=1, conv_form="conv", compute_dtype="bfloat16"),
         "lax.map, bf16 compute, BatchNorm in float32"),
        ("jax-lax.map-bf16-bn", dict(chunk=1, conv_form="conv", compute_dtype="bfloat16",
                                     norm_in_compute_dtype=True), f"lax.map, {bf16_bn}"),
        (f"jax-im2col-{k}-bf16-bn", dict(chunk=k, conv_form="im2col", compute_dtype="bfloat16",
                                         norm_in_compute_dtype=True), f"{im2col}; {bf16_bn}"),
    ]
    if case.vmap_all:
        forms.append(("jax-vmap", dict(chunk=case.members, conv_form="conv"),
                      f"one vmap over all {case.members} members: a grouped convolution"))
    return [(impl, kw, note + ("" if "bf16" not in impl else
                               "; bf16: not counted against the TF32 targets"))
            for impl, kw, note in forms]


def jax_one_at_a_time_row(case: Case, x, y) -> dict:
    """The same runner, one member each, `case.serial` members in a Python loop."""
    runners = [_runner(case, x, y, [i]) for i in range(case.serial)]
    for runner in runners:
        runner.compile()

    def run():
        for runner in runners:
            runner.epoch()

    seconds = _timed(run, repeats=1)
    return {"impl": "jax-one-at-a-time", "members": case.serial,
            "model_examples_per_s": case.serial * len(y) / seconds, "seconds": seconds,
            "note": f"{case.serial} members timed, one after another"}


def plain_jax_row(case: Case, x, y) -> dict:
    """Reference: the straightforward JAX ensemble (vmap over members of a lax.scan of plain
    SGD steps, each member its own data order) with none of memjax's per-member features
    (learning rates and weight decay as state, dataset-size and noise masks, divergence
    isolation, planned chunks). The gap to jax-ensemble is what those features cost."""
    import optax

    network = build_network(case.model, 10)
    params = _runner(case, x, y, np.arange(case.members)).variables["params"]
    steps = len(y) // case.batch

    @functools.partial(jax.jit, donate_argnums=0)
    def epoch(params, key):
        def member(p, k):
            order = jax.random.permutation(k, steps * case.batch).reshape(steps, case.batch)

            def step(p, idx):
                def loss(p):
                    logits = network.apply({"params": p}, x[idx].astype(np.float32) / 255)
                    return optax.softmax_cross_entropy_with_integer_labels(logits, y[idx]).mean()

                return jax.tree.map(lambda w, g: w - 0.01 * g, p, jax.grad(loss)(p)), None

            return jax.lax.scan(step, p, order)[0]

        return jax.vmap(member)(params, jax.random.split(key, case.members))

    holder = [params]

    def run():
        holder[0] = epoch(holder[0], jax.random.key(0))
        jax.block_until_ready(holder[0])

    seconds = _timed(run)
    return {"impl": "plain-jax", "members": case.members,
            "model_examples_per_s": case.members * len(y) / seconds, "seconds": seconds,
            "note": "reference: vmap + scan of plain SGD, no memjax features"}


def run_case(name: str, preset: str) -> list[dict]:
    case = PRESETS[preset][name]
    x, y = synthetic_data(case.image, case.steps * case.batch)
    # PyTorch first: it hands its cached memory back after each baseline, while JAX's memory
    # pool keeps what its largest program took (torch.func's CNN ensemble would not fit
    # after the JAX rows).
    rows = _torch_rows(case, x, y)
    x, y = jax.device_put(x), jax.device_put(y)
    if case.model.kind == "resnet9":
        rows.append(_guarded(lambda: resnet9_row(case, x, y), "jax-ensemble", case))
        costs = training_costs(case)
        return [{"case": name, **costs, **row,
                 "models_per_hour": models_per_hour(row.get("model_examples_per_s"))}
                for row in rows]
    if case.model.kind != "cnn":
        rows.append(_guarded(lambda: jax_ensemble_row(case, x, y), "jax-ensemble", case))
        # memjax.plan reads this impl name for bfloat16 programs (its IMPLS)
        rows.append(_guarded(lambda: {**jax_ensemble_row(
            case, x, y, impl="jax-ensemble-bf16", compute_dtype="bfloat16"),
            "note": "bf16 compute, float32 master weights: compared with torch-bmm-bf16"},
            "jax-ensemble-bf16", case))
    rows.append(_guarded(lambda: jax_one_at_a_time_row(case, x, y), "jax-one-at-a-time", case))
    if case.model.kind == "mlp" and not case.momentum:
        rows.append(_guarded(lambda: plain_jax_row(case, x, y), "plain-jax", case))
    if case.model.kind == "cnn":
        for impl, kw, note in cnn_forms(case):
            rows.append(_guarded(lambda: {**jax_ensemble_row(case, x, y, impl=impl, **kw),
                                          "note": note}, impl, case))
    costs = training_costs(case)
    return [{"case": name, **costs, **row} for row in rows]


def _guarded(fn, impl: str, case: Case) -> dict:
    """fn's row with its wall time (wall_s: what the row costs the bench, compilation
    included); a failing implementation (out of memory above all) becomes a row that says
    so."""
    start = time.perf_counter()
    try:
        row = fn()
    except Exception as e:  # reported, not raised: the other implementations still run
        message = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        row = {"impl": impl, "members": case.members, "model_examples_per_s": None,
               "seconds": None, "note": f"failed: {message}"}
    return {**row, "wall_s": round(time.perf_counter() - start, 1)}


def _torch_rows(case: Case, x: np.ndarray, y: np.ndarray) -> list[dict]:
    try:
        from memjax.benchmarks import torch_baselines
    except ImportError:
        return [{"impl": "torch-*", "members": case.members, "model_examples_per_s": None,
                 "seconds": None, "note": "PyTorch not installed: torch baselines skipped"}]
    rows = []
    for impl, fn in torch_baselines.baselines(case).items():
        rows.append(_guarded(lambda: fn(case, x, y), impl, case))
        torch_baselines.release_memory()  # leave the device to the next implementation
    return rows


def e1_consistency(preset: str) -> list[dict]:
    """E1 training (consistency cpu preset, 100 x MLP 2 x 256, batch
    128, one epoch on the embedded 10k examples), vmapped ensemble against the same members
    one at a time with the same jitted epoch."""
    from memjax.data import load_dataset

    d = load_dataset(DataConfig())
    case = Case(ModelConfig(hidden=(256, 256)), (28, 28, 1), 100, 0, 10)
    x, y = jax.device_put(d.train.x), jax.device_put(d.train.y)
    rows = [_guarded(lambda: jax_ensemble_row(case, x, y, repeats=1), "jax-ensemble", case),
            _guarded(lambda: jax_one_at_a_time_row(case, x, y), "jax-one-at-a-time", case)]
    costs = training_costs(case)
    return [{"case": "e1_consistency", **costs, **row} for row in rows]



def f_cscore(preset: str) -> list[dict]:
    """The C-score protocol's training: the anchor's MLP 784-512-256-10 (SGD momentum 0.9,
    learning rate 0.1, batch 128), each member on its own balanced 50 % subset of the
    embedded 10k MNIST, one epoch: memjax's ensemble (one program, memjax run cscore's
    phase for one ratio) against the same members one at a time, as the anchor trains them
    (one model after another). A model-example is an example a member trains on (its
    subset's size)."""
    from memjax.data import load_dataset
    from memjax.metrics import balanced_masks

    size = CSCORE_SIZES[preset]
    d = load_dataset(DataConfig())
    masks = balanced_masks(size["members"], len(d.train), 0.5)
    case = Case(ModelConfig(hidden=size["hidden"]), (28, 28, 1), size["members"], 0,
                size["serial"], momentum=0.9)
    train = TrainConfig(batch_size=128, learning_rate=0.1, momentum=0.9)

    def runner(ids):
        return Runner(case.model, train, d.train, 10, Members(ids, example_mask=masks[ids]))

    def ensemble():
        r = runner(np.arange(case.members))
        compile_s = r.compile()
        seconds = _timed(r.epoch, repeats=1)
        return {"impl": "jax-ensemble", "members": case.members, "seconds": seconds,
                "model_examples_per_s": masks.sum() / seconds, "compile_s": compile_s}

    def one_at_a_time():
        runners = [runner(np.array([i])) for i in range(case.serial)]
        for r in runners:
            r.compile()
        seconds = _timed(lambda: [r.epoch() for r in runners], repeats=1)
        return {"impl": "jax-one-at-a-time", "members": case.serial, "seconds": seconds,
                "model_examples_per_s": masks[:case.serial].sum() / seconds,
                "note": f"{case.serial} members timed, one after another"}

    rows = [_guarded(ensemble, "jax-ensemble", case),
            _guarded(one_at_a_time, "jax-one-at-a-time", case)]
    return [{"case": "f_cscore", **training_costs(case), **row} for row in rows]


CASES = {name: (lambda preset, name=name: run_case(name, preset))
         for name in ("a_mlp512", "b_mlp4096", "c_cnn", "resnet9")}
CASES["e1_consistency"] = e1_consistency
CASES["f_cscore"] = f_cscore
