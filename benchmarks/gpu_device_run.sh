#!/usr/bin/env bash
# The GPU throughput benchmark (issue 16) in one call on a lent GPU machine, which has torch,
# transformers and triton but no deepspeed, no liger-kernel and no network.
#
#   here:   make gpu-wheels                                  # .gpu-wheels/ for the machine's Python 3.12
#   there:  bash benchmarks/gpu_device_run.sh [ARGS]         # device tool: carry [".gpu-wheels"]
#
# The carried wheels go into a private folder put first on PYTHONPATH (the machine's own packages
# stay untouched); the versions and the GPU are printed first, then benchmarks/gpu_throughput.py runs
# with ARGS (e.g. --steps 10 --warmup 5, --rows engine). Logs and results.json land in $OUT.
set -euo pipefail
PY=${PY:-python3}
OUT=${OUT:-/tmp/zhllama-gpu-out}
SITE=${SITE:-/tmp/zhllama-site}
WORK=${WORK:-/tmp/gpu_bench}
WHEELS=${WHEELS:-.gpu-wheels}
mkdir -p "$OUT" "$SITE"
shopt -s nullglob
wheels=("$WHEELS"/*.whl)
if [ ${#wheels[@]} -eq 0 ]; then
    echo "no wheels in $WHEELS: run 'make gpu-wheels' here and carry .gpu-wheels" >&2
    exit 2
fi
"$PY" -m pip install -q --no-index --no-deps --target "$SITE" "${wheels[@]}"
export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
"$PY" benchmarks/gpu_env.py 2>&1 | tee "$OUT/env.txt"
"$PY" benchmarks/gpu_throughput.py --work "$WORK" --results "$OUT/results.json" "$@" 2>&1 | tee "$OUT/bench.log"
