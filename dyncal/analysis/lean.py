"""Lean code for a stage's graph: what ``fx`` would run, with less Python around each op.

A small stage (the demo's take tens of microseconds) spends a good share of its time in
Python rather than in its ops: ``GraphModule.__call__``'s wrapper, ``nn.Module``'s hook
dispatch, nested ``getattr`` for every parameter (``getattr(self.stage1, "0").weight`` is two
``nn.Module.__getattr__`` calls), a Python frame per ``torch.ops.aten.*`` overload, and the
lists of constant arguments built again on every call. :func:`lean_function` generates the
same computation as the graph's own code, node for node, in the same order and with the
same arguments, so the outputs are bit for bit those of the module:

* each ATen overload is called through the C++ callable ``OpOverload.__call__`` itself calls
  (``op._op``, taken only while the overload has no Python dispatcher);
* parameters and buffers are read from their owner's ``_parameters`` / ``_buffers`` dict at
  call time, the owner found through ``_modules`` (moving the module with ``.to()`` or replacing
  a submodule is seen), or bound once as values when given
  (an exported program's weights, passed in as graph inputs);
* constant arguments are bound once (a call of an ATen overload never keeps or changes them);
* intermediates are released after their last use, as ``fx``'s code does.

:func:`plain_call` says whether calling a module's ``forward`` directly is what calling
the module does (no hooks, no tracing, no ``torch.compile``); callers fall back to the
module otherwise. Graphs that use features this generator does not reproduce (a custom
codegen, ``*args`` inputs, default values), or whose graph was edited since its code was
generated (``recompile``), get None, and run through their module.

Example:
    >>> import torch
    >>> from dyncal.analysis.stages import build_stages
    >>> from dyncal.demo import DigitsExitNet
    >>> stage = build_stages(DigitsExitNet().eval(), torch.zeros(2, 1, 8, 8)).modules[0]
    >>> fast = lean_function(stage)
    >>> x = torch.randn(3, 1, 8, 8)
    >>> all(torch.equal(a, b) for a, b in zip(fast(x), stage(x)))
    True
"""

from __future__ import annotations

import itertools
import linecache
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import fx, nn
from torch.nn.modules import module as _module

__all__ = ["caller", "lean_function", "plain_call"]

_GLOBAL_HOOKS = tuple(
    getattr(_module, name, {})
    for name in (
        "_global_backward_pre_hooks",
        "_global_backward_hooks",
        "_global_forward_hooks",
        "_global_forward_pre_hooks",
    )
)
"""torch's module-wide hook registries (mutated in place by ``register_module_*_hook``, never rebound)."""

_serial = itertools.count()


def plain_call(m: nn.Module) -> bool:
    """Whether ``m(*args)`` is exactly ``m.forward(*args)`` right now.

    It is unless a hook is registered (on ``m`` or for every module), a ``torch.jit`` trace
    is running, or ``m.compile()`` replaced its call: what ``nn.Module.__call__`` checks.
    """
    return not (
        m._forward_hooks
        or m._forward_pre_hooks
        or m._backward_hooks
        or m._backward_pre_hooks
        or getattr(m, "_compiled_call_impl", None) is not None
        or any(_GLOBAL_HOOKS)
        or torch._C._get_tracing_state()
    )


class _Unsupported(Exception):
    """The graph uses something the lean code does not reproduce exactly."""


def _direct_target(target: Any) -> Any:
    """The callable to call for ``target``: an ATen overload's C++ entry when that is what it calls."""
    # torch internals, read defensively: another torch version without them gets the overload itself
    if type(target) is torch._ops.OpOverload and getattr(target, "_pyobj_dispatcher", True) is None:
        return getattr(target, "_op", target)
    return target


def _has_node(a: Any) -> bool:
    if isinstance(a, fx.Node):
        return True
    if isinstance(a, (list, tuple)):
        return any(_has_node(v) for v in a)
    if isinstance(a, dict):
        return any(_has_node(v) for v in a.values())
    if isinstance(a, slice):
        return any(_has_node(v) for v in (a.start, a.stop, a.step))
    return False


