"""`memjax reproduce`: run every registered study at one preset into OUT/<name>/, skipping
those whose manifest says finished, then write OUT/report.md.

The report holds, for each study, its figures, wall time and throughput, and the evidence
lines its `evidence(summary)` computes from the run's data; and for each headline claim of
PAPER.md a verdict gathered from those lines (supported / not supported / mixed / not
tested). Nothing in the report is a fixed sentence about the results.
"""
from __future__ import annotations

import dataclasses
import json
import os
import traceback
from pathlib import Path
from typing import Callable

from memjax.config import override, to_dict
from memjax.errors import MemjaxError
from memjax.files import atomic_path
from memjax.manifest import differences_from_run, listed, read_manifest
from memjax.results import RunDir
from memjax.studies import experiment_of, registered

# PAPER.md, "Headline claims the tool must be able to show" (the claims, not the verdicts).
CLAIMS = {
    1: "Networks behave qualitatively differently on real data and on noise: they do not "
       "simply memorize real data.",
    2: "Networks learn simple, shared patterns first and only later memorize noise.",
    3: "Regularizers (dropout above all, dropout + adversarial training best) slow the "
       "memorization of noise without hurting generalization on real data.",
}


def default_names(out: Path | None = None) -> list[str]:
    """The paper's studies, and any other study already run in `out`."""
    return [n for n, module in registered().items() if experiment_of(module) is not None
            or out is not None and (out / n / "manifest.json").exists()]


def check_config(module, config) -> None:
    """Everything the config alone shows wrong (the study's `check`, which validates its
    nested configs too, and phases with one id), before a run directory is made or
    anything trained."""
    module.check(config)
    ids = [phase.id for phase in module.phases(config)]
    twice = sorted({i for i in ids if ids.count(i) > 1})
    if twice:
        raise MemjaxError(f"these settings give two phases the id {twice[0]!r} (a value "
                          f"listed twice?); each phase needs its own")


def run_experiment(name: str, module, config, run_dir: RunDir) -> dict:
    """Run one study into `run_dir` with the run-directory protocol (manifest status
    running -> finished or failed). Returns the study's result dict."""
    run_dir.start(name, to_dict(config))
    try:
        result = module.run(config, run_dir)
    except BaseException as e:
        run_dir.fail(e)
        raise
    run_dir.finish(**{k: v for k, v in result.items() if k != "summary"})
    return result


def preset_config(module, preset: str, data_dir: str | None):
    if preset not in module.PRESETS:
        raise MemjaxError(f"unknown preset {preset!r}; known: {', '.join(module.PRESETS)}")
    config = module.PRESETS[preset]
    if data_dir is not None:
        for f in dataclasses.fields(config):
            value = getattr(config, f.name)
            if dataclasses.is_dataclass(value) and any(
                    g.name == "data_dir" for g in dataclasses.fields(value)):
                config = override(config, f"{f.name}.data_dir", data_dir)
    return config


def study_configs(preset: str, only: list[str] | None = None,
                  data_dir: str | None = None) -> dict[str, tuple]:
    """{name: (module, config)} of the paper's studies (or `only` those) at `preset`,
    each config checked."""
    modules = registered()
    names = default_names() if not only else only
    unknown = [n for n in names if n not in modules]
    if unknown:
        raise MemjaxError(f"unknown experiment(s) {', '.join(unknown)}; known: {', '.join(modules)}")
    lacking = [n for n in names if preset not in modules[n].PRESETS]
    having = [n for n, m in modules.items() if preset in m.PRESETS]
    if lacking and having:  # (a preset only some studies have, e.g. cifar-cpu)
        raise MemjaxError(f"{', '.join(lacking)} {'has' if len(lacking) == 1 else 'have'} "
                          f"no preset {preset!r}; the studies "
                          f"that have it: {', '.join(having)} (--only {','.join(having)})")
    configs = {n: (modules[n], preset_config(modules[n], preset, data_dir)) for n in names}
    for module, config in configs.values():
        check_config(module, config)
    return configs


def _announce_plan(studies: dict, out: Path, log: Callable[[str], None]) -> None:
    """Print the plan on this machine and save it as out/plan.json (memjax.plan); a
    machine without a bench record of its own gets a note instead."""
    from memjax import plan

    try:
        result = plan.plan(studies, "this")
    except MemjaxError as e:
        log(f"plan: none ({e})")
        return
    log(plan.format_plan(result))
    with atomic_path(out / "plan.json") as tmp:
        tmp.write_text(json.dumps(result, indent=2) + "\n")


