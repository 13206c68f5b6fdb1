#!/usr/bin/env bash
# GPU check of the scale-out issue, item 4 (one command, for a session lent an H100/H200):
#   scripts/gpu_check.sh            (PYTHON=... to choose the interpreter, OUT=... where the JSON goes)
# Prints `vgray bench extract` on the CUDA device twice, eager then --compile: ResNet-50 conv4 + GeM
# at 480x640, end to end from 480x640 JPEG files, vgray's path (nvjpeg decode on the GPU, bf16,
# channels-last, batch 128) against the paper's way (fp32, batch 16, PIL DataLoader, no_grad) in the
# same run; each JSON also holds decode-only images/s (PIL in loader workers vs nvjpeg on the GPU).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=${OUT:-${TMPDIR:-/tmp}}
WORKERS=${WORKERS:-$(( $(nproc) < 8 ? $(nproc) : 8 ))}
"$PY" -c "import torch, sys; ok = torch.cuda.is_available(); print('device:', torch.cuda.get_device_name() if ok else 'none', '| torch', torch.__version__); sys.exit(0 if ok else 3)" \
  || { echo "gpu_check: no CUDA device here" >&2; exit 3; }
"$PY" -m vgray.cli bench extract --set data.num_workers="$WORKERS" --json "$OUT/gpu_bench_extract.json" 2> >(grep -v -e DeprecationWarning -e warnings.warn >&2)
"$PY" -m vgray.cli bench extract --compile --set data.num_workers="$WORKERS" --json "$OUT/gpu_bench_extract_compiled.json" 2> >(grep -v -e DeprecationWarning -e warnings.warn >&2)
echo "== eager ==";    cat "$OUT/gpu_bench_extract.json"
echo; echo "== compiled =="; cat "$OUT/gpu_bench_extract_compiled.json"; echo
