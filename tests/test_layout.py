"""House rules on the package's shape: no file over 600 lines, no function over 100."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import dyncal

PACKAGE = Path(dyncal.__file__).parent
_spec = importlib.util.spec_from_file_location("code_size", PACKAGE.parent / "benchmarks" / "code_size.py")
assert _spec is not None and _spec.loader is not None
code_size = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(code_size)


def oversized() -> set[str]:
    """Every file over the file limit and every function over the function limit, as ``path[:name]``."""
    found: set[str] = set()
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        source = path.read_text(encoding="utf-8")
        if len(source.splitlines()) > code_size.MAX_FILE_LINES:
            found.add(rel)
        found.update(f"{rel}:{name}" for name, _ in code_size.long_functions(source))
    return found


def test_no_file_over_600_lines_and_no_function_over_100():
    found = oversized()
    assert not found, f"over the size limits (split by responsibility): {sorted(found)}"


def test_the_counter_sees_long_functions_and_skips_docstrings():
    body = "\n".join(f"    x{i} = {i}" for i in range(101))
    source = f'"""Doc."""\n\n\ndef f():\n    """Doc\n    more."""\n{body}\n'
    assert code_size.long_functions(source) == [("f", 104)]  # def, two docstring lines, 101 assignments
    assert code_size.code_lines(source) == 102  # def line and 101 assignments
