"""`memjax plan`: the work of every study of a preset, and its time on a device, before
anything runs.

Work: each study's `work(config)` yields the programs it compiles (memjax.cost: FLOPs and
bytes from XLA's cost analysis, loops counted as often as they run) and how often it runs
each. Time: each program's FLOPs over the rate that `memjax bench` measured for that kind
of program on the device (`Rate`), plus one measured compile time per program built.

A rate is a benchmark row's achieved FLOP/s: training of an MLP (the recorded case nearest
in FLOPs per model-example), training of the paper's CNN, LASS, loss sensitivity (for
MLP evaluation, a forward and a backward pass; the nearest recorded kind). For the CNN,
evaluation and LASS borrow its training rate: no convolutional search or evaluation is
recorded. Each kind of program a device has no record of is borrowed from the recorded
device nearest in peak rate that has one, scaled by the two devices' datasheet ratio of
the resource that bound the recorded case (memory bandwidth when its bytes over bandwidth
exceeded its FLOPs over peak on the recording device's measured roofline, else matmul
peak); the line says "borrowed from", and each study counts the programs priced from the
device's own records. A program in a precision without a record (bf16 CNN training on a
GPU without a bf16 row) takes the float32 row, scaled by the datasheet ratio of the two precisions'
peaks when compute-bound: the same share of peak is assumed, and the plan says so. Not
counted: data loading, host-side analysis, figures, and checkpoint writes on a named
device (their bytes are shown: as many checkpoints as `memjax run`'s clock writes,
`checkpoints_saved`).
"""
from __future__ import annotations

import dataclasses
import json
import math
import statistics
import sys
from importlib import resources
from typing import Iterable, Iterator

from memjax.cost import Step
from memjax.errors import MemjaxError


@dataclasses.dataclass(frozen=True)
class Device:
    """A device's datasheet: dense matmul FLOP/s by compute precision, memory bytes/s, and
    `matches`: substrings of jax's device_kind that name it in bench records."""

    name: str
    peak: dict
    bandwidth: float
    source: str
    matches: tuple[str, ...] = ()


# float32 is JAX's default matmul precision: TF32 tensor cores on NVIDIA GPUs, one bf16
# pass on TPUs. Sparse figures in datasheets are halved to dense.
DEVICES = {
    "h100": Device("NVIDIA H100 SXM5 80GB", {"float32": 494.7e12, "bfloat16": 989.4e12},
                   3.35e12, "NVIDIA H100 Tensor Core GPU datasheet (SXM5: TF32 989 and BF16 "
                   "1979 TFLOPS with sparsity; 3.35 TB/s HBM3)", ("H100",)),
    "h200": Device("NVIDIA H200 SXM 141GB", {"float32": 494.7e12, "bfloat16": 989.4e12},
                   4.8e12, "NVIDIA H200 Tensor Core GPU datasheet (SXM: TF32 989 and BF16 "
                   "1979 TFLOPS with sparsity; 4.8 TB/s HBM3e)", ("H200",)),
    "a100": Device("NVIDIA A100 SXM 80GB", {"float32": 156e12, "bfloat16": 312e12},
                   2.039e12, "NVIDIA A100 Tensor Core GPU datasheet (SXM 80GB: TF32 156, "
                   "BF16 312 TFLOPS dense; 2,039 GB/s HBM2e)", ("A100",)),
    "tpu-v5e": Device("Google Cloud TPU v5e (one chip)", {"float32": 197e12,
                                                          "bfloat16": 197e12},
                      819e9, "cloud.google.com/tpu/docs/v5e (197 TFLOP/s bf16, 819 GB/s HBM "
                      "per chip)", ("v5 lite", "v5e")),
    "tpu-v4": Device("Google Cloud TPU v4 (one chip)", {"float32": 275e12, "bfloat16": 275e12},
                     1.2e12, "cloud.google.com/tpu/docs/v4 (275 TFLOP/s bf16, 1,200 GB/s HBM "
                     "per chip)", ("TPU v4",)),
}

# The bench cases whose rate times each kind of program (memjax bench; older names too).
KIND_CASES = {
    ("train", "mlp"): ("a_mlp512", "b_mlp4096", "e1_consistency", "f_cscore"),
    ("train", "cnn"): ("c_cnn",),
    ("unrolled", "mlp"): ("g_unrolled",),
    ("evaluate", "mlp"): ("e_loss_sensitivity", "loss_sensitivity"),
    ("search", "mlp"): ("d_lass", "lass"),
    ("evaluate", "cnn"): ("c_cnn",),
    ("search", "cnn"): ("c_cnn",),
}
# A kind without a record on a device takes another kind's rate (the plan says so).
FALLBACK = {("unrolled", "mlp"): ("train", "mlp")}
# memjax's own rows, in order of preference, by compute precision
IMPLS = {"float32": ("jax-ensemble", "jax-lax.map", "vmap"),
         "bfloat16": ("jax-ensemble-bf16", "jax-lax.map-bf16")}


