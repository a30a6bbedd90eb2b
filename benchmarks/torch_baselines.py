"""PyTorch baselines for benchmarks/throughput.py, imported only when torch is installed
(torch is not a dependency of memjax).

  torch-loop   one nn.Module and optimizer per member, trained one after another
  torch-func   torch.func ensemble: stack_module_state + vmap(grad(functional_call))
  torch-bmm    MLPs hand-batched with torch.baddbmm over a [members, in, out] weight stack
  torch-bmm-bf16  the same in bf16 autocast: bf16 matmuls on float32 master weights, the
               loss and the update in float32 (the precision of memjax's jax-ensemble-bf16)
(The metric cases' loops are in torch_metrics.py.)
Training: same models, batch, learning rate (0.01) and momentum as the JAX side; each member its own
data order from one device-resident uint8 copy; TF32 allowed (as JAX's default precision).
"""
from __future__ import annotations

import copy
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

torch.backends.cuda.matmul.allow_tf32 = True
torch.backends.cudnn.allow_tf32 = True
torch.backends.cudnn.benchmark = True

LEARNING_RATE = 0.01


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


class CNN(nn.Module):
    """The paper's CNN (memjax.models.PaperCNN) on NHWC [0, 1] input; batchnorm: after each
    convolution and hidden dense layer, before its ReLU (momentum 0.1 here is flax's 0.9)."""

    def __init__(self, in_channels: int, channels: int, image: int, classes: int = 10,
                 batchnorm: bool = False):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 5, padding=2)
        self.conv2 = nn.Conv2d(channels, channels, 5, padding=2)
        side = -(-(-(-(image - 4) // 2)) // 2)
        self.fc1 = nn.Linear(side * side * channels, 384)
        self.fc2 = nn.Linear(384, 192)
        self.out = nn.Linear(192, classes)
        norm = ((lambda cls, n: cls(n, momentum=0.1)) if batchnorm
                else (lambda cls, n: nn.Identity()))
        self.norms = nn.ModuleList([norm(nn.BatchNorm2d, channels), norm(nn.BatchNorm2d, channels),
                                    norm(nn.BatchNorm1d, 384), norm(nn.BatchNorm1d, 192)])

    def forward(self, x):
        n = self.norms
        x = x.permute(0, 3, 1, 2)[:, :, 2:-2, 2:-2]
        x = F.max_pool2d(F.relu(n[0](self.conv1(x))), 3, 2, 1)
        x = F.max_pool2d(F.relu(n[1](self.conv2(x))), 3, 2, 1)
        x = F.relu(n[2](self.fc1(x.flatten(1))))
        return self.out(F.relu(n[3](self.fc2(x))))


class ResNet9(nn.Module):
    """Page's fast CIFAR-10 ResNet-9 (memjax.models.resnet.ResNet9) in torch.nn on NCHW
    input, c = width (64 in the source): conv_bn is conv 3x3 padding 1 (no bias) ->
    BatchNorm2d -> ReLU; prep c, layer1 2c -> maxpool 2 -> + residual (2 x conv_bn 2c),
    layer2 4c -> maxpool 2, layer3 8c -> maxpool 2 -> + residual (2 x conv_bn 8c), global
    max pool, linear 8c -> classes without bias, x 0.125."""

    def __init__(self, in_channels: int = 3, width: int = 64, classes: int = 10):
        super().__init__()
        c = width

        def conv_bn(a, b):
            return nn.Sequential(nn.Conv2d(a, b, 3, padding=1, bias=False), nn.BatchNorm2d(b),
                                 nn.ReLU(inplace=True))

        self.prep = conv_bn(in_channels, c)
        self.layer1 = nn.Sequential(conv_bn(c, 2 * c), nn.MaxPool2d(2))
        self.res1 = nn.Sequential(conv_bn(2 * c, 2 * c), conv_bn(2 * c, 2 * c))
        self.layer2 = nn.Sequential(conv_bn(2 * c, 4 * c), nn.MaxPool2d(2))
        self.layer3 = nn.Sequential(conv_bn(4 * c, 8 * c), nn.MaxPool2d(2))
        self.res3 = nn.Sequential(conv_bn(8 * c, 8 * c), conv_bn(8 * c, 8 * c))
        self.linear = nn.Linear(8 * c, classes, bias=False)

    def forward(self, x):
        x = self.layer1(self.prep(x))
        x = x + self.res1(x)
        x = self.layer3(self.layer2(x))
        x = x + self.res3(x)
        return self.linear(torch.amax(x, dim=(2, 3))) * 0.125


def _model(case) -> nn.Module:
    if case.model.kind == "resnet9":
        return ResNet9(case.image[2], case.model.width or 64)
    if case.model.kind == "cnn":
        return CNN(case.image[2], case.model.conv_channels, case.image[0],
                   batchnorm=case.model.batchnorm)
    return _mlp(int(np.prod(case.image)), case.model.hidden)


def _mlp(inputs: int, hidden, classes: int = 10) -> nn.Module:
    widths = (inputs,) + tuple(hidden) + (classes,)
    layers: list[nn.Module] = [nn.Flatten()]
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(widths) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def _data(x: np.ndarray, y: np.ndarray):
    dev = _device()
    return torch.from_numpy(np.array(x)).to(dev), torch.from_numpy(y.astype(np.int64)).to(dev)


def _orders(members: int, n: int, batch: int) -> torch.Tensor:
    """[members, steps, batch] example indices, each member its own permutation."""
    dev = _device()
    perms = torch.stack([torch.randperm(n, device=dev) for _ in range(members)])
    return perms[:, : (n // batch) * batch].reshape(members, n // batch, batch)


def _prep(xb: torch.Tensor) -> torch.Tensor:
    return xb.float().div_(255.0)


def _timed(run, repeats: int = 2) -> float:
    """Best wall time of `repeats` full runs after a short warm-up run."""
    run(warmup=True)
    _sync()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run(warmup=False)
        _sync()
        best = min(best, time.perf_counter() - start)
    return best


def _row(impl: str, members: int, examples: int, seconds: float, note: str = "") -> dict:
    return {"impl": impl, "members": members, "model_examples_per_s": members * examples / seconds,
            "seconds": seconds, **({"note": note} if note else {})}


def per_model_loop(case, x, y) -> dict:
    X, Y = _data(x, y)
    dev = _device()
    with torch.device(dev):  # initialized where they train (not on the host, then copied)
        models = [_model(case) for _ in range(case.serial)]
    opts = [torch.optim.SGD(m.parameters(), lr=LEARNING_RATE, momentum=case.momentum)
            for m in models]
    order = _orders(case.serial, len(y), case.batch)

    def run(warmup: bool):
        for i, (model, opt) in enumerate(zip(models, opts)):
            for idx in order[i, :1] if warmup else order[i]:
                loss = F.cross_entropy(model(_prep(X[idx])), Y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()

    seconds = _timed(run)
    return _row("torch-loop", case.serial, order.shape[1] * case.batch, seconds,
                f"{case.serial} members timed, one after another")


def _augment(xb: torch.Tensor, pad: int, flip: bool, cutout: int) -> torch.Tensor:
    """Each example of normalized NCHW xb its own draws on its device, in ffcv's order (as
    memjax.augment): left-right flip with probability 1/2, translation by up to `pad`
    pixels (pad with 0, the mean after normalizing, then cut an H x W window at a uniform
    offset), and a cutout x cutout square set to 0 lying inside the image whole."""
    n, c, h, w = xb.shape
    dev = xb.device
    if flip:
        xb = torch.where(torch.rand(n, device=dev)[:, None, None, None] < 0.5, xb.flip(3), xb)
    if pad:
        padded = F.pad(xb, (pad, pad, pad, pad))
        rows = torch.randint(0, 2 * pad + 1, (n, 1), device=dev) + torch.arange(h, device=dev)
        cols = torch.randint(0, 2 * pad + 1, (n, 1), device=dev) + torch.arange(w, device=dev)
        xb = padded[torch.arange(n, device=dev)[:, None, None, None],
                    torch.arange(c, device=dev)[None, :, None, None],
                    rows[:, None, :, None], cols[:, None, None, :]]
    if cutout:
        top = torch.randint(0, h - cutout + 1, (n, 1), device=dev)
        left = torch.randint(0, w - cutout + 1, (n, 1), device=dev)
        r, q = torch.arange(h, device=dev), torch.arange(w, device=dev)
        inside = (((r >= top) & (r < top + cutout))[:, :, None]
                  & ((q >= left) & (q < left + cutout))[:, None, :])
        xb = xb.masked_fill(inside[:, None], 0.0)
    return xb


def resnet9_loop(case, x, y) -> dict:
    """memjax's resnet9 recipe (memjax.recipes.RESNET9_CIFAR10_TRAIN, ffcv's CIFAR-10
    settings) in PyTorch, one model at a time, as users train them today: Page's ResNet-9
    (`ResNet9`, width case.model.width) in channels_last, SGD with the recipe's momentum
    (0.9), nesterov and weight decay (5e-4), its one-cycle learning rate set each step, the
    cross-entropy with label smoothing 0.1, inputs normalized by the model's input mean and
    std, and flip, translate and cutout drawn on the device tensors (`_augment`). bf16
    autocast on CUDA when case.compute_dtype is bfloat16 (BatchNorm and the loss in float32,
    autocast's rules); float32 on the CPU: bf16 autocast runs there, but about 20 times
    slower than float32 on a CPU without bf16 arithmetic (ResNet-9 width 8, batch 64)."""
    from memjax.recipes import RESNET9_CIFAR10_TRAIN as recipe

    X, Y = _data(x, y)
    dev = _device()
    bf16 = case.compute_dtype == "bfloat16" and dev.type == "cuda"
    precision = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16)
    mean = torch.tensor(case.model.input_mean or (0.0,) * case.image[2], device=dev)
    std = torch.tensor(case.model.input_std or (1.0,) * case.image[2], device=dev)
    with torch.device(dev):
        models = [_model(case).to(memory_format=torch.channels_last) for _ in range(case.serial)]
    opts = [torch.optim.SGD(m.parameters(), lr=recipe.learning_rate, momentum=recipe.momentum,
                            nesterov=recipe.nesterov, weight_decay=recipe.weight_decay)
            for m in models]
    order = _orders(case.serial, len(y), case.batch)
    steps = order.shape[1]

    def lr(step: int) -> float:  # onecycle: 0 -> peak at warmup_epochs -> 0 at epochs
        return recipe.learning_rate * float(np.interp(
            step / steps, [0, recipe.warmup_epochs, recipe.epochs], [0, 1, 0]))

    def run(warmup: bool):
        for i, (model, opt) in enumerate(zip(models, opts)):
            model.train()
            for s, idx in enumerate(order[i, :1] if warmup else order[i]):
                for group in opt.param_groups:
                    group["lr"] = lr(s)
                xb = ((_prep(X[idx]) - mean) / std).permute(0, 3, 1, 2)
                xb = _augment(xb, recipe.augment_crop, recipe.augment_flip,
                              recipe.augment_cutout).contiguous(memory_format=torch.channels_last)
                with precision:
                    loss = F.cross_entropy(model(xb), Y[idx],
                                           label_smoothing=recipe.label_smoothing)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()

    seconds = _timed(run)
    where = ("bf16 autocast" if bf16 else
             "float32 (CPU: bf16 autocast about 20x slower)" if case.compute_dtype == "bfloat16"
             else "float32")
    return {**_row("torch-loop", case.serial, steps * case.batch, seconds,
                   f"{case.serial} members timed, one after another; recipe settings, "
                   f"channels_last, {where}"),
            "compute_dtype": "bfloat16" if bf16 else "float32"}


def func_ensemble(case, x, y) -> dict:
    """BatchNorm here keeps no running averages (torch.func.replace_all_batch_norm_modules_:
    vmap cannot update them in place), a little less work than memjax's."""
    from torch.func import (functional_call, grad, replace_all_batch_norm_modules_,
                            stack_module_state, vmap)

    X, Y = _data(x, y)
    dev = _device()
    with torch.device(dev):  # 100 MLP-4096s are 8 GB: initialized on the device, not the host
        models = [replace_all_batch_norm_modules_(_model(case)) for _ in range(case.members)]
    params, buffers = stack_module_state(models)
    base = copy.deepcopy(models[0]).to("meta")
    velocity = {k: torch.zeros_like(v) for k, v in params.items()}
    order = _orders(case.members, len(y), case.batch)

    def loss_fn(p, b, xb, yb):
        return F.cross_entropy(functional_call(base, (p, b), (xb,)), yb)

    member_grads = vmap(grad(loss_fn))

    def run(warmup: bool):
        for s in range(1 if warmup else order.shape[1]):
            idx = order[:, s]
            grads = member_grads(params, buffers, _prep(X[idx]), Y[idx])
            with torch.no_grad():
                for k, g in grads.items():
                    if case.momentum:
                        velocity[k].mul_(case.momentum).add_(g)
                        g = velocity[k]
                    params[k].sub_(LEARNING_RATE * g)

    seconds = _timed(run)
    note = "BatchNorm without running averages" if getattr(case.model, "batchnorm", False) else ""
    return _row("torch-func", case.members, order.shape[1] * case.batch, seconds, note)


def bmm_ensemble(case, x, y, bf16: bool = False) -> dict:
    """bf16: the forward and backward matmuls in bf16 autocast (the weights cast once a
    step, the backward pass reading the forward's bf16 copies), float32 master weights,
    gradients and update; the cross-entropy in float32 (autocast's rule, as memjax
    computes it)."""
    X, Y = _data(x, y)
    dev = _device()
    precision = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16)
    m = case.members
    widths = (int(np.prod(case.image)),) + tuple(case.model.hidden) + (10,)
    weights, biases = [], []
    for a, b in zip(widths[:-1], widths[1:]):
        bound = 1.0 / np.sqrt(a)
        weights.append(torch.empty(m, a, b, device=dev).uniform_(-bound, bound).requires_grad_())
        biases.append(torch.zeros(m, 1, b, device=dev).requires_grad_())
    params = weights + biases
    order = _orders(m, len(y), case.batch)

    def run(warmup: bool):
        for s in range(1 if warmup else order.shape[1]):
            idx = order[:, s]
            with precision:
                h = _prep(X[idx]).reshape(m, case.batch, -1)
                for i, (w, b) in enumerate(zip(weights, biases)):
                    h = torch.baddbmm(b, h, w)
                    if i < len(weights) - 1:
                        h = F.relu(h)
                # sum over members of each member's mean loss: member-wise mean gradients
                loss = F.cross_entropy(h.reshape(m * case.batch, -1), Y[idx].reshape(-1)) * m
            grads = torch.autograd.grad(loss, params)
            with torch.no_grad():
                torch._foreach_add_(params, grads, alpha=-LEARNING_RATE)

    seconds = _timed(run)
    if bf16:
        return _row("torch-bmm-bf16", m, order.shape[1] * case.batch, seconds,
                    "bf16 autocast, float32 master weights")
    return _row("torch-bmm", m, order.shape[1] * case.batch, seconds)


def release_memory() -> None:
    """Hand PyTorch's cached device memory back (JAX runs next on the same device)."""
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def baselines(case) -> dict:
    """impl name -> fn(case, x [N, H, W, C] uint8, y [N] int) -> result row."""
    if case.model.kind == "resnet9":
        return {"torch-loop": resnet9_loop}
    found = {"torch-loop": per_model_loop, "torch-func": func_ensemble}
    if case.model.kind == "mlp" and not case.momentum:
        found["torch-bmm"] = bmm_ensemble
        found["torch-bmm-bf16"] = lambda case, x, y: bmm_ensemble(case, x, y, bf16=True)
    return found
