#!/usr/bin/env bash
# The device check, in one go (allow about 10 minutes on one H100, compile included; each
# case's wall time is in the bench record's case_wall_s):
#   1. install memjax (editable, no dependencies: the device has jax, flax, optax, orbax)
#   2. memjax bench --preset gpu            -> $OUT/bench/<date>-<device>.{json,md}
#   3. the plan against reality: the new bench record joins benchmarks/results/ (of this
#      copy), then benchmarks/plan_check.py plans and runs consistency and sensitivity at the
#      paper preset (data from .devdata)  -> $OUT/plan/plan-paper-*.{json,md},
#                                            $OUT/plan-runs/{consistency,sensitivity}/
#   4. a short table of all of it, printed last
# Run from the repository root, with .devdata/mnist.npz in place:
#   OUT=/some/folder bash benchmarks/gpu_check.sh
# Rehearse on a CPU (cpu bench preset, smoke study on the embedded data):
#   MEMJAX_CHECK=cpu OUT=/tmp/gpu-check bash benchmarks/gpu_check.sh
# MEMJAX_BENCH_CASES=a_mlp512,c_cnn limits the bench to those cases; MEMJAX_BENCH_TIMEOUT
# (seconds, default 420) bounds it; MEMJAX_CHECK_STUDY=0 skips the plan check's study runs.
set -u -o pipefail
OUT=${OUT:-$PWD/gpu-check-out}
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)
CHECK=${MEMJAX_CHECK:-gpu}
PY=${PYTHON:-python3}
case "$PY" in */*) PY="$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY")" ;; esac  # used from /tmp too
export XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1 TQDM_DISABLE=1
stamp() { echo "[$(date -u +%H:%M:%S)] $*"; }

# memjax.experiments and memjax.benchmarks are the top-level folders experiments/ and
# benchmarks/ (pyproject's package-dir), so plain PYTHONPATH=. cannot import them; without
# an install, a folder of links lays the package out as installed.
stamp "install"
if $PY -m pip install --no-deps --no-build-isolation -e . -q >"$OUT/install.log" 2>&1 \
   && (cd /tmp && $PY -c "import memjax.benchmarks.harness, memjax.experiments.consistency"); then
  PYM=("$PY" -m)
else
  stamp "editable install failed (see $OUT/install.log); using a linked layout"
  SHIM=$(mktemp -d)
  mkdir "$SHIM/memjax"
  for entry in "$PWD"/memjax/*; do ln -s "$entry" "$SHIM/memjax/"; done
  ln -s "$PWD/experiments" "$SHIM/memjax/experiments"
  ln -s "$PWD/benchmarks" "$SHIM/memjax/benchmarks"
  export PYTHONPATH="$SHIM${PYTHONPATH:+:$PYTHONPATH}"
  PYM=("$PY" -P -m)  # -P: the repository's own memjax/ must not shadow the links
fi
MEMJAX=("${PYM[@]}" memjax.cli)
"$PY" -c "import jax; print('jax', jax.__version__, jax.devices())" 2>&1 | tail -1

if [ "$CHECK" = cpu ]; then
  BENCH_PRESET=cpu; PLAN_ARGS=(--preset smoke --only consistency)
else
  BENCH_PRESET=gpu; PLAN_ARGS=(--preset paper --only consistency,sensitivity)
  export MEMJAX_DATA_DIR="$PWD/.devdata"
fi
CASES=()
[ -n "${MEMJAX_BENCH_CASES:-}" ] && CASES=(--cases "$MEMJAX_BENCH_CASES")

stamp "bench --preset $BENCH_PRESET"
timeout "${MEMJAX_BENCH_TIMEOUT:-420}" "${MEMJAX[@]}" bench --preset "$BENCH_PRESET" "${CASES[@]}" --out "$OUT/bench" \
  >"$OUT/bench.log" 2>&1
echo "bench exit $?" | tee -a "$OUT/bench.log"
tail -n 5 "$OUT/bench.log"

if [ "${MEMJAX_CHECK_STUDY:-1}" != 0 ]; then
  # the plan reads its rates from benchmarks/results/: the record just made joins them
  [ "$CHECK" = cpu ] || cp "$OUT"/bench/*.json benchmarks/results/ 2>/dev/null
  stamp "plan check ${PLAN_ARGS[*]}"
  timeout "${MEMJAX_PLAN_TIMEOUT:-300}" "${PYM[@]}" memjax.benchmarks.plan_check \
    "${PLAN_ARGS[@]}" --out "$OUT/plan" --runs "$OUT/plan-runs" >"$OUT/plan.log" 2>&1
  echo "plan check exit $?" | tee -a "$OUT/plan.log"
  tail -n 4 "$OUT/plan.log"
fi

stamp "summary"
"$PY" - "$OUT" <<'EOF'
import glob, json, os, sys
out = sys.argv[1]
for path in sorted(glob.glob(os.path.join(out, "bench", "*.json"))):
    r = json.load(open(path))
    print(f"bench {os.path.basename(path)}: {r['device']['kind']}, roofline "
          f"{r['roofline']['peak_tflops']:.1f} TFLOP/s, {r['roofline']['bandwidth_gbs']:.0f} GB/s")
    print(f"{'case':18s} {'impl':18s} {'model-ex/s':>12s} {'TFLOP/s':>8s} {'roofline':>8s}  note")
    for row in r["rows"]:
        rate, tf, sh = (row.get(k) for k in ("model_examples_per_s", "tflops", "roofline_share"))
        print(f"{row['case']:18s} {row['impl']:18s} {rate or 0:12,.0f} {tf or 0:8.2f} "
              f"{100 * (sh or 0):7.1f}%  {row.get('note', '')[:60]}")
    for case, c in r["comparison"].items():
        ratios = ", ".join(f"{v:.2f}{k}" for k, v in c.items() if k.startswith("x "))
        target = c.get("target", "")
        if target:
            target += " MET" if c["target_met"] else " MISSED"
        print(f"  {case}: best {c['best_jax']}: {ratios} {target}")
    print("case wall times (s):", r.get("case_wall_s"))
for path in sorted(glob.glob(os.path.join(out, "plan", "*.md"))):
    print(open(path).read())
manifest = os.path.join(out, "plan-runs", "consistency", "manifest.json")
if os.path.exists(manifest):
    m = json.load(open(manifest))
    print(f"consistency: {m.get('status')} in {m.get('wall_time_s')} s on {m['device']['kind']}, "
          f"{m.get('model_examples_per_second', 0):,.0f} model-examples/s")
    summary = os.path.join(out, "plan-runs", "consistency", "summary.json")
    if os.path.exists(summary):
        for cond, s in json.load(open(summary)).items():
            print(f"  {cond}: mean error {s['mean_error']:.3f}, std rate "
                  f"{s['std_misclassification_rate']:.3f} vs binomial {s['std_binomial_reference']:.3f}")
else:
    print("consistency: no manifest (see plan.log)")
EOF
