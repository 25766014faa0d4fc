"""The package's size as the house rules read it: code lines, big files, long functions, import cycles.

    python benchmarks/code_size.py [dyncal] [-v]

Code lines leave out blank lines, comment-only lines and docstrings (module, class, function
and attribute docstrings). A file over 600 physical lines or a function over 100 lines
(``end_lineno - lineno + 1``) is listed; ``tests/test_layout.py`` fails on them.
"""

from __future__ import annotations

import ast
import io
import sys
import tokenize
from pathlib import Path

MAX_FILE_LINES = 600
MAX_FUNCTION_LINES = 100


def _docstring_lines(tree: ast.AST) -> set[int]:
    lines: set[int] = set()

    def is_text(node: ast.stmt) -> bool:
        return isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)

    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and is_text(body[0]):
                lines.update(range(body[0].lineno, (body[0].end_lineno or body[0].lineno) + 1))
        if isinstance(node, (ast.Module, ast.ClassDef)):  # attribute docstrings after an assignment
            for prev, cur in zip(node.body, node.body[1:], strict=False):
                if is_text(cur) and isinstance(prev, (ast.Assign, ast.AnnAssign)):
                    lines.update(range(cur.lineno, (cur.end_lineno or cur.lineno) + 1))
    return lines


def code_lines(source: str) -> int:
    """Lines holding code: no blank, comment-only or docstring lines."""
    skip = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER}
    code: set[int] = set()
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type not in skip:
            code.update(range(tok.start[0], tok.end[0] + 1))
    return len(code - _docstring_lines(ast.parse(source)))


def long_functions(source: str, limit: int = MAX_FUNCTION_LINES) -> list[tuple[str, int]]:
    """``(qualified name, lines)`` of every function longer than ``limit`` lines."""
    found: list[tuple[str, int]] = []

    def walk(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                size = (child.end_lineno or child.lineno) - child.lineno + 1
                if size > limit:
                    found.append((prefix + child.name, size))
                walk(child, prefix + child.name + ".")
            elif isinstance(child, ast.ClassDef):
                walk(child, prefix + child.name + ".")
            else:
                walk(child, prefix)

    walk(ast.parse(source), "")
    return found


def main() -> None:
    args = [a for a in sys.argv[1:] if not a.startswith("-")]
    root = Path(args[0] if args else "dyncal")
    files = sorted(root.rglob("*.py"))
    total_code = total_physical = 0
    for path in files:
        source = path.read_text(encoding="utf-8")
        n_code, n_physical = code_lines(source), len(source.splitlines())
        total_code += n_code
        total_physical += n_physical
        if "-v" in sys.argv:
            print(f"{n_code:6d} {path}")
        if n_physical > MAX_FILE_LINES:
            print(f"file over {MAX_FILE_LINES} lines: {path} ({n_physical})")
        for name, size in long_functions(source):
            print(f"function over {MAX_FUNCTION_LINES} lines: {path}:{name} ({size})")
    print(f"files {len(files)}  physical lines {total_physical}  code lines {total_code}")


if __name__ == "__main__":
    main()