def _plain(a: Any) -> Any:
    """``a`` with fx's immutable containers as the plain ones its generated code builds."""
    if isinstance(a, tuple) and type(a) is not tuple and hasattr(a, "_fields"):
        return type(a)(*(_plain(v) for v in a))
    if isinstance(a, (list, tuple)):
        return (list if isinstance(a, list) else tuple)(_plain(v) for v in a)
    if isinstance(a, dict):
        return {k: _plain(v) for k, v in a.items()}
    return a


class _Writer:
    """Source lines and the names they bind, for one generated function."""

    def __init__(self) -> None:
        self.bound: dict[str, Any] = {}
        self.names: dict[fx.Node, str] = {}
        self.lines: list[str] = []

    def bind(self, value: Any, prefix: str = "c") -> str:
        name = f"_{prefix}{len(self.bound)}"
        self.bound[name] = value
        return name

    def arg(self, a: Any, share: bool) -> str:
        """Source for the argument ``a``: a node's variable, a bound constant, or a container of those.

        ``share``: a constant container may be bound once (the callee neither keeps nor changes
        it); otherwise containers are built on each call, as fx's code builds them.
        """
        if isinstance(a, fx.Node):
            return self.names[a]
        if share and not _has_node(a):
            return self.bind(_plain(a))
        if isinstance(a, list) or type(a) is tuple:
            inner = ", ".join(self.arg(v, share) for v in a)
            if isinstance(a, list):
                return f"[{inner}]"
            return f"({inner},)" if len(a) == 1 else f"({inner})"
        if isinstance(a, dict):
            return "{" + ", ".join(f"{self.bind(k)}: {self.arg(v, share)}" for k, v in a.items()) + "}"
        if isinstance(a, slice):
            return f"{self.bind(slice, 'f')}({', '.join(self.arg(v, share) for v in (a.start, a.stop, a.step))})"
        if _has_node(a):  # a named tuple holding nodes
            raise _Unsupported(f"argument of type {type(a).__name__}")
        return self.bind(a)

    def call(self, fn: str, args: tuple[Any, ...], kwargs: Mapping[str, Any], share: bool) -> str:
        """Source calling ``fn`` with the node arguments ``args`` and ``kwargs``."""
        parts = [self.arg(a, share) for a in args]
        for k, v in kwargs.items():
            if not k.isidentifier():
                raise _Unsupported(f"keyword {k!r}")
            parts.append(f"{k}={self.arg(v, share)}")
        return f"{fn}({', '.join(parts)})"


def _attribute(root: nn.Module, target: str, w: _Writer) -> str:
    """Source reading ``root``'s attribute ``target`` (dotted) where ``nn.Module`` finds it, at call time.

    Each submodule on the path is looked up at call time too, as ``fx``'s ``getattr`` chain does:
    a submodule replaced after the code was made is the one read.
    """
    *path, leaf = target.split(".")
    owner = root
    src = ""
    for part in path:
        if part not in owner._modules or not isinstance(owner._modules[part], nn.Module):
            raise _Unsupported(f"attribute path {target!r}")
        src = f"{src}._modules[{part!r}]" if src else f"{w.bind(root._modules, 'd')}[{part!r}]"
        owner = owner._modules[part]  # type: ignore[assignment]
    for registry, field in (
        (owner.__dict__, "__dict__"),  # an attribute outside the registries (a constant tensor)
        (owner._parameters, "_parameters"),
        (owner._buffers, "_buffers"),
        (owner._modules, "_modules"),
    ):
        if leaf in registry:
            return f"{src}.{field}[{leaf!r}]" if src else f"{w.bind(registry, 'd')}[{leaf!r}]"
    raise _Unsupported(f"attribute {target!r} not found")


def _last_uses(graph: fx.Graph) -> dict[fx.Node, list[fx.Node]]:
    """For each node, the values whose last use it is (released right after it, as fx does)."""
    seen: set[fx.Node] = set()
    out: dict[fx.Node, list[fx.Node]] = {}
    for node in reversed(graph.nodes):
        for used in node.all_input_nodes:
            if used not in seen:
                seen.add(used)
                out.setdefault(node, []).append(used)
    return out