@dataclasses.dataclass(frozen=True)
class Rate:
    """Achieved FLOP/s for one kind of program, and where it comes from."""

    flops_per_s: float
    source: str
    device: str  # whose records it comes from

def _results(prefix: str) -> list[dict]:
    """The records benchmarks/results/<prefix>*.json, oldest first (in date order)."""
    folder = resources.files("memjax.benchmarks") / "results"
    found = []
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".json") and entry.name.startswith(prefix):
            record = json.loads(entry.read_text())
            record["file"] = entry.name
            found.append(record)
    return found


def records() -> list[dict]:
    """Every bench record shipped with memjax (benchmarks/results/<date>-*.json, the files
    `memjax bench` writes), oldest first."""
    return _results("20")


def plan_checks() -> list[dict]:
    """The recorded plans against measured runs (benchmarks/plan_check.py), oldest first."""
    return _results("plan-")


def _profile_of(kind: str) -> str | None:
    return next((name for name, d in DEVICES.items()
                 if any(m.lower() in kind.lower() for m in d.matches)), None)


class Rates:
    """The measured rates a plan uses on one device (see the module docstring)."""

    def __init__(self, device: str, all_records: list[dict] | None = None,
                 measured: dict | None = None):
        """measured: for "this", {"roofline": roofline.measure's, "checkpoint": (seconds,
        bytes/s)} measured earlier (None: measure them now)."""
        all_records = records() if all_records is None else all_records
        if device == "this":
            import jax

            from memjax.benchmarks import roofline

            device_ = jax.devices()[0]
            kind = device_.device_kind
            named = _profile_of(kind)
            own = [r for r in all_records if r["device"]["kind"] == kind]
            if named and not own:
                device = named
            else:
                if not own:
                    raise MemjaxError(f"no bench record of this device ({kind}): run "
                                      f"`memjax bench` here first, or plan for a named "
                                      f"device ({', '.join(DEVICES)})")
                # The same kind of machine runs faster or slower with its load and clock:
                # its roofline measured now scales the recorded rates.
                measured = measured or {
                    "roofline": roofline.measure("cpu" if device_.platform == "cpu" else "gpu"),
                    "checkpoint": measure_checkpoints()}
                self.measured = measured
                self.now, self.checkpoint = measured["roofline"], tuple(measured["checkpoint"])
                self.name, self.profile, self.records = f"this ({kind})", None, own
                self.scale_note = (f"rates from this machine's records, scaled by its "
                                   f"roofline measured now: {self.now['peak_tflops']:.3g} "
                                   f"TFLOP/s, {self.now['bandwidth_gbs']:.3g} GB/s; "
                                   f"checkpoints {self.checkpoint[0]:.2f} s + "
                                   f"{self.checkpoint[1] / 1e6:.0f} MB/s")
                return
        if device not in DEVICES:
            raise MemjaxError(f"unknown device {device!r}; known: this, {', '.join(DEVICES)}")
        self.name, self.profile, self.measured = device, DEVICES[device], None
        self.checkpoint = None  # (another machine's disk is unknown: bytes shown, not timed)
        recorded = {}
        for r in all_records:
            name = _profile_of(r["device"]["kind"])
            if name:
                recorded.setdefault(name, []).append(r)
        if not recorded:
            raise MemjaxError("no bench record of any accelerator to plan from")
        # Each kind of program takes the rate of the nearest device (in peak rate) whose
        # records hold it: the device's own first.
        self.sources = sorted(recorded, key=lambda n: (n != device, abs(math.log(
            DEVICES[n].peak["float32"] / self.profile.peak["float32"]))))
        self.by_source = recorded
        self.records = recorded[self.sources[0]]
        self.scale_note = None if device in recorded else (
            f"no record of {device}: rates borrowed from {self.sources[0]}'s records, scaled "
            f"by the datasheet ratio of the resource that bound each case")

    def _rows(self, kind: str, model: str, precision: str) -> tuple[str | None, list]:
        """(the source device, its rows for this kind of program): the nearest source whose
        records hold the kind, in `precision` where it has that, else float32."""
        cases = KIND_CASES[(kind, model)]
        for source in self.sources if self.profile else [None]:
            records = self.records if source is None else self.by_source[source]
            for impls in (IMPLS[precision], IMPLS["float32"]):
                rows = [(rec, row) for rec in reversed(records) for row in rec["rows"]
                        if row["case"] in cases and row.get("impl") in impls
                        and row.get("tflops")]
                if rows:
                    return source, rows
        raise MemjaxError(f"no bench record on {self.name} for {kind} of a {model} "
                          f"(cases {', '.join(cases)})")

    def rate(self, step: Step) -> Rate:
        try:
            source, rows = self._rows(step.kind, step.model, step.precision)
        except MemjaxError:
            if (step.kind, step.model) not in FALLBACK:
                raise
            kind, model = FALLBACK[(step.kind, step.model)]
            rate = self.rate(dataclasses.replace(step, kind=kind, model=model))
            return Rate(rate.flops_per_s, f"{rate.source}; no {step.kind} record here",
                        rate.device)
        per_example = step.cost.flops / max(step.per_example, 1)
        record, row = min(rows, key=lambda rr: abs(math.log(
            rr[1].get("flops_per_model_example", per_example) / max(per_example, 1))))
        flops = row["tflops"] * 1e12
        where = f"{row['case']} {row['impl']} ({record['file']})"
        if source is not None and source != self.name:
            where = f"borrowed from {source}: {where}"
        measured = "bfloat16" if row.get("impl", "").endswith("bf16") else "float32"
        bound = "compute"
        roof = record.get("roofline")
        if row.get("bytes_per_model_example") and roof:
            if (row["bytes_per_model_example"] / roof["bandwidth_gbs"] / 1e9
                    > row["flops_per_model_example"] / roof["peak_tflops"] / 1e12):
                bound = "bandwidth"
        if self.profile is None:  # this machine: its records, scaled to its roofline now
            # by the resource that slowed down more (on a CPU a small model's weights sit
            # in cache, so the roofline's bound says little about what limits it)
            factor = min(self.now[k] / roof[k] for k in ("peak_tflops", "bandwidth_gbs"))
            why = "roofline now / recorded"
        elif bound == "bandwidth":
            factor = self.profile.bandwidth / DEVICES[source].bandwidth
            why = "datasheet ratio"
        else:
            factor = self.profile.peak[step.precision] / DEVICES[source].peak[measured]
            why = "datasheet ratio"
        if factor != 1:
            where += f" x{factor:.2f} ({bound}-bound, {why})"
        if measured != step.precision:
            where += (f"; no {step.precision} record: the {measured} share of peak assumed, "
                      f"unmeasured" if self.profile and bound == "compute" else
                      f"; no {step.precision} record: the {measured} rate assumed, unmeasured")
        return Rate(flops * factor, where, source or self.name)

    def compile_seconds(self) -> float:
        """The median compile time of memjax's recorded training programs, on the nearest
        device that recorded any (the device's own first)."""
        for records in ([self.records] if self.profile is None
                        else [self.by_source[n] for n in self.sources]):
            times = [row["compile_s"] for rec in records for row in rec["rows"]
                     if row.get("compile_s")]
            if times:
                return statistics.median(times)
        return 0.0


