"""How many LASS iterations the in-step search of adversarial training runs with the
authors' protocol (regularization's dropout + adversarial members), for the plan's
`memjax.cost.AUTHORS_IN_STEP_ITERATIONS`.

    python -m memjax.benchmarks.in_step_search [--train-size 512] [--epochs 24]
        [--channels 32] [--data-dir DIR] [--out benchmarks/results]

Two members of the paper's CIFAR-10 CNN (BatchNorm, dropout 0.5 as the first adversarial
pair; real labels and randY) train with the paper's SGD on the first N training images.
Before training and after a few epochs, each member's variables search every full
minibatch of 128 of those images as memjax.train's step does (`TRAINING_LASS`, the
authors' stop below 20 new critical samples, evaluation mode). Writes
<out>/in-step-search-<date>-<device>-c<channels>.json and .md: iterations run and critical
samples found per search.
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from memjax.config import DataConfig
from memjax.data import load_dataset
from memjax.experiments import regularization
from memjax.members import Members
from memjax.metrics.lass import PROTOCOLS, TRAINING_LASS, lass_search
from memjax.files import atomic_path
from memjax.manifest import versions
from memjax.runner import Runner

BATCH = 128


def measure(train_size: int, epochs: int, channels: int, data_dir: str | None) -> dict:
    paper = regularization.PRESETS["paper"]
    data = load_dataset(DataConfig(name="cifar10", data_dir=data_dir, train_size=train_size,
                                   validation_size=BATCH))
    runner = Runner(replace(paper.model, conv_channels=channels),
                    replace(paper.train, members=2, compute_dtype="float32"), data.train,
                    data.num_classes, Members(np.arange(2), label_noise=np.array([0.0, 1.0]),
                                              strengths={"dropout": np.full(2, 0.5)}))
    search = jax.jit(lambda v, x, key: lass_search(runner.apply, v, x, key, **TRAINING_LASS,
                                                   **PROTOCOLS["authors"]))
    batches = data.train.x[:train_size // BATCH * BATCH].reshape(-1, BATCH,
                                                                  *data.train.x.shape[1:])
    at, rows = sorted({0, 1, 2, epochs // 2, epochs}), []

    def searches(r, epoch):
        if epoch in at:
            for m, name in enumerate(("real", "randY")):
                v = jax.tree.map(lambda a: a[m], r.variables)
                for b, x in enumerate(batches):
                    found = search(v, jnp.asarray(x), jax.random.key(epoch * 1000 + b * 10 + m))
                    rows.append({"epoch": epoch, "member": name, "batch": b,
                                 "iterations": int(found.iterations.max()),
                                 "critical": int(found.critical.sum())})
        return {}

    searches(runner, 0)
    runner.run(epochs, phase="in-step-search", measure=searches)
    iterations = np.array([row["iterations"] for row in rows])
    per_epoch = {e: float(np.mean([r["iterations"] for r in rows if r["epoch"] == e]))
                 for e in at}
    return {"train_size": train_size, "epochs": epochs, "conv_channels": channels,
            "mean_iterations": float(iterations.mean()), "max_iterations": int(iterations.max()),
            "mean_iterations_by_epoch": per_epoch, "searches": rows}


def markdown(record: dict) -> str:
    r = record["result"]
    lines = [f"# In-step LASS iterations, authors' protocol ({record['date']})", "",
             f"Device: {record['device']['kind']}; versions: {record['versions']}.",
             f"Paper CNN with {r['conv_channels']} channels, {r['train_size']} CIFAR-10 images, "
             f"{r['epochs']} epochs; minibatches of {BATCH}.", "",
             "| epoch | member | iterations per search | critical per search |",
             "| ---: | --- | --- | --- |"]
    for epoch in r["mean_iterations_by_epoch"]:
        for member in ("real", "randY"):
            found = [s for s in r["searches"] if s["epoch"] == int(epoch) and s["member"] == member]
            lines.append(f"| {epoch} | {member} | {[s['iterations'] for s in found]} | "
                         f"{[s['critical'] for s in found]} |")
    lines += ["", f"Mean {r['mean_iterations']:.2f} iterations, at most {r['max_iterations']}."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train-size", type=int, default=512)
    parser.add_argument("--epochs", type=int, default=24)
    parser.add_argument("--channels", type=int, default=32)
    parser.add_argument("--data-dir")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args(argv)
    device = jax.devices()[0]
    record = {"date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
              "device": {"kind": device.device_kind, "platform": device.platform},
              "versions": versions(),
              "result": measure(args.train_size, args.epochs, args.channels, args.data_dir)}
    stem = (f"in-step-search-{time.strftime('%Y-%m-%d')}-"
            f"{device.device_kind.lower().replace(' ', '-')}-c{args.channels}")
    args.out.mkdir(parents=True, exist_ok=True)
    with atomic_path(args.out / f"{stem}.json") as tmp:
        tmp.write_text(json.dumps(record, indent=1) + "\n")
    with atomic_path(args.out / f"{stem}.md") as tmp:
        tmp.write_text(markdown(record))
    print(markdown(record))


if __name__ == "__main__":
    main()