def _body(gm: fx.GraphModule, values: Mapping[int, Any], w: _Writer) -> list[str]:
    """The function's parameters; appends its body to ``w.lines``."""
    params: list[str] = []
    last = _last_uses(gm.graph)
    placeholders = 0
    for i, node in enumerate(gm.graph.nodes):
        name = w.names[node] = f"v{i}"
        if node.op == "placeholder":
            if node.args or str(node.target).startswith("*"):
                raise _Unsupported("a placeholder with a default value or *args")
            if placeholders in values:
                w.lines.append(f"{name} = {w.bind(values[placeholders], 'w')}")
            else:
                params.append(name)
            placeholders += 1
            continue
        if node.op == "get_attr":
            expr = _attribute(gm, str(node.target), w)
        elif node.op == "call_function":
            share = type(node.target) is torch._ops.OpOverload
            expr = w.call(w.bind(_direct_target(node.target), "f"), node.args, node.kwargs, share)
        elif node.op == "call_method":
            method = str(node.target)
            if not method.isidentifier() or not node.args:
                raise _Unsupported(f"method {method!r}")
            expr = w.call(f"{w.arg(node.args[0], False)}.{method}", node.args[1:], node.kwargs, False)
        elif node.op == "call_module":
            expr = w.call(_attribute(gm, str(node.target), w), node.args, node.kwargs, False)
        elif node.op == "output":
            w.lines.append(f"return {w.arg(node.args[0], False)}")
            continue
        else:
            raise _Unsupported(f"node kind {node.op!r}")
        w.lines.append(f"{name} = {expr}")
        gone = [w.names[n] for n in last.get(node, []) if n is not node] + ([] if node.users else [name])
        if gone:
            w.lines.append(f"del {', '.join(gone)}")
    return params


def lean_function(gm: nn.Module, values: Mapping[int, Any] | None = None) -> Callable[..., Any] | None:
    """A function computing what ``gm.forward`` computes, with less Python per op (see the module docs).

    Args:
        gm: A ``torch.fx.GraphModule`` (anything else gets None).
        values: Values of some inputs, by position among the graph's placeholders (an exported
            program's weights); the function takes the others, in the graph's order.

    Returns:
        The function, or None when the graph cannot be reproduced exactly (run ``gm`` then).
    """
    if not isinstance(gm, fx.GraphModule) or type(gm.graph._codegen) is not fx.graph.CodeGen:
        return None
    if gm.graph._codegen._body_transformer is not None:
        return None
    if gm.graph.python_code(root_module="self").src != gm.code:  # edited, not recompiled: gm runs its old code
        return None
    w = _Writer()
    try:
        params = _body(gm, values or {}, w)
    except _Unsupported:
        return None
    src = (
        f"def _make({', '.join(w.bound)}):\n"
        f"    def lean_forward({', '.join(params)}):\n"
        + "".join(f"        {line}\n" for line in w.lines)
        + "    return lean_forward\n"
    )
    filename = f"<lean {type(gm).__name__} {next(_serial)}>"
    linecache.cache[filename] = (len(src), None, src.splitlines(keepends=True), filename)  # tracebacks show it
    scope: dict[str, Any] = {}
    exec(compile(src, filename, "exec"), scope)  # noqa: S102 - source generated above
    fn: Callable[..., Any] = scope["_make"](*w.bound.values())
    return fn


def caller(module: nn.Module) -> Callable[..., Any]:
    """``module``, or for an ``fx`` graph a function doing what calling it does, faster.

    The function runs :func:`lean_function`'s code while calling the module would only run
    its ``forward`` (:func:`plain_call`, the graph not recompiled since, no ``forward`` set on the
    instance); else the module.
    """
    lean = lean_function(module)
    if lean is None:
        return module
    forward = type(module).forward
    attributes = module.__dict__  # a ``forward`` set on the instance is what calling the module runs

    def call(*args: Any) -> Any:
        if type(module).forward is forward and "forward" not in attributes and plain_call(module):
            return lean(*args)
        return module(*args)

    return call
