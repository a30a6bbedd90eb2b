#!/usr/bin/env bash
# The device check, in one call of about 8 minutes on one H200 (compile included):
#   1. install memjax (editable, no dependencies: the device has jax, flax, optax, orbax)
#   2. memjax bench --preset gpu (at most about 4 min)       -> $OUT/<date>-<device>.{json,md}
#   3. LASS in TF32 against full float32 on the paper's CNN  -> $OUT/lass-precision.json
#      (benchmarks/lass_precision.py; data .devdata/cifar10-8k.npz)
#   4. the plan against reality: the new bench record joins memjax/records/ (of this
#      copy), then benchmarks/plan_check.py plans and runs consistency at the paper preset
#      (data .devdata/mnist.npz)                              -> $OUT/plan-paper-*.{json,md}
#   5. (MEMJAX_CHECK_RESNET9=1) ResNet-9 members with ffcv's recipe: on all 50,000
#      images where .cifar10-parts/ holds them (below), else on the 8k subset
#                                                             -> $OUT/resnet9-accuracy.json
#   6. a short table of all of it, printed last              -> $OUT/summary.txt
# Every step's output goes to $OUT/check.log. At most 8 files land in $OUT, each written as
# its step ends, named with letters, digits, '.', '_' and '-' only (the device tool returns
# 8 files at most and drops names with other characters); work folders stay outside $OUT.
# Run from the repository root, with .devdata/ in place (carried: 39 MB of the 64 allowed):
#   mkdir -p .devdata && cp ../shared/data/mnist.npz .devdata/ && python3 -c "import numpy as np;
#   d = np.load('../shared/data/cifar10.npz'); np.savez('.devdata/cifar10-8k.npz',
#   **{k: d[k][:8000 if 'train' in k else 1000] for k in d.files})"
#   OUT=/some/folder bash benchmarks/gpu_check.sh
# Rehearse on a CPU (cpu bench preset, a narrow CNN on .devdata/cifar10-small.npz, 600/100
# images made the same way, and the smoke consistency study on the embedded data):
#   MEMJAX_CHECK=cpu OUT=/tmp/gpu-check bash benchmarks/gpu_check.sh
# MEMJAX_BENCH_CASES (default a_mlp512,b_mlp4096,c_cnn; "all": the whole gpu preset) picks
# the bench cases; MEMJAX_BENCH_TIMEOUT (seconds, default 260) bounds it; MEMJAX_CHECK_STUDY=0 skips the plan check's study run.
# The ResNet-9 check fits a call of its own (bench case and accuracy, about 5 minutes):
#   MEMJAX_BENCH_CASES=resnet9 MEMJAX_CHECK_LASS=0 MEMJAX_CHECK_STUDY=0 MEMJAX_CHECK_RESNET9=1 \
#     OUT=/some/folder bash benchmarks/gpu_check.sh
# Its 93 % target needs the whole CIFAR-10 (170 MB), more than one call carries. Split it
#   mkdir -p .cifar10-parts && split -b 60000000 ../shared/data/cifar10.npz .cifar10-parts/cifar10.npz.part-
# and carry one part per call, back to back while the machine stays warm (an ignored file
# a call carried stays there): `ls .cifar10-parts` carrying .cifar10-parts/cifar10.npz.part-aa,
# then -ab, then the check above carrying -ac. The check joins the parts and verifies the
# file's sha256 (../shared/data/README.md); MEMJAX_RESNET9_MEMBERS (default 4) members.
set -u -o pipefail
OUT=${OUT:-$PWD/gpu-check-out}
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)
WORK=$(mktemp -d)  # bench and study folders: only the files named above go to $OUT
LOG="$OUT/check.log"
CHECK=${MEMJAX_CHECK:-gpu}
PY=${PYTHON:-python3}
case "$PY" in */*) PY="$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY")" ;; esac  # used from /tmp too
export XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1 TQDM_DISABLE=1
CIFAR10_SHA256=a44cc18e4ad961b5158c7da062a6232fb65938b615bf013046199b823b75c43d
stamp() { echo "[$(date -u +%H:%M:%S)] $*" | tee -a "$LOG"; }
step() {  # step NAME SECONDS COMMAND...: run it, its output to the log, its exit noted
  local name=$1 limit=$2; shift 2
  stamp "$name"
  timeout "$limit" "$@" >>"$LOG" 2>&1
  stamp "$name: exit $?"
}

# memjax.experiments and memjax.benchmarks are the top-level folders experiments/ and
# benchmarks/ (pyproject's package-dir), so plain PYTHONPATH=. cannot import them; without
# an install, a folder of links lays the package out as installed.
stamp "install"
if $PY -m pip install --no-deps --no-build-isolation -e . -q >>"$LOG" 2>&1 \
   && (cd /tmp && $PY -c "import memjax.benchmarks.harness, memjax.experiments.consistency"); then
  PYM=("$PY" -m)
else
  stamp "editable install failed (see the log); using a linked layout"
  SHIM=$(mktemp -d)
  mkdir "$SHIM/memjax"
  for entry in "$PWD"/memjax/*; do ln -s "$entry" "$SHIM/memjax/"; done
  ln -s "$PWD/experiments" "$SHIM/memjax/experiments"
  ln -s "$PWD/benchmarks" "$SHIM/memjax/benchmarks"
  # the studies and the bench are found through pyproject's entry points: a dist-info
  # beside the links carries them
  mkdir "$SHIM/memjax-0.0.dist-info"
  printf 'Metadata-Version: 2.1\nName: memjax\nVersion: 0.0\n' >"$SHIM/memjax-0.0.dist-info/METADATA"
  "$PY" -c 'import sys, tomllib
for group, entries in tomllib.load(open(sys.argv[1], "rb"))["project"]["entry-points"].items():
    print(f"[{group}]", *(f"{k} = {v}" for k, v in entries.items()), sep="\n")' \
    "$PWD/pyproject.toml" >"$SHIM/memjax-0.0.dist-info/entry_points.txt"
  export PYTHONPATH="$SHIM${PYTHONPATH:+:$PYTHONPATH}"
  PYM=("$PY" -P -m)  # -P: the repository's own memjax/ must not shadow the links
fi
"$PY" -c "import jax; print('jax', jax.__version__, jax.devices())" 2>&1 | tail -1 | tee -a "$LOG"

if [ "$CHECK" = cpu ]; then
  BENCH_PRESET=cpu; PLAN_ARGS=(--preset smoke --only consistency)
  LASS_ARGS=(--data npz:.devdata/cifar10-small.npz --epochs 1 --members 2 --examples 50
             --channels 8)
  RN9_ARGS=(--data npz:.devdata/cifar10-small.npz --members 2 --epochs 2 --width 4
            --dtype float32)
  RN9_FULL_ARGS=(--train-size 600 --validation-size 100 --epochs 2 --width 4 --dtype float32)
else
  BENCH_PRESET=gpu; PLAN_ARGS=(--preset paper --only consistency)
  LASS_ARGS=(--data npz:.devdata/cifar10-8k.npz --epochs 4 --members 3 --examples 500)
  RN9_ARGS=(--data npz:.devdata/cifar10-8k.npz --members 8 --epochs 20)
  RN9_FULL_ARGS=(--epochs 20)
  export MEMJAX_DATA_DIR="$PWD/.devdata"
fi
# the cases whose rows the plan and the planned convolution form read (the whole gpu
# preset, metric cases included, runs past 4 minutes): MEMJAX_BENCH_CASES=all for all
CASES=(--cases "${MEMJAX_BENCH_CASES:-a_mlp512,b_mlp4096,c_cnn}")
[ "${MEMJAX_BENCH_CASES:-}" = all ] && CASES=()

step "bench --preset $BENCH_PRESET" "${MEMJAX_BENCH_TIMEOUT:-260}" \
  "${PYM[@]}" memjax.cli bench --preset "$BENCH_PRESET" "${CASES[@]}" --out "$WORK/bench"
cp "$WORK"/bench/*.json "$WORK"/bench/*.md "$OUT"/ 2>/dev/null

if [ "${MEMJAX_CHECK_LASS:-1}" != 0 ]; then
  step "LASS precision" "${MEMJAX_LASS_TIMEOUT:-150}" \
    "${PYM[@]}" memjax.benchmarks.lass_precision "${LASS_ARGS[@]}" --out "$OUT/lass-precision.json"
fi

if [ "${MEMJAX_CHECK_STUDY:-1}" != 0 ]; then
  # the plan reads its rates from memjax/records/: the record just made joins them
  [ "$CHECK" = cpu ] || cp "$WORK"/bench/*.json memjax/records/ 2>/dev/null
  step "plan check ${PLAN_ARGS[*]}" "${MEMJAX_PLAN_TIMEOUT:-180}" \
    "${PYM[@]}" memjax.benchmarks.plan_check "${PLAN_ARGS[@]}" --out "$OUT" --runs "$WORK/runs"
fi

if [ "${MEMJAX_CHECK_RESNET9:-0}" != 0 ]; then
  RN9_TIMEOUT=150
  if compgen -G ".cifar10-parts/cifar10.npz.part-*" >/dev/null; then
    stamp "joining .cifar10-parts: $(ls .cifar10-parts | tr '\n' ' ')"
    mkdir -p "$WORK/cifar10" && cat .cifar10-parts/cifar10.npz.part-* >"$WORK/cifar10/cifar10.npz"
    if (cd "$WORK/cifar10" && echo "$CIFAR10_SHA256  cifar10.npz" | sha256sum -c) >>"$LOG" 2>&1; then
      RN9_ARGS=(--data cifar10 --data-dir "$WORK/cifar10" --members "${MEMJAX_RESNET9_MEMBERS:-4}"
                "${RN9_FULL_ARGS[@]}")
      RN9_TIMEOUT=420
    else
      stamp "the joined cifar10.npz is not the data set (a part missing?): the subset instead"
    fi
  fi
  step "resnet9 accuracy" "${MEMJAX_RESNET9_TIMEOUT:-$RN9_TIMEOUT}" \
    "${PYM[@]}" memjax.benchmarks.resnet9_accuracy "${RN9_ARGS[@]}" \
    --out "$OUT/resnet9-accuracy.json"
fi

stamp "summary"
"$PY" - "$OUT" "$WORK" <<'EOF' | tee "$OUT/summary.txt"
import glob, json, os, sys
out, work = sys.argv[1:3]
for path in sorted(glob.glob(os.path.join(out, "20*.md"))):  # the bench record, as it wrote it
    print(open(path).read())
    record = json.load(open(path[:-3] + ".json"))
    print("case wall times (s):", record.get("case_wall_s"))
lass = os.path.join(out, "lass-precision.json")
if os.path.exists(lass):
    for cond, c in json.load(open(lass))["conditions"].items():
        print(f"LASS {cond}: CSR default {c['csr_default']} vs highest {c['csr_highest']}; "
              f"{c['flags_differing']} flags of {c['examples']} per member differ")
else:
    print("LASS precision: no record (see check.log)")
for path in sorted(glob.glob(os.path.join(out, "plan-*.md"))):
    print(open(path).read())
manifest = os.path.join(work, "runs", "consistency", "manifest.json")
if os.path.exists(manifest):
    m = json.load(open(manifest))
    print(f"consistency: {m.get('status')} in {m.get('wall_time_s')} s on {m['device']['kind']}, "
          f"{m.get('model_examples_per_second', 0):,.0f} model-examples/s")
    summary = os.path.join(work, "runs", "consistency", "summary.json")
    if os.path.exists(summary):
        for cond, s in json.load(open(summary)).items():
            print(f"  {cond}: mean error {s['mean_error']:.3f}, trained in {s['train_seconds']:.1f} s")
else:
    print("consistency: no manifest (see check.log)")
rn9 = os.path.join(out, "resnet9-accuracy.json")
if os.path.exists(rn9):
    r = json.load(open(rn9))
    print(f"resnet9 ({r['members']} members, {r['train_examples']} images, {r['epochs']} "
          f"epochs, {r['compute_dtype']}): final accuracy min {r['final_accuracy']['min']:.4f}, "
          f"first epochs at {r['target']:.0%} {r['first_epoch_at_target']}, "
          f"{r['seconds_per_member']:.1f} s per member")
else:
    print("resnet9 accuracy: no record (see check.log)")
EOF
ls "$OUT"
