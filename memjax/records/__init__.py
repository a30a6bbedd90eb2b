"""The measurements memjax reads, shipped as package data in this folder, and the one
module that reads them.

- `<date>-<device>[-<cases>].json`: what `memjax bench` measured on a device
  (benchmarks/harness.py): `bench_records()`. memjax.plan takes its rates from them,
  memjax.memory the convolution form it plans for a kind of accelerator.
- `plan-<preset>-<date>-<device>[-<studies>].json`: the plan against measured runs
  (benchmarks/plan_check.py): `plan_checks()`, which tests/test_plan.py holds the plan to.

Each `.json` has its `.md` for people beside it. A record joins them by landing here:
`memjax bench` and plan_check.py write here by default, benchmarks/gpu_check.sh copies the
bench record it makes here. Other measurements (benchmarks/results/) are not read by memjax.
"""
from __future__ import annotations

import json
from importlib import resources
from pathlib import Path


def folder() -> Path:
    """This folder, where the records are read from (and `memjax bench` writes by
    default), wherever memjax is installed."""
    return Path(str(resources.files(__name__)))


def _read(prefix: str) -> list[dict]:
    """The records <prefix>*.json in this folder, oldest first (their names start with the
    date after the prefix), each with "file": its name."""
    found = []
    for entry in sorted(folder().iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".json") and entry.name.startswith(prefix):
            record = json.loads(entry.read_text())
            record["file"] = entry.name
            found.append(record)
    return found


def bench_records() -> list[dict]:
    """Every bench record (`memjax bench`'s <date>-<device>[-<cases>].json), oldest first."""
    return _read("20")


def plan_checks() -> list[dict]:
    """The recorded plans against measured runs (benchmarks/plan_check.py's
    plan-<preset>-*.json), oldest first."""
    return _read("plan-")
