"""The rate model: how fast a device runs each kind of program, from bench records.

A rate is a benchmark row's achieved FLOP/s: training of an MLP (the recorded case nearest
in FLOPs per model-example), training of the paper's CNN, LASS, loss sensitivity (for
MLP evaluation, a forward and a backward pass; the nearest recorded kind). For the CNN,
evaluation and LASS borrow its training rate: no convolutional search or evaluation is
recorded. ResNet-9 is timed by its `resnet9` rows (evaluation and LASS too), where no
device has one by the paper CNN's; every other model (ResNet-18, users' models) as the
paper's CNN (memjax.models.plan_kind): no bench row of its own yet. Of a kind's rows, those
of the convolution form the program runs in (Step.conv_form) are taken where the rows name
one. Each kind of program a device has no record of is borrowed from the recorded device
nearest in peak rate that has one, scaled by the two devices' datasheet ratio of the
resource that bound the recorded case (memory bandwidth when its bytes over bandwidth
exceeded its FLOPs over peak on the recording device's measured roofline, else matmul
peak); the rate's source says "borrowed from". A program in a precision without a record
(bf16 CNN training on a GPU without a bf16 row) takes the float32 row, scaled by the
datasheet ratio of the two precisions' peaks when compute-bound: the same share of peak is
assumed, and the source says so. On "this" machine: its own records, scaled by its
roofline measured now, and checkpoint writes timed on its disk (`measure_checkpoints`). On
a named device, checkpoint writes are timed by the cost a bench record measured on its
disk (`memjax bench` records one), the nearest device's where its own records have none
(`checkpoint_from` says whose), and not timed where no record has one.
"""
from __future__ import annotations

import dataclasses
import math
import statistics

import jax

from memjax.cost import Step
from memjax.errors import MemjaxError
from memjax.models.registry import plan_kind
from memjax.plan import roofline
from memjax.plan.devices import DEVICES, device_name
from memjax.records import bench_records

# The bench cases whose rate times each kind of program (memjax bench; older names too).
KIND_CASES = {
    ("train", "mlp"): ("a_mlp512", "b_mlp4096", "e1_consistency", "f_cscore"),
    ("train", "cnn"): ("c_cnn",),
    ("unrolled", "mlp"): ("g_unrolled",),
    ("evaluate", "mlp"): ("e_loss_sensitivity", "loss_sensitivity"),
    ("search", "mlp"): ("d_lass", "lass"),
    ("evaluate", "cnn"): ("c_cnn",),
    ("search", "cnn"): ("c_cnn",),
    ("train", "resnet9"): ("resnet9",),
    ("evaluate", "resnet9"): ("resnet9",),
    ("search", "resnet9"): ("resnet9",),
}
# A kind no device has a record of takes another kind's rate (the plan says so).
FALLBACK = {("unrolled", "mlp"): ("train", "mlp"),
            **{(kind, "resnet9"): (kind, "cnn") for kind in ("train", "evaluate", "search")}}
# memjax's own rows (their precision: _precision)
IMPLS = ("jax-ensemble", "jax-lax.map", "vmap", "jax-ensemble-bf16", "jax-lax.map-bf16")


def _precision(row: dict) -> str:
    """A bench row's compute precision: its compute_dtype, else its impl's -bf16 suffix."""
    return row.get("compute_dtype") or (
        "bfloat16" if row.get("impl", "").endswith("bf16") else "float32")


@dataclasses.dataclass(frozen=True)
class Rate:
    """Achieved FLOP/s for one kind of program, and where it comes from."""

    flops_per_s: float
    source: str
    device: str  # whose records it comes from


def device_named(device: str) -> str:
    """`device` as Rates knows it ("this" or a DEVICES name, in any case), or a one-line
    error naming the known ones."""
    if device.lower() != "this" and device.lower() not in DEVICES:
        raise MemjaxError(f"unknown device {device!r}; known: this, {', '.join(DEVICES)}")
    return device.lower()


