#!/usr/bin/env bash
# Install bld with its test dependencies and run the whole offline test suite on the CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh "[test]"
.venv/bin/python -m pytest "$@"
