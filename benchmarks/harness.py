"""`memjax bench`: run the cases of every module in BENCHMARK_MODULES, add achieved TFLOP/s
and the share of the measured roofline, compare against the baselines and write
<out>/<date>-<device>.json and .md (device, versions, date, and the cost of a checkpoint
write on its disk: what `memjax plan` times checkpoints by on that device)."""
from __future__ import annotations

import importlib
import re
import time
from pathlib import Path

from memjax import records
from memjax.benchmarks import BENCHMARK_MODULES
from memjax.errors import MemjaxError
from memjax.plan import roofline
from memjax.plan.rates import measure_checkpoints

PRESETS = ("cpu", "gpu")
# the targets on one H100/H200: case prefix -> (baseline, minimum ratio)
TARGETS = {"a": ("best torch ensemble", 2.5), "b": ("best torch ensemble", 1.7),
           "c": ("torch-loop", 2.0), "d": ("torch-loop", 5.0)}
# in bf16 compute (float32 master weights) on both sides: the MLPs' weight reads bound
# their steps, and bf16 halves what the matmuls read
BF16_TARGETS = {"a": ("torch-bmm-bf16", 2.0), "b": ("torch-bmm-bf16", 1.4)}


def collect(names=BENCHMARK_MODULES) -> tuple[dict, list[str]]:
    """({case: fn(preset) -> rows}, notes on modules that are not there)."""
    cases, notes = {}, []
    for name in names:
        full = f"memjax.benchmarks.{name}"
        try:
            module = importlib.import_module(full)
        except ModuleNotFoundError as e:
            if e.name != full:
                raise
            notes.append(f"benchmark module {full} not found: its cases are skipped")
            continue
        cases.update(module.CASES)
    return cases, notes


def _versions() -> dict:
    from memjax.manifest import versions

    out = versions()
    try:
        import torch

        out["torch"] = torch.__version__
    except ImportError:
        pass
    return out


def device_name() -> str:
    import jax

    kind = jax.devices()[0].device_kind
    return re.sub(r"[^a-z0-9]+", "-", kind.lower()).strip("-") or "device"


def _enrich(row: dict, peaks: dict) -> dict:
    rate, flops = row.get("model_examples_per_s"), row.get("flops_per_model_example")
    if rate and flops and "tflops" not in row:
        row["tflops"] = rate * flops / 1e12
    if row.get("tflops"):
        nbytes = row.get("bytes_per_model_example")
        intensity = flops / nbytes if flops and nbytes else None
        row["roofline_share"] = roofline.share(row["tflops"], intensity, peaks["peak_tflops"],
                                               peaks["bandwidth_gbs"])
    return row


def _best(rows, keep) -> dict | None:
    found = [r for r in rows if keep(r["impl"]) and r.get("model_examples_per_s")]
    return max(found, key=lambda r: r["model_examples_per_s"]) if found else None


def _entry(best: dict, baselines: dict, target: tuple[str, float] | None, preset: str) -> dict:
    entry = {"best_jax": best["impl"]}
    for label, base in baselines.items():
        if base:
            entry[f"x {label}"] = best["model_examples_per_s"] / base["model_examples_per_s"]
    if preset == "gpu" and target and f"x {target[0]}" in entry:
        entry["target"] = f">= {target[1]}x {target[0]}"
        entry["target_met"] = entry[f"x {target[0]}"] >= target[1]
    return entry


def compare(rows: list[dict], preset: str) -> dict:
    """Per case: the best JAX ensemble against the JAX one-at-a-time loop, the PyTorch loop
    and the best PyTorch ensemble, in float32 (TF32 matmuls); with its target on the gpu
    preset. Where a case has bf16 rows on both sides (the MLPs' jax-ensemble-bf16 and
    torch-bmm-bf16), its entry's "bf16" holds the same for them: the best bf16 JAX row
    against the PyTorch bf16 rows and against the float32 best (what bf16 buys), with its
    BF16_TARGETS target on the gpu preset."""
    out = {}
    for case in dict.fromkeys(r["case"] for r in rows):
        mine = [r for r in rows if r["case"] == case]
        jax_best = _best(mine, lambda i: i.startswith("jax-") and i != "jax-one-at-a-time"
                         and "bf16" not in i)
        if not jax_best:
            continue
        baselines = {
            "jax-one-at-a-time": _best(mine, lambda i: i == "jax-one-at-a-time"),
            "plain-jax": _best(mine, lambda i: i == "plain-jax"),
            "torch-loop": _best(mine, lambda i: i == "torch-loop"),
            "best torch ensemble": _best(mine, lambda i: i.startswith("torch-")
                                         and i != "torch-loop" and "bf16" not in i),
        }
        prefix = case.split("_")[0]
        entry = _entry(jax_best, baselines, TARGETS.get(prefix), preset)
        bf16_best = _best(mine, lambda i: i.startswith("jax-") and "bf16" in i)
        bf16_torch = {r["impl"]: r for r in mine if r["impl"].startswith("torch-")
                      and "bf16" in r["impl"] and r.get("model_examples_per_s")}
        if bf16_best and bf16_torch:
            entry["bf16"] = _entry(bf16_best, {**bf16_torch, jax_best["impl"]: jax_best},
                                   BF16_TARGETS.get(prefix), preset)
        out[case] = entry
    return out


def record_stem(date: str, device: str, preset: str, platform: str,
                cases: list[str] | None) -> str:
    """The record's file name without its suffix: <date>-<device>[-<preset> where it is not
    the device's own][-<case>-<case>... for a partial run, which never replaces the record of
    a whole one]. Letters, digits, ".", "_" and "-" only, as the device tool returns."""
    stem = f"{date}-{device}" + (f"-{preset}" if platform != preset else "")
    return stem + ("-" + "-".join(cases) if cases else "")