class Rates:
    """The measured rates a plan uses on one device (see the module docstring)."""

    def __init__(self, device: str, all_records: list[dict] | None = None,
                 measured: dict | None = None):
        """measured: for "this", {"roofline": roofline.measure's, "checkpoint": (seconds,
        bytes/s)} measured earlier (None: measure them now)."""
        device = device_named(device)
        all_records = bench_records() if all_records is None else all_records
        if device == "this":
            device_ = jax.devices()[0]
            kind = device_.device_kind
            named = device_name(kind)
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
                self.checkpoint_from = "this"
                self.name, self.profile, self.records = f"this ({kind})", None, own
                self.scale_note = (f"rates from this machine's records, scaled by its "
                                   f"roofline measured now: {self.now['peak_tflops']:.3g} "
                                   f"TFLOP/s, {self.now['bandwidth_gbs']:.3g} GB/s; "
                                   f"checkpoints {self.checkpoint[0]:.2f} s + "
                                   f"{self.checkpoint[1] / 1e6:.0f} MB/s")
                return
        self.name, self.profile, self.measured = device, DEVICES[device], None
        recorded = {}
        for r in all_records:
            name = device_name(r["device"]["kind"])
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
        self.checkpoint, self.checkpoint_from = self._recorded_checkpoint()
        self.scale_note = None if device in recorded else (
            f"no record of {device}: rates borrowed from {self.sources[0]}'s records, scaled "
            f"by the datasheet ratio of the resource that bound each case")

    def _recorded_checkpoint(self) -> tuple[tuple[float, float] | None, str | None]:
        """((seconds a save, bytes/s), the device) of the newest record with a checkpoint
        measurement, the nearest device's first; (None, None): none has one, and checkpoint
        bytes are shown, not timed."""
        for source in self.sources:
            for record in reversed(self.by_source[source]):
                if record.get("checkpoint"):
                    c = record["checkpoint"]
                    return (c["seconds_per_save"], c["bytes_per_s"]), source
        return None, None

    def _rows(self, kind: str, model: str, precision: str) -> tuple[str | None, list]:
        """(the source device, its rows for this kind of program): the nearest source whose
        records hold the kind, in `precision` where it has that, else float32."""
        cases = KIND_CASES[(kind, model)]
        for source in self.sources if self.profile else [None]:
            records = self.records if source is None else self.by_source[source]
            for wanted in (precision, "float32"):
                rows = [(rec, row) for rec in reversed(records) for row in rec["rows"]
                        if row["case"] in cases and row.get("impl") in IMPLS
                        and _precision(row) == wanted and row.get("tflops")]
                if rows:
                    return source, rows
        raise MemjaxError(f"no bench record on {self.name} for {kind} of a {model} "
                          f"(cases {', '.join(cases)})")

    def rate(self, step: Step) -> Rate:
        # ResNet-18 and users' models are timed at the paper's CNN's rate (plan_kind)
        step = dataclasses.replace(step, model=plan_kind(step.model))
        try:
            source, rows = self._rows(step.kind, step.model, step.precision)
        except MemjaxError:
            if (step.kind, step.model) not in FALLBACK:
                raise
            kind, model = FALLBACK[(step.kind, step.model)]
            rate = self.rate(dataclasses.replace(step, kind=kind, model=model))
            missing = step.kind if model == step.model else f"{step.model} {step.kind}"
            return Rate(rate.flops_per_s, f"{rate.source}; no {missing} record here",
                        rate.device)
        # rows of the form the program convolves in, where any is recorded (rows that
        # name no form, the older records', count as any)
        formed = [rr for rr in rows if rr[1].get("conv_form") in (None, step.conv_form)]
        other_form = not formed
        rows = formed or rows
        per_example = step.cost.flops / max(step.per_example, 1)
        record, row = min(rows, key=lambda rr: abs(math.log(
            rr[1].get("flops_per_model_example", per_example) / max(per_example, 1))))
        flops = row["tflops"] * 1e12
        where = f"{row['case']} {row['impl']} ({record['file']})"
        if other_form:
            where += f", {row['conv_form']} form (no {step.conv_form} row)"
        if source is not None and source != self.name:
            where = f"borrowed from {source}: {where}"
        measured = _precision(row)
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
