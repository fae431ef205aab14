#!/usr/bin/env bash
# The GPU check in one command, on a machine with one NVIDIA GPU, its own torch and no network:
#   bash benchmarks/gpu_check.sh [RESULTS_DIR] [gpu_check.py options, e.g. --budget 300 or --dry]
# The project runs from this checkout (PYTHONPATH) against the machine's torch: nothing is installed over
# it. The few pure-Python wheels it lacks (transformer-lens and what that imports) come in .whl/,
# prepared beforehand on a machine with PyPI by benchmarks/gpu_wheels.sh.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-${OUT:-gpu-check}}
[ $# -gt 0 ] && shift
if ls .whl/*.whl >/dev/null 2>&1; then
  site=/tmp/smearlens-site
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" .whl/*.whl \
    || { echo "gpu_check: installing the wheels in .whl/ failed" >&2; exit 2; }
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
python3 -c "import transformer_lens, trainer.model" \
  || { echo "gpu_check: the project does not import here; prepare .whl/ with benchmarks/gpu_wheels.sh" >&2; exit 2; }
exec python3 benchmarks/gpu_check.py --out "$out" "$@"
