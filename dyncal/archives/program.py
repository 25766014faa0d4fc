"""The program JSON of a ``.pt2`` archive: every string torch evaluates, pastes into code or resolves by name.

See :mod:`dyncal.archives`, routes 5-9.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from typing import Any

from dyncal.archives.container import Refuse
from dyncal.archives.expressions import FQN, IDENT, check_expression

__all__ = ["check_program"]


_SYM_TARGETS = frozenset(
    [
        f"_operator.{n}"
        for n in "eq ne le ge lt gt neg pos mul add sub floordiv mod pow truediv and_ or_ not_ "
        "lshift rshift getitem".split()
    ]
    + ["math.trunc"]
    + [f"torch.sym_{n}" for n in "not int float ite max min sqrt".split()]
)
_OP_TARGET = re.compile(r"torch\.ops\.(aten|prims)\.([A-Za-z_][A-Za-z0-9_]*)\.([A-Za-z_][A-Za-z0-9_]*)")
_NAME_KEYS = frozenset({"name", "as_name", "custom_obj_name", "token_name", "forward_arg_names"})
_PATH_KEYS = frozenset({"parameter_name", "buffer_name", "tensor_constant_name", "fqn"})
_REFUSED_ARGS = {
    "as_operator": "an operator passed by name",
    "as_graph": "a subgraph (higher-order operators)",
    "as_custom_obj": "a custom object",
}
_INPUT_KINDS = frozenset({"user_input", "parameter", "buffer", "tensor_constant"})
_OUTPUT_KINDS = frozenset(
    {
        "user_output",
        "loss_output",
        "buffer_mutation",
        "parameter_mutation",
        "user_input_mutation",
        "gradient_to_parameter",
        "gradient_to_user_input",
    }
)
_TREE_TYPES = frozenset({"builtins.tuple", "builtins.list", "builtins.dict"})
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\u2028\u2029\x85]")


def _walk(doc: Any) -> Iterator[tuple[str | None, Any]]:
    """Every ``(key, value)`` of a JSON document, depth first, without recursion (keys of lists: None)."""
    stack: list[tuple[str | None, Any]] = [(None, doc)]
    while stack:
        key, value = stack.pop()
        yield key, value
        if isinstance(value, Mapping):
            stack.extend((str(k), v) for k, v in value.items())
        elif isinstance(value, list):
            stack.extend((key, v) for v in value)


def _operator_ok(target: str) -> str | None:
    """Why a node may not call ``target`` (None when it may)."""
    if target in _SYM_TARGETS:
        return None
    m = _OP_TARGET.fullmatch(target)
    if m is None:
        return "not an aten or prims operator"
    import torch

    try:
        op = getattr(getattr(getattr(torch.ops, m.group(1)), m.group(2)), m.group(3))
    except (AttributeError, RuntimeError):
        return "no such operator"
    if not isinstance(op, torch._ops.OpOverload):
        return "not an operator overload"
    if any(a.name == "filename" for a in op._schema.arguments):
        return "it reads or writes files"
    return None


def _check_tree_spec(spec: object, entry: str, refuse: Refuse) -> None:
    """A pytree spec (JSON text): tuples, lists, dicts and leaves only, so nothing is imported by name."""
    try:
        protocol, root = json.loads(spec) if isinstance(spec, str) else (None, None)
    except (ValueError, TypeError, RecursionError):
        refuse.code("a pytree spec", entry, spec, "not a spec dyncal reads")
    stack = [root]
    while stack:
        node = stack.pop()
        if not isinstance(node, Mapping) or set(node) != {"type", "context", "children_spec"} or protocol != 1:
            refuse.code("a pytree spec", entry, spec, "not a spec dyncal reads")
        typ, context, children = node["type"], node["context"], node["children_spec"]
        if typ is None and context is None and children == []:
            continue
        if typ not in _TREE_TYPES or not isinstance(children, list) or not isinstance(context, str):
            refuse.code("a pytree type", entry, typ, "loading would import it by name")
        try:
            keys = json.loads(context)
        except (ValueError, RecursionError):
            keys = ...
        if typ == "builtins.dict":
            ok = isinstance(keys, list) and all(isinstance(k, (str, int)) and not isinstance(k, bool) for k in keys)
        else:
            ok = keys is None
        if not ok:
            refuse.code("a pytree context", entry, context, "loading would read objects from it")
        stack.extend(children)


def check_program(doc: Any, entry: str, refuse: Refuse) -> None:
    """The program JSON: every string torch evaluates, pastes into code or resolves by name."""
    if not isinstance(doc, Mapping) or not isinstance(doc.get("graph_module"), Mapping):
        refuse.malformed(f"entry {entry!r} is not a serialized program")
    ranges = doc.get("range_constraints") or {}
    if not isinstance(ranges, Mapping):
        refuse.malformed(f"entry {entry!r}: range_constraints is not a mapping")
    symbols: set[str] = set()
    for key, bounds in ranges.items():
        try:
            symbols |= check_expression(key, mode="declare")
        except ValueError as e:
            refuse.code("a symbolic expression", entry, key, f"not shape arithmetic: {e}")
        if not isinstance(bounds, Mapping) or not all(
            v is None or (isinstance(v, int) and not isinstance(v, bool)) for v in bounds.values()
        ):
            refuse.malformed(f"entry {entry!r}: the range of {key!r} is not integers")
    declared = frozenset(symbols)
    guards = doc.get("guards_code") or []
    if not isinstance(guards, list):
        refuse.malformed(f"entry {entry!r}: guards_code is not a list")
    for guard in guards:
        try:
            check_expression(guard, mode="guard")
        except ValueError as e:
            refuse.code("guard code", entry, guard, f"not a comparison of input sizes: {e}")
    graph_module = doc["graph_module"]
    for key, value in _walk(doc):
        if isinstance(key, str) and _CONTROL.search(key):
            refuse.code("a name", entry, key, "control characters")
        if isinstance(value, str):
            if _CONTROL.search(value):
                refuse.code("a string", entry, value, "control characters end lines of the generated code")
            if key == "expr_str":
                try:
                    check_expression(value, symbols=declared)
                except ValueError as e:
                    refuse.code("a symbolic expression", entry, value, f"not shape arithmetic: {e}")
            elif key in _NAME_KEYS and not IDENT.fullmatch(value):
                refuse.code("a name", entry, value, "not an identifier")
            elif key in _PATH_KEYS and not (FQN.fullmatch(value) or (key == "fqn" and value == "")):
                refuse.code("a module path", entry, value, "not a dotted name")
            elif key in ("in_spec", "out_spec"):
                _check_tree_spec(value, entry, refuse)
        if key in _REFUSED_ARGS and value is not None:
            refuse.unsupported(f"{_REFUSED_ARGS[key]} in {entry!r}")
        if key in ("tensor_values", "sym_int_values", "sym_float_values", "sym_bool_values") and isinstance(
            value, Mapping
        ):
            for name in value:
                if not IDENT.fullmatch(name):
                    refuse.code("a name", entry, name, "not an identifier")
        if key == "custom_obj_values" and value:
            refuse.unsupported(f"custom objects in {entry!r}")
        if key == "nodes" and isinstance(value, list):
            for node in value:
                target = node.get("target") if isinstance(node, Mapping) else None
                why = _operator_ok(target) if isinstance(target, str) else "not a name"
                if why is not None:
                    refuse.unsupported(f"a call of {target!r} in {entry!r} ({why})")
    graph = graph_module.get("graph")
    signature = graph_module.get("signature")
    if not isinstance(graph, Mapping) or not isinstance(signature, Mapping):
        refuse.malformed(f"entry {entry!r} has no graph or signature")
    for value in graph.get("inputs") or []:
        if not isinstance(value, Mapping) or set(value) != {"as_tensor"}:
            refuse.unsupported(f"a graph input that is not a tensor in {entry!r}")
    for specs, kinds in (("input_specs", _INPUT_KINDS), ("output_specs", _OUTPUT_KINDS)):
        for spec in signature.get(specs) or []:
            kind = next(iter(spec), None) if isinstance(spec, Mapping) and len(spec) == 1 else None
            if kind not in kinds:
                refuse.unsupported(f"a program {specs[:-6]} of kind {kind!r} in {entry!r}")
