#!/usr/bin/env bash
# The GPU check in one command (benchmarks/README.md, "GPU check"): run from anywhere,
# output under $OUT (or --out DIR). Extra arguments go to gpu_check.py, e.g.
#   bash benchmarks/gpu_check.sh --device cpu --quick --out /tmp/gpucheck   # the CPU rehearsal
set -o pipefail
cd "$(dirname "$0")/.." || exit 2
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 MPLBACKEND=Agg
exec python3 benchmarks/gpu_check.py "$@"
