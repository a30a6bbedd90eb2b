"""The `memjax` command: parses, dispatches and prints. The logic lives in the library."""
from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
import textwrap
import threading
import time
from pathlib import Path

from memjax.compilation_cache import enable as enable_compilation_cache
from memjax.config import ModelConfig, override
from memjax.errors import MemjaxError


def _experiment(name: str):
    from memjax.studies import study

    return study(name)


# The flags every `memjax run NAME` accepts, and the config field each one sets.
SHARED_FLAGS = {"dataset": "data.name", "data_dir": "data.data_dir",
                "members": "train.members", "seeds": "seeds", "seed": "train.seed"}


def build_config(module, args: argparse.Namespace):
    if args.preset not in module.PRESETS:
        raise MemjaxError(f"unknown preset {args.preset!r}; known: {', '.join(module.PRESETS)}")
    config = module.PRESETS[args.preset]
    sweep = hasattr(config, "seeds")
    if args.members is not None and sweep:
        raise MemjaxError(f"{args.experiment} is a sweep: its ensemble is one member per cell "
                          f"and seed; use --seeds N (members per cell), not --members")
    if args.seeds is not None and not sweep:
        raise MemjaxError(f"{args.experiment} trains one ensemble: use --members N, not --seeds")
    if args.model is not None:
        if not isinstance(getattr(config, "model", None), ModelConfig):
            raise MemjaxError(f"{args.experiment} has no `model` setting for --model to set "
                              f"(--set KEY=VALUE sets its other settings)")
        config = override(config, "model.kind", args.model)
    for flag, dotted in SHARED_FLAGS.items():
        value = getattr(args, flag)
        if value is not None:
            config = override(config, dotted, str(value))
    if args.record:  # every training phase of the study keeps its per-example records
        for name in ("train", "cnn_train"):
            if hasattr(config, name):
                config = override(config, f"{name}.record_dynamics", "true")
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise MemjaxError(f"--set expects KEY=VALUE, got {item!r}")
        config = override(config, key.strip(), value.strip())
    return config


def cmd_run(args: argparse.Namespace) -> int:
    from memjax.reproduce import check_config, run_experiment
    from memjax.manifest import differences_from_run, listed
    from memjax.results import CHECKPOINT_MINUTES, RunDir
    from memjax.sharding import initialize_distributed, is_writer

    several = initialize_distributed()
    module = _experiment(args.experiment)
    config = build_config(module, args)
    check_config(module, config)
    if args.resume and not args.out:
        raise MemjaxError("--resume needs --out DIR, the run directory to continue")
    if args.resume and args.overwrite:
        raise MemjaxError("--resume and --overwrite contradict each other: continue the run "
                          "in --out, or replace it")
    if args.checkpoint_every is not None and args.checkpoint_minutes is not None:
        raise MemjaxError("--checkpoint-every and --checkpoint-minutes contradict each other: "
                          "checkpoint by epochs or by time")
    if several and not args.out:  # each host's clock would name its own folder
        raise MemjaxError("a run of several processes needs --out (one folder for all of "
                          "them, on a file system they share)")
    out = Path(args.out or f"runs/{args.experiment}-{args.preset}-{time.strftime('%Y%m%d-%H%M%S')}")
    checkpoints_of = out  # every process saves its part of the state beside the run
    if several and not is_writer():  # process 0 writes the run; the others keep their logs apart
        import jax

        out = out / "hosts" / str(jax.process_index())
    nothing_to_resume = args.resume and RunDir.status_of(out) is None
    run_dir = RunDir(out, overwrite=args.overwrite, resume=args.resume,
                     checkpoint_minutes=CHECKPOINT_MINUTES if args.checkpoint_minutes is None
                     else args.checkpoint_minutes,
                     checkpoint_every=args.checkpoint_every,
                     keep_checkpoints=args.keep_checkpoints, checkpoints_of=checkpoints_of,
                     discard_unstarted=True)
    if nothing_to_resume:  # said once RunDir has taken the folder
        print(f"memjax: no run in {out} to resume; starting a new one", file=sys.stderr)
    if args.resume and run_dir.finished and not args.overwrite:
        previous = run_dir.read_manifest()
        if previous.get("experiment") != args.experiment:
            raise MemjaxError(f"{out} holds a finished {previous.get('experiment')!r} run, "
                              f"not {args.experiment!r}")
        other = differences_from_run(previous, config)
        if other:
            raise MemjaxError(f"{out} holds a finished run with other settings "
                              f"({listed(other)}); nothing to resume (--overwrite "
                              f"runs it again with the new ones)")
        print(f"{args.experiment}: {out} already holds this finished run; nothing to resume")
        return 0
    enable_compilation_cache()  # a rerun or --resume reads its programs back
    result = run_experiment(args.experiment, module, config, run_dir)
    print(f"{args.experiment}: finished in {run_dir.read_manifest()['wall_time_s']:.1f} s -> {out}")
    _print_summary(result)
    return 0


