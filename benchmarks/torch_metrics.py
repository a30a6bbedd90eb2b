"""PyTorch loops for the metric cases of benchmarks/metrics.py: LASS (`lass_loop`) and loss
sensitivity (`sensitivity_loop`) on one MLP after another, running the same algorithms as
memjax.metrics. Imported only when torch is installed.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from memjax.benchmarks.torch_baselines import _data, _device, _mlp, _prep, _timed

def _frozen_mlps(hidden, inputs: int, count: int) -> list[nn.Module]:
    """`count` MLPs in evaluation mode whose weights need no gradient (metrics differentiate
    with respect to the input only)."""
    dev = _device()
    return [_mlp(inputs, hidden).to(dev).eval().requires_grad_(False) for _ in range(count)]


def lass_search(model: nn.Module, x0: torch.Tensor, iterations: int, *, radius: float,
                step_size: float, noise_scale: float, seed: int = 0):
    """LASS on one model as memjax.metrics.lass_search runs it: one forward and one backward
    pass per iteration, the check of a proposal reusing the forward pass that gives the next
    step's gradient; for exactly `iterations` iterations (no early-stop check, which would
    cost a device sync per iteration; decided examples stay where they flipped).
    x0: [N, D] in [0, 1]. Returns (critical [N] bool, points [N, D])."""
    low, high = (x0 - radius).clamp(0.0, 1.0), (x0 + radius).clamp(0.0, 1.0)

    def probe(points, label=None):
        points = points.detach().requires_grad_(True)
        logits = model(points)
        label = logits.argmax(-1) if label is None else label
        grad, = torch.autograd.grad(F.cross_entropy(logits, label, reduction="sum"), points)
        return logits.detach(), label, grad.sign()

    generator = torch.Generator(device=x0.device).manual_seed(seed)
    _, predicted, direction = probe(x0)
    points, critical = x0.clone(), torch.zeros(len(x0), dtype=torch.bool, device=x0.device)
    for _ in range(iterations):
        noise = torch.randn(x0.shape, generator=generator, device=x0.device)
        proposal = torch.minimum(torch.maximum(
            points + step_size * direction + noise_scale * noise, low), high)
        logits, _, direction = probe(proposal, predicted)
        active = ~critical
        points = torch.where(active[:, None], proposal, points)
        critical |= active & (logits.argmax(-1) != predicted)
    return critical, points


def lass_loop(hidden, x: np.ndarray, members: int, iterations: int, **lass_args) -> float:
    """Seconds for `lass_search` on `members` MLPs one after another, over all of
    x [N, H, W, C] uint8 at once, `iterations` iterations each."""
    x0 = _prep(torch.from_numpy(np.array(x)).to(_device())).flatten(1)
    models = _frozen_mlps(hidden, x0.shape[1], members)

    def run(warmup: bool):
        for model in models[:1] if warmup else models:
            lass_search(model, x0, 1 if warmup else iterations, **lass_args)

    return _timed(run)


def sensitivity_loop(hidden, x: np.ndarray, y: np.ndarray, members: int, chunk: int) -> float:
    """Seconds for the L1 norm of every example's input gradient of its cross-entropy
    (memjax.metrics.loss_sensitivity), on `members` MLPs one after another, `chunk`
    examples per backward pass."""
    X, Y = _data(x, y)
    models = _frozen_mlps(hidden, int(np.prod(x.shape[1:])), members)

    def run(warmup: bool):
        for model in models[:1] if warmup else models:
            for start in range(0, chunk if warmup else len(Y), chunk):
                xb = _prep(X[start:start + chunk]).flatten(1).requires_grad_(True)
                loss = F.cross_entropy(model(xb), Y[start:start + chunk], reduction="sum")
                grad, = torch.autograd.grad(loss, xb)
                grad.abs().sum(1)

    return _timed(run)
