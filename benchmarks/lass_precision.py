"""Does CSR move when LASS runs in full float32 instead of the GPU's default TF32?

    python -m memjax.benchmarks.lass_precision --data npz:PATH [--epochs 4] --out FILE.json

On recent NVIDIA GPUs XLA runs float32 convolutions and matmuls in TF32 by default, whose
10-bit mantissa spaces the points the network sees at 2^-11 (about 0.0005) for pixels in
[0.5, 1): 0.4x the paper's radius (docs/scale.md). This trains the paper's CNN (the csr
paper preset's model and recipe, bf16 compute) on real data and on randY for a few epochs,
then searches the SAME members with the SAME keys twice, under jax's default matmul
precision and under "highest" (exact float32), and records each member's CSR and how many
examples' critical flags differ. On a CPU the two are the same computation (a rehearsal).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import jax
import numpy as np

from memjax.config import DataConfig
from memjax.data import load_dataset, with_noise
from memjax.experiments import csr
from memjax.metrics import PAPER_LASS, authors_scale, critical_sample_ratio, validation_search
from memjax.files import atomic_path
from memjax.manifest import device_description, versions
from memjax.runner import Runner


def check(data: str, epochs: int, members: int, examples: int, channels: int | None) -> dict:
    config = csr.PRESETS["paper"]
    model = (config.model if channels is None
             else dataclasses.replace(config.model, conv_channels=channels))
    train = dataclasses.replace(config.train, members=members, epochs=epochs)
    dataset = load_dataset(DataConfig(name=data, train_size=None))
    x_val = jax.device_put(dataset.validation.x)
    scale = authors_scale(dataset.train.x, dataset.validation.x)
    rows = {}
    for condition in ("real", "randY"):
        split = with_noise(dataset.train, condition, 1.0, dataset.num_classes, 0)
        runner = Runner(model, train, split, dataset.num_classes)
        start = time.perf_counter()
        runner.run(epochs, phase=condition)
        trained = time.perf_counter() - start
        found = {}
        for precision in ("default", "highest"):
            with jax.default_matmul_precision(None if precision == "default" else "highest"):
                found[precision] = validation_search(
                    runner.apply, runner.variables, x_val, jax.random.key(7),
                    protocol="authors", examples=min(examples, len(x_val)), scale=scale,
                    member_chunk=train.member_chunk, **PAPER_LASS)
        a, b = (np.asarray(found[p].critical)[:members] for p in ("default", "highest"))
        rows[condition] = {
            "csr_default": np.asarray(critical_sample_ratio(a)).tolist(),
            "csr_highest": np.asarray(critical_sample_ratio(b)).tolist(),
            "flags_differing": int((a != b).sum()), "examples": int(a.shape[1]),
            "iterations_default": float(np.asarray(found["default"].iterations).mean()),
            "iterations_highest": float(np.asarray(found["highest"].iterations).mean()),
            "train_seconds": trained}
        print(condition, rows[condition], flush=True)
    return {"date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
            "device": device_description(), "versions": versions(), "data": data,
            "epochs": epochs, "members": members, "conv_channels": model.conv_channels,
            "lass_scale": scale, "conditions": rows}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="a data set name memjax loads (npz:PATH)")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--members", type=int, default=3)
    p.add_argument("--examples", type=int, default=500)
    p.add_argument("--channels", type=int, help="conv channels (default: the paper's 200)")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    record = check(args.data, args.epochs, args.members, args.examples, args.channels)
    with atomic_path(Path(args.out)) as tmp:
        tmp.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