def run(preset: str, only: list[str] | None = None, out_dir: str | Path | None = None,
        log=print) -> dict:
    """Run the benchmark (every case, or `only` those); returns the record written to
    <out_dir>/<date>-<device>[-<preset>][-<cases>].json and .md (-<preset> when the preset
    is not the device's own, -<cases> when `only` limits the run); out_dir None: the
    records memjax reads (memjax.records.folder())."""
    if preset not in PRESETS:
        raise MemjaxError(f"unknown bench preset {preset!r}; known: {', '.join(PRESETS)}")
    cases, notes = collect()
    unknown = set(only or ()) - set(cases)
    if unknown:
        raise MemjaxError(f"unknown bench case(s) {sorted(unknown)}; known: {', '.join(cases)}")
    out_dir = records.folder() if out_dir is None else Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise MemjaxError(f"cannot write to {out_dir}: {e.strerror or e}") from None
    for note in notes:
        log(f"note: {note}")
    started = time.time()
    peaks = roofline.measure(preset)
    log(f"roofline: {peaks['peak_tflops']:.2f} TFLOP/s float32 matmul, "
        f"{peaks['bandwidth_gbs']:.0f} GB/s")
    save_s, save_rate = measure_checkpoints()  # (what `memjax plan` times checkpoints by)
    checkpoint = {"seconds_per_save": save_s, "bytes_per_s": save_rate}
    log(f"checkpoint writes: {save_s:.2f} s a save + {save_rate / 1e6:.0f} MB/s")
    import jax

    platform = "cpu" if jax.devices()[0].platform == "cpu" else "gpu"
    partial = [name for name in cases if name in only] if only else None
    stem = out_dir / record_stem(time.strftime('%Y-%m-%d', time.gmtime()), device_name(), preset,
                                 platform, partial)
    rows: list[dict] = []
    case_wall: dict[str, float] = {}

    def write() -> dict:
        from memjax.files import atomic_path, to_json

        record = {"date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
                  "preset": preset, "device": {"kind": jax.devices()[0].device_kind,
                                               "platform": jax.devices()[0].platform,
                                               "count": jax.device_count()},
                  "versions": _versions(), "roofline": peaks, "checkpoint": checkpoint,
                  "rows": rows,
                  "comparison": compare(rows, preset), "notes": notes,
                  "case_wall_s": case_wall,
                  "wall_s": round(time.time() - started, 1)}
        for suffix, text in ((".json", to_json(record) + "\n"), (".md", markdown(record))):
            with atomic_path(stem.with_suffix(suffix)) as tmp:
                tmp.write_text(text)
        record["files"] = [str(stem.with_suffix(".json")), str(stem.with_suffix(".md"))]
        return record

    # Written after every case, so a run cut short keeps what it measured.
    record = write()
    for name, fn in cases.items():
        if only and name not in only:
            continue
        log(f"case {name} ...")
        case_started = time.time()
        try:
            got = fn(preset)
        except Exception as e:  # one broken case does not lose the others
            got = [{"case": name, "impl": "-", "members": None, "model_examples_per_s": None,
                    "seconds": None, "note": f"failed: {type(e).__name__}: {e}"[:300]}]
        rows += [_enrich(dict(r), peaks) for r in got]
        # set-up, compilation and warm-up included: what a case costs on this device
        case_wall[name] = round(time.time() - case_started, 1)
        log(f"case {name}: {case_wall[name]:.0f} s")
        record = write()
    return record


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _checkpoint_text(record: dict) -> str:
    c = record.get("checkpoint")  # (records before 2026-12-06 have none)
    return "" if not c else (f" Checkpoint writes: {c['seconds_per_save']:.2f} s a save + "
                             f"{c['bytes_per_s'] / 1e6:.0f} MB/s.")


def markdown(record: dict) -> str:
    d, v = record["device"], record["versions"]
    lines = [f"# memjax bench, preset {record['preset']}: {d['kind']} x {d['count']}",
             "", f"{record['date']}; " + ", ".join(f"{k} {x}" for k, x in v.items()),
             "", f"Roofline measured: {record['roofline']['peak_tflops']:.2f} TFLOP/s "
                 f"(float32 matmul, default precision), "
                 f"{record['roofline']['bandwidth_gbs']:.0f} GB/s." + _checkpoint_text(record),
             "",
             "| case | impl | members | model-examples/s | TFLOP/s | roofline | s | note |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |"]
    for r in record["rows"]:
        share = r.get("roofline_share")
        lines.append(f"| {r['case']} | {r['impl']} | {_fmt(r.get('members'), '')} | "
                     f"{_fmt(r.get('model_examples_per_s'), ',.0f')} | "
                     f"{_fmt(r.get('tflops'), '.3g')} | "
                     f"{'-' if share is None else f'{100 * share:.1f} %'} | "
                     f"{_fmt(r.get('seconds'), '.3g')} | {r.get('note', '')}"
                     + (f"; {r['models_per_hour']:,.2f} models/hour"
                        if r.get("models_per_hour") else "") + " |")
    lines += ["", "| case | best JAX | ratios | target |", "| --- | --- | --- | --- |"]
    for case, entry in record["comparison"].items():
        for label, c in ((case, entry), (f"{case} (bf16)", entry.get("bf16"))):
            if not c:
                continue
            ratios = ", ".join(f"{v:.2f}{k}" for k, v in c.items() if k.startswith("x "))
            target = c.get("target", "")
            if target:
                target += " (met)" if c["target_met"] else " (MISSED)"
            lines.append(f"| {label} | {c['best_jax']} | {ratios} | {target} |")
    lines += [f"- {n}" for n in record["notes"]]
    return "\n".join(lines) + "\n"
