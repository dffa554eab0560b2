#!/usr/bin/env bash
# Install bld and run the demo: writes bld-demo/grid.png (input, mask, results) and the results.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/bld demo -o bld-demo --overwrite "$@"
echo "open bld-demo/grid.png"
