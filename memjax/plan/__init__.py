"""`memjax plan`: the work of every study of a preset, and its time on a device, before
anything runs.

Work: each study's `work(config)` yields the programs it compiles (memjax.cost: FLOPs and
bytes from XLA's cost analysis, loops counted as often as they run) and how often it runs
each. Time: each program's FLOPs over the rate that `memjax bench` measured for that kind
of program on the device (`Rates`, memjax.plan.rates: from the bench records of
memjax.records, a device without its own borrowing from the nearest by the datasheets of
memjax.plan.devices), plus one measured compile time per program built. Each study counts
the programs priced from the device's own records. Checkpoint writes: as many as `memjax
run`'s clock writes (`checkpoints_saved`), their bytes shown, timed by the disk of this
machine or a bench record's (Rates.checkpoint; not timed where no record has one). Not
counted: data loading, host-side analysis, figures.

The package, one job a module: devices.py (datasheets), rates.py (the rate model),
roofline.py (a device's matmul peak and memory bandwidth, measured: what scales this
machine's recorded rates, and what `memjax bench` reports shares of); the plan itself here.
"""
from __future__ import annotations

import sys
from typing import Iterable, Iterator

from memjax.cost import Step, phase_steps
from memjax.plan.devices import DEVICES, Device
from memjax.plan.rates import Rate, Rates, device_named, measure_checkpoints

__all__ = ["DEVICES", "Device", "Rate", "Rates", "checkpoints_saved", "duration",
           "format_plan", "measure_checkpoints", "plan", "plan_steps"]


def checkpoints_saved(phase_seconds: float, minutes: float = 10.0) -> int:
    """How many checkpoints a phase of `phase_seconds` writes under `memjax run`'s clock
    (memjax.checkpoint.SaveClock, --checkpoint-minutes, default 10) when no earlier phase
    left work unsaved: one each `minutes`, and one at its end once what followed the last
    reached half of that."""
    full, rest = divmod(phase_seconds, 60.0 * minutes)
    return int(full) + (rest >= 30.0 * minutes)


def plan_steps(steps: Iterable[Step], rates: Rates) -> dict:
    """{"flops", "bytes", "seconds", "compile_seconds", "checkpoint_seconds",
    "checkpoint_bytes", "probes", "member_count", "steps": [...]} of one study's programs on the
    rates' device (checkpoint writes timed where `rates.checkpoint` is known)."""
    compile_s = rates.compile_seconds()
    out = {"flops": 0.0, "bytes": 0.0, "seconds": 0.0, "compile_seconds": 0.0,
           "checkpoint_seconds": 0.0, "checkpoint_bytes": 0.0, "probes": 0.0, "member_count": 0,
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
            out["member_count"] += step.member_count * step.programs
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
    Rates for `measured`): {"device", "note", "measured", "checkpoints_from" (whose disk
    times the checkpoint writes; None: not timed), "studies": {name: plan_steps(...)},
    "total_seconds"}. progress: a bar on stderr over the studies, naming
    the study and its programs counted so far (gone when the plan is done)."""
    from tqdm.auto import tqdm

    studies = {}
    device = device_named(device)  # (a wrong name is told before the progress bar shows)
    # Counting lowers every program from abstract arrays: 20-40 s for the cpu presets.
    with tqdm(total=len(configs), unit="study", leave=False, disable=not progress,
              file=sys.stderr, desc="finding the rates") as bar:
        rates = Rates(device, measured=measured)  # ("this": measures its roofline, ~5 s)
        for name, (module, config) in configs.items():
            bar.set_description(f"counting {name}'s programs")
            studies[name] = plan_steps(_counted(study_steps(module, config), bar), rates)
            bar.update()
    return {"device": rates.name, "note": rates.scale_note, "measured": rates.measured,
            "checkpoints_from": rates.checkpoint_from, "studies": studies, "total_seconds": sum(s["seconds"] for s in studies.values())}


def study_steps(module, config) -> Iterator[Step]:
    """The programs of a study's declared phases (`module.phases(config)`), as
    memjax.cost.phase_steps counts them."""
    for phase in module.phases(config):
        yield from phase_steps(phase)


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
    source = result.get("checkpoints_from")
    included = ("compilation included; not: checkpoint writes (no bench record has timed a "
                "disk), data loading, host-side analysis" if source is None else
                "compilation and checkpoint writes" + ("" if source in ("this", result["device"])
                                                       else f" (at {source}'s recorded disk rate)")
                + " included; data loading and host-side analysis not")
    lines.append(f"  {'total':<14} {duration(result['total_seconds']):>9}  ({included})")
    if result["studies"] and result["total_seconds"] > 0:
        name, s = max(result["studies"].items(), key=lambda kv: kv[1]["seconds"])
        p = max(s["steps"], key=lambda p: p["seconds"])
        lines.append(f"  longest: {name}, {s['seconds'] / result['total_seconds']:.0%} of the "
                     f"total; its {p['name']} takes {duration(p['seconds'])} at "
                     f"{p['rate_tflops']:.3g} TFLOP/s ({p['rate_from']})")
    return "\n".join(lines)