def _print_summary(result: dict) -> None:
    """The scalars of a study's summary, one line per condition or sweep point (curves and
    per-member lists are in the run directory)."""
    def show(v):
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    def line(name, entry):
        if isinstance(entry, dict):
            entry = ", ".join(f"{k}={show(v)}" for k, v in entry.items()
                              if isinstance(v, (int, float, str)) or v is None)
        print(f"  {name}: {show(entry)}")

    for key, value in result.items():
        if not isinstance(value, dict):
            line(key, value)
            continue
        for name, entry in value.items():
            if isinstance(entry, dict) and entry and all(isinstance(e, dict) for e in entry.values()):
                for sub, e in entry.items():  # a level of sweep points
                    line(sub, e)
            elif not isinstance(entry, list):
                line(name, entry)


COMMON_PRESETS = ("smoke", "cpu", "paper")
PRESET_HELP = "smoke | cpu | paper, or one a study adds (`memjax list`) (default: cpu)"


def cmd_list(args: argparse.Namespace) -> int:
    from memjax.studies import experiment_of, registered

    modules = registered()
    first_other = next((n for n, m in modules.items() if experiment_of(m) is None), None)
    for name, module in modules.items():
        if name == first_other:
            print("\nbeyond the paper (not part of `memjax reproduce` unless named):")
        first = " ".join(module.__doc__.strip().split("\n\n")[0].split())
        others = [p for p in module.PRESETS if p not in COMMON_PRESETS]
        if others:  # the presets beyond every study's smoke, cpu and paper
            first += f" Presets also {', '.join(others)}."
        print(textwrap.fill(first, 92, initial_indent=f"{name:15s}", subsequent_indent=" " * 15))
    return 0


def _names(text: str | None, flag: str) -> list[str] | None:
    """A comma-separated list of names (None when the flag was not given)."""
    if text is None:
        return None
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise MemjaxError(f"{flag} names nothing; give comma-separated names or leave it out")
    return names


def cmd_bench(args: argparse.Namespace) -> int:
    # JAX would otherwise take 75 % of a GPU's memory up front, before the PyTorch rows run
    # (read when JAX first touches the device, which has not happened yet)
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    from importlib.metadata import entry_points

    # the bench registers itself (pyproject's memjax.bench entry point): the library
    # imports no benchmark by name
    (entry,) = entry_points(group="memjax.bench")
    harness = entry.load()
    only = _names(args.cases, "--cases")
    record = harness.run(args.preset, only, args.out)
    print(harness.markdown(record), end="")
    print(f"bench: finished in {record['wall_s']:.1f} s -> {', '.join(record['files'])}")
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    from memjax.reproduce import reproduce
    from memjax.sharding import several_processes_requested

    if several_processes_requested():  # each process would run every study into one folder
        raise MemjaxError("memjax reproduce runs as one process; this one is one of several "
                          "(MEMJAX_COORDINATOR, Slurm or a TPU slice): run it once, or set "
                          "MEMJAX_DISTRIBUTED=0")

    only = _names(args.only, "--only")
    enable_compilation_cache()
    _, failed = reproduce(args.preset, args.out, only=only, data_dir=args.data_dir,
                          overwrite=args.overwrite)
    return 1 if failed else 0


def cmd_plan(args: argparse.Namespace) -> int:
    import json

    from memjax import plan
    from memjax.reproduce import study_configs

    studies = study_configs(args.preset, _names(args.only, "--only"), args.data_dir)
    result = plan.plan(studies, args.device)  # (its progress bar on stderr)
    print(json.dumps(result, indent=2) if args.json else plan.format_plan(result, args.verbose))
    return 0


def cmd_data_import(args: argparse.Namespace) -> int:
    from memjax.data.convert import import_dataset

    target = import_dataset(args.name, args.path, args.out)
    print(f"{args.name}: {args.path} -> {target} (use it with --data-dir {args.out})")
    return 0


