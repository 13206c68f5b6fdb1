#!/usr/bin/env bash
# The prepared script of a first GPU session (issue 16), 5.4 minutes on an H200 (2026-12-04):
#   scripts/gpu_check.sh      (PYTHON=... the interpreter, OUT=... the folder of the figures,
#                              BUDGET=... seconds for all steps, default 480)
# Writes ONE JSON, $OUT/gpu_check.json (also printed at the end), of these steps, each time-boxed
# (`timeout`); a step that fails or runs out of time is recorded there (exit status, log tail) and the
# script goes on; a step that no longer fits the budget is recorded as skipped:
#   jpegs           nvjpeg on baseline / progressive / greyscale / CMYK JPEGs (made with PIL) against
#                   the CPU decode and PIL: images/s, RGB shapes, largest pixel difference
#   cuda_tests      the suite's tests marked `cuda` (pytest -m cuda; a test file that cannot be
#                   collected there, for a package missing, is reported and the rest still run)
#   heads           DINOv2-B + SALAD at 322x322, ResNet-50 layer3 + MixVPR and + BoQ at 320x320:
#                   the network's images/s at fp32 against bf16 in one run, descriptor cosine
#   bench_eager     `vgray bench extract` (ResNet-50 conv4 + GeM, 480x640 JPEGs, vgray's path against
#                   the paper's loop in the same run)
#   precision       NetVLAD on the synthetic world at fp32 against bf16: recalls, descriptor cosine
#   devices         where Ray puts two `gpu: 0.5` tasks and a `gpu: 0` one (device_report)
#   sweep           a sweep of two `gpu: 0.5` trials; nvidia-smi's GPU processes while it runs
#   train_group     a short training run in-process against the same run through Ray Train (a one-worker
#                   group, forced; NCCL): training images/s of each (within 10 %), the backend
#   bench_compiled  `vgray bench extract --compile`
# The Python parts are vgray/bench/gpu_check.py. Without a CUDA device: one line, exit 3.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=${OUT:-${TMPDIR:-/tmp}/gpu_check}
BUDGET=${BUDGET:-480}
WORKERS=${WORKERS:-$(( $(nproc) < 8 ? $(nproc) : 8 ))}
export PYTHONWARNINGS=ignore::DeprecationWarning
"$PY" -c "import torch, sys; ok = torch.cuda.is_available(); print('device:', torch.cuda.get_device_name() if ok else 'none', '| torch', torch.__version__); sys.exit(0 if ok else 3)" \
  || { echo "gpu_check: no CUDA device here" >&2; exit 3; }
mkdir -p "$OUT" && : > "$OUT/status.tsv"
rm -f "$OUT"/gpu_check*.json "$OUT"/*.log "$OUT/cuda_tests.xml" "$OUT/sweep_gpu_procs.csv"  # this script's, from a run before
START=$SECONDS

# step NAME LIMIT CMD...: run CMD under `timeout` (at most LIMIT s, and what is left of BUDGET),
# its output in $OUT/NAME.log, its exit status and seconds in $OUT/status.tsv.
step() {
  local name=$1 limit=$2; shift 2
  local left=$(( BUDGET - (SECONDS - START) ))
  if (( left < 20 )); then
    printf '%s\tskipped\t0\n' "$name" >> "$OUT/status.tsv"; echo "== $name: skipped (budget spent)"; return
  fi
  (( limit > left )) && limit=$left
  echo "== $name (at most ${limit}s)"
  local t0=$SECONDS rc
  timeout -k 10 "$limit" "$@" > "$OUT/$name.log" 2>&1
  rc=$?
  printf '%s\t%d\t%d\n' "$name" "$rc" $(( SECONDS - t0 )) >> "$OUT/status.tsv"
  echo "   exit $rc after $(( SECONDS - t0 ))s"
}

step jpegs 90 "$PY" -m vgray.bench.gpu_check jpegs --out "$OUT"
step cuda_tests 120 "$PY" -m pytest -q -m cuda -p no:cacheprovider --continue-on-collection-errors \
  --junitxml "$OUT/cuda_tests.xml" tests
step heads 120 "$PY" -m vgray.bench.gpu_check heads --out "$OUT"
step bench_eager 120 "$PY" -m vgray.cli bench extract --set data.num_workers="$WORKERS" --json "$OUT/gpu_check_bench_eager.json"
step precision 120 "$PY" -m vgray.bench.gpu_check precision --out "$OUT"
step devices 60 "$PY" scripts/gpu_check_devices.py "$OUT"
"$PY" -m vgray.bench.gpu_check sweep-file --out "$OUT"
nvidia-smi --query-compute-apps=pid,process_name,used_memory --format=csv,noheader,nounits -l 1 \
  > "$OUT/sweep_gpu_procs.csv" 2>/dev/null &
SMI=$!
step sweep 150 "$PY" -m vgray.cli sweep "$OUT/sweep.yaml" --num-cpus "$(nproc)"
kill "$SMI" 2>/dev/null; wait "$SMI" 2>/dev/null
[[ -f "$OUT/sweep.log" ]] && "$PY" -m vgray.bench.gpu_check sweep-figures --out "$OUT" > /dev/null 2>> "$OUT/sweep.log"
step train_group 120 "$PY" -m vgray.bench.gpu_check train-group --out "$OUT"
step bench_compiled 180 "$PY" -m vgray.cli bench extract --compile --set data.num_workers="$WORKERS" --json "$OUT/gpu_check_bench_compiled.json"
echo "== figures: $OUT/gpu_check.json"
"$PY" -m vgray.bench.gpu_check assemble --out "$OUT"