def reproduce(preset: str, out: str | Path, *, only: list[str] | None = None,
              data_dir: str | None = None, overwrite: bool = False,
              log: Callable[[str], None] = print) -> tuple[Path, int]:
    """Run the registered studies (or `only` those) at `preset` into out/<name>/ and write
    out/report.md over every study in `out`. A study already finished there with the same
    settings is kept; an unfinished one is resumed; one with other settings is refused
    (before anything runs) unless `overwrite`, which runs every selected study afresh. A
    study that fails is recorded (manifest status failed, error in the report) and the
    others still run. Returns (report path, number of failed studies)."""
    out = Path(out)
    studies = study_configs(preset, only, data_dir)
    names = list(studies)
    modules = {n: module for n, (module, _) in studies.items()}
    configs = {n: config for n, (_, config) in studies.items()}
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise MemjaxError(f"cannot write to {out}: {e.strerror or e}") from None
    if not overwrite:
        other = {n: d for n in names if (d := _other_settings(out / n, configs[n]))}
        if other:
            runs = "; ".join(f"{n} ({listed(d, 3)})" for n, d in other.items())
            raise MemjaxError(f"{out} holds runs with other settings than the {preset} preset: "
                              f"{runs}; pass --overwrite to run them again, or use another "
                              f"--out")
    kept = {n for n in names if not overwrite
            and read_manifest(out / n).get("status") == "finished"}
    if len(kept) < len(names):  # the plan is of what runs now
        _announce_plan({n: s for n, s in studies.items() if n not in kept}, out, log)
    failed = 0
    for name in names:
        path = out / name
        if name in kept:
            log(f"{name}: finished earlier with the same settings, kept ({path})")
            continue
        log(f"{name}: running ({preset})")
        try:
            run_dir = RunDir(path, overwrite=overwrite, resume=not overwrite)
            run_experiment(name, modules[name], configs[name], run_dir)
            log(f"{name}: finished in {read_manifest(path).get('wall_time_s', 0):.0f} s")
        except Exception as e:  # recorded in the manifest; the other studies still run
            failed += 1
            log(f"{name}: FAILED: {type(e).__name__}: {e}")
            if not isinstance(e, MemjaxError):
                log(traceback.format_exc())
    report = write_report(out, preset, data_dir=data_dir)
    log(f"report: {report}")
    return report, failed


def _other_settings(path: Path, config) -> list[str]:
    """How the run in `path` (if any) differs from `config`; [] if no run or the same."""
    manifest = read_manifest(path)
    if "config" not in manifest:
        return []
    return differences_from_run(manifest, config)


def study_evidence(name: str, module, path: Path) -> tuple[list[dict], str | None]:
    """The study's evidence lines from its summary.json, or an error message."""
    fn = getattr(module, "evidence", None)
    if fn is None:
        return [], "this study computes no evidence lines"
    try:
        summary = json.loads((path / "summary.json").read_text())
        return list(fn(summary)), None
    except Exception as e:  # a broken summary must not lose the rest of the report
        return [], f"evidence failed: {type(e).__name__}: {e}"


def verdict(lines: list[dict]) -> str:
    votes = [l["supports"] for l in lines if l.get("supports") is not None]
    if not votes:
        return "not tested by this run"
    if all(votes):
        return f"supported ({len(votes)} of {len(votes)} measurements)"
    if not any(votes):
        return f"not supported ({len(votes)} of {len(votes)} measurements disagree)"
    return f"mixed ({sum(votes)} of {len(votes)} measurements support it)"


def write_report(out: Path, preset: str, names: list[str] | None = None,
                 data_dir: str | None = None) -> Path:
    """Write out/report.md from the run directories under `out` (every registered study,
    or `names`). A finished study whose settings are not the `preset` preset's is listed
    as such and its evidence left out of the verdicts."""
    modules = registered()
    names = names or default_names(out)
    sections, by_claim = [], {c: [] for c in CLAIMS}
    for name in names:
        path = out / name
        manifest = read_manifest(path)
        status = manifest.get("status", "not run")
        if status == "finished":
            other = _other_settings(path, preset_config(modules[name], preset, data_dir))
            if other:
                status = (f"finished with other settings than the {preset} preset "
                          f"({listed(other, 3)}), so "
                          "not counted here")
        lines, problem = ([], None)
        if status == "finished":
            lines, problem = study_evidence(name, modules[name], path)
        for line in lines:
            by_claim.setdefault(line["claim"], []).append((name, line))
        sections.append(_section(name, modules[name], path, manifest, status, lines, problem))
    head = [f"# memjax reproduction report ({preset} preset)", "",
            f"Run directory: `{out}`. Each study's files are in `{out.name}/<study>/` "
            "(manifest.json, summary.json, results.npz, metrics.jsonl, figures). Verdicts and "
            "numbers below are computed from this run's data.", "", "## Claims of PAPER.md", ""]
    for claim, text in CLAIMS.items():
        lines = [l for _, l in by_claim.get(claim, [])]
        head.append(f"{claim}. **{text}** — {verdict(lines)}.")
        for name, line in by_claim.get(claim, []):
            mark = {True: "supports", False: "does not support", None: "neutral"}[line.get("supports")]
            head.append(f"   - [{name}, {mark}] {line['text']}")
        head.append("")
    report = "\n".join(head + ["## Studies", ""] + sections) + "\n"
    out.mkdir(parents=True, exist_ok=True)
    target = out / "report.md"
    with atomic_path(target) as tmp:
        tmp.write_text(report)
    return target


def _section(name, module, path: Path, manifest: dict, status: str, lines, problem) -> str:
    doc = " ".join((module.__doc__ or "").strip().split("\n\n")[0].split())
    parts = [f"### {name}", "", doc, ""]
    if status != "finished":
        parts.append(f"Status: **{status}**" + (f" — {manifest['error']}" if manifest.get("error")
                                                else "") + ".")
        return "\n".join(parts) + "\n"
    device = manifest.get("device", {})
    speed = manifest.get("model_examples_per_second")
    resumed = len(manifest.get("resumed", []))
    parts.append(f"Finished in {manifest.get('wall_time_s', 0):.0f} s on {device.get('kind', '?')}"
                 + (f", {speed:,.0f} model-examples/s" if isinstance(speed, (int, float)) else "")
                 + (f" (resumed {resumed} time{'s' * (resumed > 1)})" if resumed else "")
                 + ".")
    parts.append("")
    for line in lines:
        parts.append(f"- {line['text']}")
    if problem:
        parts.append(f"- ({problem})")
    parts.append("")
    for figure in sorted(path.glob("*.png")):
        parts.append(f"![{name}: {figure.stem}]({os.path.relpath(figure, path.parent)})")
        parts.append("")
    return "\n".join(parts)