def measure_checkpoints() -> tuple[float, float]:
    """(seconds per save, bytes per second) of orbax saving float32 arrays here, fitted to
    a 4 MB and a 64 MB save (what a checkpoint after each epoch costs on this disk)."""
    import tempfile
    import time
    from pathlib import Path

    import numpy as np
    import orbax.checkpoint as ocp

    sizes, seconds = (2 ** 22, 2 ** 26), []
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp, ocp.StandardCheckpointer() as saver:
        for i, size in enumerate(sizes):
            tree = {"w": rng.standard_normal(size // 4, dtype=np.float32)}
            start = time.perf_counter()
            saver.save(Path(tmp) / str(i), tree)
            saver.wait_until_finished()
            seconds.append(time.perf_counter() - start)
    rate = (sizes[1] - sizes[0]) / max(seconds[1] - seconds[0], 1e-3)
    return max(seconds[0] - sizes[0] / rate, 0.0), rate


def checkpoints_saved(phase_seconds: float, minutes: float = 10.0) -> int:
    """How many checkpoints a phase of `phase_seconds` writes under `memjax run`'s clock
    (memjax.checkpoint.SaveClock, --checkpoint-minutes, default 10) when no earlier phase
    left work unsaved: one each `minutes`, and one at its end once what followed the last
    reached half of that."""
    full, rest = divmod(phase_seconds, 60.0 * minutes)
    return int(full) + (rest >= 30.0 * minutes)


def plan_steps(steps: Iterable[Step], rates: Rates) -> dict:
    """{"flops", "bytes", "seconds", "compile_seconds", "checkpoint_seconds",
    "checkpoint_bytes", "probes", "members", "steps": [...]} of one study's programs on the
    rates' device (checkpoint writes timed on this machine only)."""
    compile_s = rates.compile_seconds()
    out = {"flops": 0.0, "bytes": 0.0, "seconds": 0.0, "compile_seconds": 0.0,
           "checkpoint_seconds": 0.0, "checkpoint_bytes": 0.0, "probes": 0.0, "members": 0,
           "steps": []}
    for step in steps:
        rate = rates.rate(step)
        flops, seconds = step.cost.flops * step.runs, step.cost.flops * step.runs / rate.flops_per_s
        out["flops"] += flops
        out["bytes"] += step.cost.bytes * step.runs
        out["seconds"] += seconds + compile_s * step.programs
        out["compile_seconds"] += compile_s * step.programs
        out["probes"] += step.probes * step.runs
        if step.kind == "train":
            saves = checkpoints_saved(seconds / max(step.programs, 1)) * step.programs
            out["checkpoint_bytes"] += step.checkpoint_bytes * saves
            out["members"] += step.members * step.programs
            if rates.checkpoint is not None and step.checkpoint_bytes:
                latency, rate_b = rates.checkpoint
                saving = saves * (latency + step.checkpoint_bytes / rate_b)
                out["checkpoint_seconds"] += saving
                out["seconds"] += saving
        out["steps"].append({"name": step.name, "kind": step.kind, "model": step.model,
                             "runs": step.runs, "flops": flops, "seconds": seconds,
                             "rate_tflops": rate.flops_per_s / 1e12, "rate_from": rate.source,
                             "rate_device": rate.device})
    # the programs whose rate comes from the planned device's own records
    out["measured_here"] = sum(p["rate_device"] == rates.name for p in out["steps"])
    return out


def plan(configs: dict, device: str = "h200", measured: dict | None = None,
         progress: bool = True) -> dict:
    """The plan of studies {name: (module, config)} on `device` (DEVICES or "this"; see
    Rates for `measured`): {"device", "note", "measured", "studies": {name:
    plan_steps(...)}, "total_seconds"}. progress: a bar on stderr over the studies, naming
    the study and its programs counted so far (gone when the plan is done)."""
    from tqdm.auto import tqdm

    studies = {}
    # Counting lowers every program from abstract arrays: 20-40 s for the cpu presets.
    with tqdm(total=len(configs), unit="study", leave=False, disable=not progress,
              file=sys.stderr, desc="finding the rates") as bar:
        rates = Rates(device, measured=measured)  # ("this": measures its roofline, ~5 s)
        for name, (module, config) in configs.items():
            bar.set_description(f"counting {name}'s programs")
            studies[name] = plan_steps(_counted(module.work(config), bar), rates)
            bar.update()
    return {"device": rates.name, "note": rates.scale_note, "measured": rates.measured,
            "studies": studies, "total_seconds": sum(s["seconds"] for s in studies.values())}


def _counted(steps: Iterable[Step], bar) -> Iterator[Step]:
    """`steps`, showing on `bar` how many have been counted (a study's `work` that yields
    its programs one by one shows each as it is counted)."""
    for n, step in enumerate(steps, 1):
        bar.set_postfix_str(f"{n} counted: {step.name}")
        yield step


def _si(value: float, unit: str) -> str:
    for factor, prefix in ((1e18, "E"), (1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"),
                           (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.3g} {prefix}{unit}"
    return f"{value:.3g} {unit}"


def duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def format_plan(result: dict, verbose: bool = False) -> str:
    """The plan as a table: one line per study (and per program with verbose)."""
    lines = [f"plan on {result['device']}" + (f" ({result['note']})" if result["note"] else "")]
    lines.append(f"  {'study':<14} {'time':>9} {'FLOP':>10} {'bytes':>10} {'LASS probes':>12} "
                 f"{'checkpoints':>12}  {'rates measured here':>19}")
    for name, s in result["studies"].items():
        lines.append(f"  {name:<14} {duration(s['seconds']):>9} {_si(s['flops'], ''):>10} "
                     f"{_si(s['bytes'], 'B'):>10} {_si(s['probes'], ''):>12} "
                     f"{_si(s['checkpoint_bytes'], 'B'):>12}  "
                     f"{s['measured_here']:>8} of {len(s['steps'])} programs")
        if verbose:
            for p in s["steps"]:
                lines.append(f"      {p['name']}: {p['runs']} runs, {_si(p['flops'], 'FLOP')}, "
                             f"{duration(p['seconds'])} at {p['rate_tflops']:.3g} TFLOP/s "
                             f"from {p['rate_from']}")
    timed = "and checkpoint writes " if result["device"].startswith("this") else ""
    lines.append(f"  {'total':<14} {duration(result['total_seconds']):>9}  (compilation "
                 f"{timed}included; data loading and host-side analysis not)")
    if result["studies"] and result["total_seconds"] > 0:
        name, s = max(result["studies"].items(), key=lambda kv: kv[1]["seconds"])
        p = max(s["steps"], key=lambda p: p["seconds"])
        lines.append(f"  longest: {name}, {s['seconds'] / result['total_seconds']:.0%} of the "
                     f"total; its {p['name']} takes {duration(p['seconds'])} at "
                     f"{p['rate_tflops']:.3g} TFLOP/s ({p['rate_from']})")
    return "\n".join(lines)
