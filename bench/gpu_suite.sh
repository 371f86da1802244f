#!/usr/bin/env bash
# One GPU, one command, every figure issue 18 asks for:  bash bench/gpu_suite.sh OUTDIR [--budget S]
#
# Needs jax (CUDA), flax, optax, orbax-checkpoint, torch and torchvision installed.
# grain, array-record, portpicker and tensorboardX are installed from the wheels in
# $FLAX_RESNET_WHEELS (default: .whl/ in the checkout) when Python lacks grain.
# Data: $FLAX_RESNET_DATA (default: .data/ in the checkout when present, else ../shared/data).
# The steps and the report: python -m flax_resnet.commands.bench suite --help
set -euo pipefail
out=${1:?usage: bash bench/gpu_suite.sh OUTDIR [--budget SECONDS]}
root=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-python3}
wheels=${FLAX_RESNET_WHEELS:-$root/.whl}
site=${TMPDIR:-/tmp}/flax-resnet-suite-site
if [ -z "${FLAX_RESNET_DATA:-}" ]; then  # the checkout's, from any directory
  if [ -d "$root/.data" ]; then data=$root/.data; else data=$(dirname "$root")/shared/data; fi
  export FLAX_RESNET_DATA=$data
fi
export PYTHONPATH="$root:$site${PYTHONPATH:+:$PYTHONPATH}"
if ! "$python" -c "import grain" 2>/dev/null; then
  if ! ls "$wheels"/*.whl >/dev/null 2>&1; then
    echo "error: grain is not installed and $wheels holds no wheels (set FLAX_RESNET_WHEELS)" >&2
    exit 2
  fi
  "$python" -m pip install -q --no-index --no-deps --target "$site" "$wheels"/*.whl
fi
exec "$python" -m flax_resnet.commands.bench suite "$@"
