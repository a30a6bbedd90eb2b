"""The device's roofline, measured: peak matmul rate and memory bandwidth. The plan scales
this machine's recorded rates by it (memjax.plan.rates); `memjax bench` records it beside
its rows and reports each row's share of it.

peak: the best of a few float32 matmuls at JAX's default precision (TF32 on NVIDIA GPUs,
which the PyTorch baselines are allowed too) of n x n, FLOPs = 2 n^3.
bandwidth: y = 2x + 1 over a large float32 array, bytes = read + write.
"""
from __future__ import annotations

import time

import jax
import jax.numpy as jnp

SIZES = {"cpu": dict(n=1536, words=2 ** 24, repeats=5), "gpu": dict(n=8192, words=2 ** 28, repeats=10)}


def _best_seconds(fn, *args, repeats: int) -> float:
    jax.block_until_ready(fn(*args))
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - start)
    return best


def measure(preset: str) -> dict[str, float]:
    """{"peak_tflops": float32 matmul TFLOP/s, "bandwidth_gbs": GB/s (1e9 bytes)}."""
    s = SIZES[preset]
    n = s["n"]
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    matmul = jax.jit(lambda a, b: a @ b)
    peak = 2 * n ** 3 / _best_seconds(matmul, a, b, repeats=s["repeats"]) / 1e12
    x = jnp.ones((s["words"],), jnp.float32)
    axpy = jax.jit(lambda x: 2 * x + 1)
    bandwidth = 2 * 4 * s["words"] / _best_seconds(axpy, x, repeats=s["repeats"]) / 1e9
    return {"peak_tflops": peak, "bandwidth_gbs": bandwidth}


def share(tflops: float, intensity: float | None, peak_tflops: float,
          bandwidth_gbs: float) -> float:
    """Achieved / attainable, attainable = min(peak, intensity x bandwidth) where
    intensity is FLOPs per byte moved (None: compute-bound, the peak alone)."""
    attainable = peak_tflops
    if intensity:
        attainable = min(peak_tflops, intensity * bandwidth_gbs / 1e3)
    return tflops / attainable
