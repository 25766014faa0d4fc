"""``pkg.module:name`` specs: the user's code, imported and called.

Models, data sets and stage declarations are named by such specs; this module imports them
(optionally from a folder put first on ``sys.path``) and calls factories, so that whatever
the user's code raises becomes one line. It needs neither torch nor a run.
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path
from typing import Any

from dyncal.errors import DyncalError, describe, user_call

__all__ = ["import_object", "call_factory", "is_named"]


def import_object(spec: str, *, what: str, search_path: str | os.PathLike[str] | None = None) -> Any:
    """Import ``obj`` from a ``pkg.module:obj`` spec.

    Args:
        spec: ``"pkg.module:name"``.
        what: What it names, for messages (``"the model"``, or ``param("stages_spec")``).
        search_path: A folder put first on ``sys.path`` while importing.

    Raises:
        DyncalError: Malformed spec (a relative module too), module not importable (missing,
            or raising anything while imported: a syntax error, an exception, ``sys.exit``),
            or name missing; one line each.

    Example:
        >>> import_object("math:sqrt", what="the function")(9.0)
        3.0
    """
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise DyncalError(f"{what} must look like 'pkg.module:factory', got {spec!r}")
    if not all(part.isidentifier() for part in (*module_name.split("."), *attr.split("."))):
        raise DyncalError(
            f"{what} must look like 'pkg.module:factory' with dotted Python names (a relative module such as "
            f"'.mod' cannot be imported: give its folder with `search_path` and its plain name), got {spec!r}"
        )
    added = None  # the folder this call put on sys.path, taken off again after the import
    if search_path is not None:
        folder = str(Path(search_path).resolve())
        if not Path(folder).is_dir():
            raise DyncalError(f"`search_path` '{search_path}' is not a folder")
        if folder not in sys.path:
            sys.path.insert(0, folder)
            added = folder
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        top_missing = e.name == module_name.split(".")[0]
        hint = " (give its folder with `search_path` or add it to PYTHONPATH)" if top_missing else ""
        raise DyncalError(f"{what}: cannot import module '{module_name}': {e}{hint}") from e
    except Exception as e:  # noqa: BLE001 - importing runs the user's module, which may raise anything
        raise DyncalError(f"{what}: importing module '{module_name}' failed: {describe(e)}") from e
    except SystemExit as e:  # a script that parses its arguments when imported
        raise DyncalError(
            f"{what}: module '{module_name}' exited while being imported (SystemExit {e.code!r}); move its script "
            'code under `if __name__ == "__main__":`'
        ) from None
    finally:
        if added is not None:
            sys.path.remove(added)
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise DyncalError(f"{what}: module '{module_name}' has no attribute '{attr}'")
        obj = getattr(obj, part)
    return obj


def call_factory(
    spec: str,
    *,
    what: str,
    search_path: str | os.PathLike[str] | None = None,
    error: type[DyncalError] = DyncalError,
    makes: str = "the object",
) -> Any:
    """Import the ``pkg.module:factory`` named by ``spec`` and call it with no arguments.

    Args:
        spec: ``"pkg.module:factory"``.
        what: What it names, for messages (``"the model"``, or ``param("stages_spec")``).
        search_path: A folder put first on ``sys.path`` while importing.
        error: The error class to raise.
        makes: What the factory should return, for messages.

    Raises:
        DyncalError: (as ``error``) the spec cannot be imported, is not callable, or the
            call fails; the message has the factory's exception in one line.

    Example:
        >>> call_factory("collections:OrderedDict", what="the factory")
        OrderedDict()
    """
    try:
        factory = import_object(spec, what=what, search_path=search_path)
    except DyncalError as e:
        raise (e if isinstance(e, error) else error(str(e))) from e
    if not callable(factory):
        raise error(f"{what}: '{spec}' is not callable; name a function that returns {makes}")
    return user_call(factory, f"{what}: calling '{spec}()' failed", error)


def is_named(spec: str) -> bool:
    """Whether a recorded model or data spec names something: not empty, not a placeholder such as ``(imported)``.

    Example:
        >>> is_named("dyncal.demo:validation"), is_named("(imported)"), is_named("")
        (True, False, False)
    """
    return bool(spec) and not spec.startswith("(")
