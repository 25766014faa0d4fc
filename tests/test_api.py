"""The Python entry points: reading a run needs numpy only; every public name resolves."""

from __future__ import annotations

import subprocess
import sys

import dyncal


def test_reading_runs_does_not_import_torch():
    code = "import sys, dyncal; dyncal.load_run; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_every_public_name_resolves_and_is_documented():
    for name in dyncal.__all__:
        obj = getattr(dyncal, name)
        if callable(obj):
            assert obj.__doc__, f"dyncal.{name} has no docstring"
