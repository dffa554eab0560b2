#!/usr/bin/env bash
# Create .venv and install bld into it. On machines without a GPU this picks PyTorch's CPU wheel;
# with a CUDA machine, install your CUDA build of torch first and this leaves it in place.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
[ -x .venv/bin/python ] || python3 -m venv .venv
. .venv/bin/activate
python -m pip install --quiet --upgrade pip
if ! python -c "import torch" 2>/dev/null; then
  python -m pip install --quiet "torch==2.13.0"
fi
python -m pip install --quiet -e ".${extras}"
