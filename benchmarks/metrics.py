"""Throughput of the per-example metrics over an ensemble (cases d and e): one
vmapped program over all members against the same jitted function one member at a time,
and a PyTorch per-model loop when torch imports; plus the ensemble in bf16 compute
(`jax-ensemble-bf16`, which the comparisons leave out: the targets are at TF32).

    from memjax.benchmarks.metrics import CASES
    rows = CASES["d_lass"]("cpu")   # or "gpu"; each row: case, impl, members, seconds, ...

Sizes ("gpu"): (d) LASS for 100 iterations on 1000 examples for 100 MLPs 2 x 4096
(radius 0, so no example is decided early and every iteration runs); (e) loss sensitivity
of 10k MNIST-shaped examples for 100 MLPs 2 x 4096. "cpu": the same shapes shrunk to finish
in seconds on 2 cores. A model-example is one example's whole search (d) or gradient (e)
under one member.
"""
from __future__ import annotations

import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from memjax.config import ModelConfig, TrainConfig
from memjax.metrics import lass, loss_sensitivity
from memjax.members import Members, build_ensemble

SIZES = {
    "e_loss_sensitivity": {
        "cpu": dict(members=8, examples=512, hidden=(256, 256), chunk=256, serial=2),
        "gpu": dict(members=100, examples=10_000, hidden=(4096, 4096), chunk=1000, serial=5)},
    "d_lass": {
        "cpu": dict(members=8, examples=128, hidden=(256, 256), iterations=10, serial=2),
        "gpu": dict(members=100, examples=1000, hidden=(4096, 4096), iterations=100, serial=5)},
}
# the ensemble with compute_dtype="bfloat16" (its own row, outside the comparisons)
BF16 = "jax-ensemble-bf16"
# the benchmark's LASS settings (memjax.metrics.PAPER_LASS with radius 0)
LASS_ARGS = dict(radius=0.0, step_size=0.25 / 255, noise_scale=0.2 / 255)


def _ensemble(members: int, hidden: tuple[int, ...], examples: int):
    network, _, state = build_ensemble(ModelConfig(hidden=hidden), TrainConfig(learning_rate=0.01),
                                       10, np.zeros((1, 28, 28, 1), np.float32),
                                       Members(np.arange(members)))
    rng = np.random.default_rng(0)
    x = jax.device_put(rng.integers(0, 256, (examples, 28, 28, 1), dtype=np.uint8))
    y = jax.device_put(rng.integers(0, 10, examples).astype(np.int32))
    return network, state.variables, x, y


def _seconds(run: Callable[[], object], repeats: int) -> float:
    """Best wall time of `repeats` runs after a compiling warm-up run."""
    jax.block_until_ready(run())
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(run())
        best = min(best, time.perf_counter() - start)
    return best


def _macs(hidden: tuple[int, ...], inputs: int = 784, classes: int = 10) -> int:
    widths = (inputs,) + tuple(hidden) + (classes,)
    return sum(a * b for a, b in zip(widths[:-1], widths[1:]))


def _rows(case: str, s: dict, flops_per_model_example: float, timings: dict,
          note: str) -> list[dict]:
    """Rows for the timed JAX implementations (timings: impl -> seconds)."""
    notes = {"jax-ensemble": note, BF16: "bf16 compute: not counted against the TF32 targets"}
    rows = []
    for impl, seconds in timings.items():
        members = s["serial"] if impl == "jax-one-at-a-time" else s["members"]
        rows.append({"impl": impl, "members": members, "seconds": seconds,
                     "model_examples_per_s": members * s["examples"] / seconds,
                     "note": notes.get(impl, f"{members} members timed, one after another")})
    return [{"case": case, "flops_per_model_example": flops_per_model_example, **r}
            for r in rows]


def _torch_row(case: str, s: dict, flops_per_model_example: float, run) -> dict:
    """The PyTorch loop's row: run(torch_metrics) -> seconds for s["serial"] members; or a
    row that says why there is none."""
    row = {"case": case, "flops_per_model_example": flops_per_model_example}
    try:
        from memjax.benchmarks import torch_baselines, torch_metrics
    except ImportError:
        return {**row, "impl": "torch-*", "members": s["members"], "model_examples_per_s": None,
                "seconds": None, "note": "PyTorch not installed: torch baselines skipped"}
    try:
        seconds = run(torch_metrics)
    except Exception as e:  # reported, not raised: the JAX rows still count
        return {**row, "impl": "torch-loop", "members": s["serial"],
                "model_examples_per_s": None, "seconds": None,
                "note": f"failed: {str(e).strip()[:200]}"}
    finally:
        torch_baselines.release_memory()
    return {**row, "impl": "torch-loop", "members": s["serial"], "seconds": seconds,
            "model_examples_per_s": s["serial"] * s["examples"] / seconds,
            "note": f"{s['serial']} members timed, one after another"}


