#!/usr/bin/env bash
# One command: set up a virtual environment and run the whole test suite.
#   ./test.sh            (extra arguments go to pytest, e.g. ./test.sh -k solve; -n 0: one process)
set -euo pipefail
cd "$(dirname "$0")"
VENV=${DYNCAL_VENV:-.venv}
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
if ! "$VENV/bin/python" -m pip install -q --disable-pip-version-check -c constraints.txt -e ".[test]" >"$VENV/pip.log" 2>&1; then
  cat "$VENV/pip.log" >&2; echo "error: installing dyncal failed (log above)" >&2; exit 1
fi
# Optional system packages: Fashion-MNIST (real-data tests) and poppler (PDF page rendering).
# Tests that need them skip with a reason when they cannot be installed.
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  if ! dpkg -s dataset-fashion-mnist poppler-utils >/dev/null 2>&1; then
    (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist poppler-utils) >/dev/null 2>&1 \
      || echo "note: could not install dataset-fashion-mnist/poppler-utils; those tests will skip" >&2
  fi
fi
# House rules first (fast): lint, formatting and strict typing of the package.
"$VENV/bin/ruff" check dyncal tests benchmarks
"$VENV/bin/ruff" format --check --quiet dyncal tests benchmarks
"$VENV/bin/mypy" dyncal
# One worker per core, at most 4 (each imports torch); a test file stays on one worker, so its
# module fixtures are built once. `./test.sh -n 0` runs in one process.
WORKERS=${DYNCAL_TEST_WORKERS:-$(python3 -c 'import os; print(max(1, min(4, len(os.sched_getaffinity(0)))))')}
exec "$VENV/bin/python" -m pytest -n "$WORKERS" --dist loadfile "$@"
