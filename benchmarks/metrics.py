"""Throughput of the per-example metrics over an ensemble: one vmapped program over all
members against a Python loop over members (each member's call jitted on its own).

    from memjax.benchmarks.metrics import CASES
    rows = CASES["lass"]("cpu")   # or "gpu"; each row: case, impl, members, seconds, ...

Sizes ("gpu", issue 5): loss sensitivity of 10k MNIST-shaped examples for 100 MLPs
2 x 4096; LASS for 100 iterations on 1000 examples for 100 MLPs 2 x 4096 (radius 0, so
no example is decided early and every iteration runs). "cpu": the same shapes shrunk to
finish in seconds on 2 cores.
"""
from __future__ import annotations

import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from memjax.config import ModelConfig
from memjax.ensemble import init_ensemble, make_optimizer
from memjax.metrics import lass, loss_sensitivity
from memjax.models import build_network

SIZES = {
    "sensitivity": {"cpu": dict(members=8, examples=512, hidden=(256, 256), chunk=256),
                    "gpu": dict(members=100, examples=10_000, hidden=(4096, 4096), chunk=1000)},
    "lass": {"cpu": dict(members=8, examples=128, hidden=(256, 256), iterations=10),
             "gpu": dict(members=100, examples=1000, hidden=(4096, 4096), iterations=100)},
}


def _ensemble(members: int, hidden: tuple[int, ...], examples: int):
    network = build_network(ModelConfig(hidden=hidden), 10)
    state = init_ensemble(network, make_optimizer(), jnp.zeros((1, 28, 28, 1)), seed=0,
                          member_ids=np.arange(members), learning_rate=0.01)
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


def _rows(case: str, members: int, work: int, flops: float, timings: dict, note: str) -> list[dict]:
    return [{"case": case, "impl": impl, "members": members, "seconds": seconds,
             "model_examples_per_s": work / seconds, "tflops": flops / seconds / 1e12,
             "note": note} for impl, seconds in timings.items()]


def loss_sensitivity_case(preset: str) -> list[dict]:
    s = SIZES["sensitivity"][preset]
    network, variables, x, y = _ensemble(s["members"], s["hidden"], s["examples"])
    repeats = 3 if preset == "cpu" else 2
    members = [jax.tree_util.tree_map(lambda l, m=m: l[m:m + 1], variables)
               for m in range(s["members"])]
    timings = {
        "vmap": _seconds(lambda: loss_sensitivity(network.apply, variables, x, y,
                                                  chunk=s["chunk"]), repeats),
        # the same jitted function, one member at a time: what a per-seed script does
        "loop": _seconds(lambda: [loss_sensitivity(network.apply, v, x, y, chunk=s["chunk"])
                                  for v in members], repeats),
    }
    work = s["members"] * s["examples"]
    # forward + backward to the input: ~3 matmul passes of 2 FLOPs per multiply-add
    return _rows("loss_sensitivity", s["members"], work, 6.0 * _macs(s["hidden"]) * work,
                 timings, f"{s['examples']} examples, MLP {s['hidden']}, chunk {s['chunk']}")


def lass_case(preset: str) -> list[dict]:
    s = SIZES["lass"][preset]
    network, variables, x, _ = _ensemble(s["members"], s["hidden"], s["examples"])
    # radius 0: no example can flip, so every search runs all its iterations
    args = dict(radius=0.0, step_size=0.25 / 255, noise_scale=0.2 / 255,
                max_iterations=s["iterations"])
    key = jax.random.key(0)
    members = [jax.tree_util.tree_map(lambda l, m=m: l[m:m + 1], variables)
               for m in range(s["members"])]
    repeats = 2 if preset == "cpu" else 1
    timings = {
        "vmap": _seconds(lambda: lass(network.apply, variables, x, key, **args).critical,
                         repeats),
        "loop": _seconds(lambda: [lass(network.apply, v, x, key, member_ids=jnp.array([m]),
                                       **args).critical for m, v in enumerate(members)], repeats),
    }
    work = s["members"] * s["examples"] * s["iterations"]
    # per iteration: forward + backward (gradient sign) + forward (prediction check)
    return _rows("lass", s["members"], work, 8.0 * _macs(s["hidden"]) * work, timings,
                 f"{s['iterations']} iterations x {s['examples']} examples, MLP {s['hidden']}; "
                 "model_examples_per_s counts example-iterations")


CASES: dict[str, Callable[[str], list[dict]]] = {
    "loss_sensitivity": loss_sensitivity_case,
    "lass": lass_case,
}


if __name__ == "__main__":
    import sys

    for name, case in CASES.items():
        for row in case(sys.argv[1] if len(sys.argv) > 1 else "cpu"):
            print(row)