def loss_sensitivity_case(preset: str) -> list[dict]:
    s = SIZES["e_loss_sensitivity"][preset]
    network, variables, x, y = _ensemble(s["members"], s["hidden"], s["examples"])
    repeats = 2  # as the PyTorch loop
    members = [jax.tree_util.tree_map(lambda l, m=m: l[m:m + 1], variables)
               for m in range(s["serial"])]
    timings = {
        "jax-ensemble": _seconds(lambda: loss_sensitivity(network.apply, variables, x, y,
                                                          chunk=s["chunk"]), repeats),
        # the same jitted function, one member at a time: what a per-seed script does
        "jax-one-at-a-time": _seconds(lambda: [loss_sensitivity(
            network.apply, v, x, y, chunk=s["chunk"]) for v in members], repeats),
        BF16: _seconds(lambda: loss_sensitivity(network.apply, variables, x, y, chunk=s["chunk"],
                                                compute_dtype="bfloat16"), repeats),
    }
    # forward + backward to the input: 2 matmul passes of 2 FLOPs per multiply-add
    flops = 4.0 * _macs(s["hidden"])
    return _rows("e_loss_sensitivity", s, flops, timings,
                 f"{s['examples']} examples, MLP {s['hidden']}, chunk {s['chunk']}") + [
        _torch_row("e_loss_sensitivity", s, flops, lambda tm: tm.sensitivity_loop(
            s["hidden"], np.asarray(x), np.asarray(y), s["serial"], s["chunk"]))]


def lass_case(preset: str) -> list[dict]:
    s = SIZES["d_lass"][preset]
    network, variables, x, _ = _ensemble(s["members"], s["hidden"], s["examples"])
    # radius 0: no example can flip, so every search runs all its iterations
    args = dict(LASS_ARGS, max_iterations=s["iterations"])
    key = jax.random.key(0)
    members = [jax.tree_util.tree_map(lambda l, m=m: l[m:m + 1], variables)
               for m in range(s["serial"])]
    repeats = 2  # as the PyTorch loop
    timings = {
        "jax-ensemble": _seconds(lambda: lass(network.apply, variables, x, key,
                                              **args).critical, repeats),
        "jax-one-at-a-time": _seconds(lambda: [lass(
            network.apply, v, x, key, member_ids=jnp.array([m]), **args).critical
            for m, v in enumerate(members)], repeats),
        BF16: _seconds(lambda: lass(network.apply, variables, x, key, compute_dtype="bfloat16",
                                    **args).critical, repeats),
    }
    # one forward and one backward pass to the input per iteration, and one before the first
    flops = 4.0 * _macs(s["hidden"]) * (s["iterations"] + 1)
    return _rows("d_lass", s, flops, timings,
                 f"{s['iterations']} iterations x {s['examples']} examples, MLP {s['hidden']}") + [
        _torch_row("d_lass", s, flops, lambda tm: tm.lass_loop(
            s["hidden"], np.asarray(x), s["serial"], s["iterations"], **LASS_ARGS))]


# E2's program: the unrolled trajectory with its backward pass (the sensitivity study's
# cpu and paper sizes, fewer epochs)
UNROLLED = {"cpu": dict(members=4, examples=1000, epochs=6, every=20, chunk=None),
            "gpu": dict(members=100, examples=1000, epochs=20, every=20, chunk=25)}


def unrolled_case(preset: str) -> list[dict]:
    """(g) memjax.metrics.unrolled_loss_sensitivity for MLPs 2 x 16 on 1000 14 x 14 inputs,
    batch 100: FLOPs counted by XLA (memjax.cost), as `memjax plan` counts the study's."""
    from memjax.cost import program_cost
    from memjax.metrics import trainer_order, unrolled_loss_sensitivity

    s = UNROLLED[preset]
    network, _, state = build_ensemble(ModelConfig(hidden=(16, 16)),
                                       TrainConfig(learning_rate=0.2), 10,
                                       np.zeros((1, 14, 14, 1), np.float32),
                                       Members(np.arange(s["members"])))
    rng = np.random.default_rng(0)
    x = jax.device_put(rng.integers(0, 256, (s["examples"], 14, 14, 1), dtype=np.uint8))
    y = jax.device_put(rng.integers(0, 10, s["examples"]).astype(np.int32))
    order, weight = trainer_order(0, np.arange(s["members"]), num_examples=s["examples"],
                                  batch_size=100, epochs=s["epochs"])
    program = lambda v, x, y: unrolled_loss_sensitivity(
        network.apply, v, x, y, order, weight, learning_rate=0.2, every=s["every"],
        member_chunk=s["chunk"]).mean
    flops = program_cost(program, state.variables, x, y).flops
    seconds = _seconds(lambda: program(state.variables, x, y), 1)
    trained = float(np.sum(weight))
    return [{"case": "g_unrolled", "impl": "jax-ensemble", "members": s["members"],
             "seconds": seconds, "model_examples_per_s": trained / seconds,
             "flops_per_model_example": flops / trained,
             "note": f"{s['epochs']} epochs of batch 100, g_x^t every {s['every']} steps; "
                     f"FLOPs by XLA's cost analysis"}]


CASES: dict[str, Callable[[str], list[dict]]] = {
    "d_lass": lass_case,
    "e_loss_sensitivity": loss_sensitivity_case,
    "g_unrolled": unrolled_case,
}


if __name__ == "__main__":
    import sys

    for name, case in CASES.items():
        for row in case(sys.argv[1] if len(sys.argv) > 1 else "cpu"):
            print(row)