def add_shared_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="cpu", help=PRESET_HELP)
    p.add_argument("--dataset", help="embedded | mnist | cifar10 | npz:PATH")
    p.add_argument("--data-dir", help="folder with <dataset>.npz (default: $MEMJAX_DATA_DIR, "
                                      "else tensorflow-datasets)")
    p.add_argument("--model", metavar="NAME",
                   help="the study's model (model.kind): mlp | cnn | resnet9 | resnet18 | "
                        "package.module:factory, a function returning a flax.linen Module "
                        "(importable from the current directory or PYTHONPATH)")
    p.add_argument("--members", type=int,
                   help="ensemble size (consistency, sensitivity, csr, el2n, memorization)")
    p.add_argument("--record", choices=["dynamics"],
                   help="also record per-example training dynamics (forgetting, AUM, data "
                        "maps, learned epochs) and save them as dynamics-<phase>.npz")
    p.add_argument("--seeds", type=int,
                   help="members per sweep cell (capacity, convergence, noise-curves, "
                        "regularization, filters) or per subset ratio (cscore)")
    p.add_argument("--seed", type=int, help="root seed of model initialization and data order")
    p.add_argument("--out", help="run directory (default: runs/NAME-PRESET-TIMESTAMP)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config field, e.g. --set train.epochs=3 (repeatable)")
    p.add_argument("--overwrite", action="store_true", help="replace the run (finished or not) in --out")
    p.add_argument("--resume", action="store_true",
                   help="continue the unfinished run in --out from its checkpoints")
    p.add_argument("--checkpoint-minutes", type=float, metavar="MINUTES",
                   help="checkpoint by time: a killed run loses at most MINUTES of work, and "
                        "phases shorter than that write nothing (default 10)")
    p.add_argument("--checkpoint-every", type=int, metavar="EPOCHS",
                   help="instead, checkpoint each training phase every EPOCHS epochs (and "
                        "after its last; 0: never)")
    p.add_argument("--keep-checkpoints", action="store_true",
                   help="keep checkpoints/ after the run finishes (default: removed)")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="memjax",
                                description=__import__("memjax").__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run one study")
    run.add_argument("experiment", help="study name (see `memjax list`)")
    add_shared_flags(run)
    run.set_defaults(func=cmd_run)
    sub.add_parser("list", help="list the studies").set_defaults(func=cmd_list)
    bench = sub.add_parser("bench", help="ensemble training throughput against baselines")
    bench.add_argument("--preset", default="cpu", help="cpu (minutes on 2 cores) | gpu")
    bench.add_argument("--cases", help="comma-separated case names (default: all)")
    bench.add_argument("--out", help="folder for <date>-<device>.json/.md (default: "
                                     "memjax's records folder, which memjax plan reads)")
    bench.set_defaults(func=cmd_bench)
    pl = sub.add_parser("plan", help="the work of the studies of a preset and its time on a "
                                     "device, before running them")
    pl.add_argument("--preset", default="cpu", help=PRESET_HELP)
    pl.add_argument("--only", help="comma-separated studies (default: the paper's, as "
                                   "`memjax reproduce` runs them)")
    pl.add_argument("--device", default="this",
                    help="this (the machine it runs on; needs a bench record of it) | "
                         "h100 | h200 | a100 | tpu-v5e | tpu-v4 (default: this)")
    pl.add_argument("--data-dir", help="folder with npz data (only npz:PATH data is read)")
    pl.add_argument("--json", action="store_true", help="print the plan as JSON")
    pl.add_argument("--verbose", "-v", action="store_true",
                    help="a line per program: runs, FLOPs, time and the rate it used")
    pl.set_defaults(func=cmd_plan)
    rep = sub.add_parser("reproduce", help="run every study, then write OUT/report.md")
    rep.add_argument("--preset", default="cpu", help=PRESET_HELP)
    rep.add_argument("--out", required=True, help="folder for the studies and report.md; "
                                                  "studies finished in it with the same "
                                                  "settings are not rerun")
    rep.add_argument("--data-dir", help="folder with mnist.npz / cifar10.npz "
                                        "(default: $MEMJAX_DATA_DIR)")
    rep.add_argument("--only", help="comma-separated studies (default: all)")
    rep.add_argument("--overwrite", action="store_true",
                     help="run the selected studies again even where OUT holds them")
    rep.set_defaults(func=cmd_reproduce)
    data = sub.add_parser("data", help="prepare data sets for --data-dir").add_subparsers(
        dest="data_command", required=True)
    imp = data.add_parser("import", help="write OUT/NAME.npz from the official files you have")
    imp.add_argument("name", choices=["mnist", "cifar10"])
    imp.add_argument("path", help="mnist: the folder with the four IDX files (gzipped or "
                                  "not); cifar10: cifar-10-batches-py/ or cifar-10-python.tar.gz")
    imp.add_argument("--out", required=True, help="folder to write NAME.npz into (then "
                                                   "pass it as --data-dir)")
    imp.set_defaults(func=cmd_data_import)
    return p


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    # A scheduler's SIGTERM ends the run like Ctrl-C: the manifest says failed and why,
    # and the checkpoint being written is completed, so --resume can continue it.
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _interrupt) if main_thread else None
    try:
        return args.func(args)
    except MemjaxError as e:
        print(f"memjax: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("memjax: interrupted", file=sys.stderr)
        if argv is None:  # the command, not a call from Python
            # The run's files and checkpoints were finished in `finally` blocks on the way
            # here; interpreter teardown can race XLA threads still running the interrupted
            # computation (and can segfault), so leave without it.
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(130)
        return 130
    except BrokenPipeError:  # output piped into `head` and the like: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
