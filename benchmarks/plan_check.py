"""The plan against reality: predict studies on this machine (`memjax plan --device this`),
run them, and record predicted against measured wall time.

    python -m memjax.benchmarks.plan_check --preset cpu [--only a,b] [--out memjax/records]

Writes <out>/plan-<preset>-<date>-<device>[-<only>].json and .md: the roofline and checkpoint
speed measured before the runs (the plan's scale), each study's predicted and measured
seconds (the wall time of its run in this process, compilation included) and their ratio.
tests/test_plan.py checks the newest record of a study against the plan. Run it on an
otherwise idle machine: the measurements and the runs should see the same load.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from memjax import plan, records
from memjax.plan import roofline
from memjax.reproduce import run_experiment, study_configs
from memjax.files import atomic_path
from memjax.manifest import versions
from memjax.results import RunDir


def check(preset: str, only: list[str] | None, out: Path, runs: Path | None = None) -> dict:
    import jax

    device = jax.devices()[0]
    measured = {"roofline": roofline.measure("cpu" if device.platform == "cpu" else "gpu"),
                "checkpoint": plan.measure_checkpoints()}
    studies = study_configs(preset, only)
    predicted = plan.plan(studies, "this", measured)
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, (module, config) in studies.items():
            start = time.perf_counter()
            run_experiment(name, module, config, RunDir((runs or Path(tmp)) / name))
            seconds = time.perf_counter() - start
            guess = predicted["studies"][name]["seconds"]
            rows[name] = {"predicted_seconds": guess, "measured_seconds": seconds,
                          "ratio": guess / seconds}
            print(f"{name}: predicted {guess:.0f} s, measured {seconds:.0f} s", flush=True)
    record = {"date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "preset": preset,
              "device": {"kind": device.device_kind, "platform": device.platform},
              "versions": versions(), "measured": measured, "studies": rows}
    kind = device.device_kind.lower().replace(" ", "-")
    stem = f"plan-{preset}-{time.strftime('%Y-%m-%d')}-{kind}" + (f"-{'-'.join(only)}"
                                                                 if only else "")
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / f"{stem}.json") as tmp:
        tmp.write_text(json.dumps(record, indent=2) + "\n")
    with atomic_path(out / f"{stem}.md") as tmp:
        tmp.write_text(markdown(record))
    return record


def markdown(record: dict) -> str:
    roof, (latency, rate) = record["measured"]["roofline"], record["measured"]["checkpoint"]
    lines = [f"# memjax plan against measured, {record['preset']} preset",
             "", f"{record['date']}, {record['device']['kind']}, jax "
             f"{record['versions'].get('jax')}; measured before the runs: roofline "
             f"{roof['peak_tflops']:.3g} TFLOP/s, {roof['bandwidth_gbs']:.3g} GB/s; a "
             f"checkpoint {latency:.2f} s + bytes at {rate / 1e6:.0f} MB/s.", "",
             "| study | predicted | measured | predicted / measured |",
             "| --- | ---: | ---: | ---: |"]
    for name, r in record["studies"].items():
        lines.append(f"| {name} | {r['predicted_seconds']:.0f} s | {r['measured_seconds']:.0f} s "
                     f"| {r['ratio']:.2f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="cpu")
    p.add_argument("--only", help="comma-separated studies (default: the paper's)")
    p.add_argument("--out", default=str(records.folder()))
    p.add_argument("--runs", help="keep the study runs in this folder (default: removed)")
    args = p.parse_args()
    only = [n for n in args.only.split(",") if n] if args.only else None
    check(args.preset, only, Path(args.out), Path(args.runs) if args.runs else None)


if __name__ == "__main__":
    main()
