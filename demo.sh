#!/usr/bin/env bash
# One command: set up a virtual environment and run dyncal end to end on the embedded
# default (a small multi-exit CNN on scikit-learn's handwritten digits; no downloads).
#   ./demo.sh [OUT_DIR]     (default: dyncal-demo/)
set -euo pipefail
cd "$(dirname "$0")"
VENV=${DYNCAL_VENV:-.venv}
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
if ! "$VENV/bin/python" -m pip install -q --disable-pip-version-check -c constraints.txt -e . >"$VENV/pip.log" 2>&1; then
  cat "$VENV/pip.log" >&2; echo "error: installing dyncal failed (log above)" >&2; exit 1
fi
exec "$VENV/bin/dyncal" demo --out "${1:-dyncal-demo}" --overwrite
