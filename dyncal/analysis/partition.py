"""Automatic stages: a multi-exit model exported with ``torch.export`` and its graph cut at the exits.

Every op of the exported graph belongs to the first exit among whose ancestors it appears;
ops no exit needs go to the last stage. An in-place op counts as an input of every later op
that reads the memory it writes (through any view), and an op that reads that memory before
the write counts as an input of the write, so a write lands in the stage of its first reader
and never before a read it must follow. Each stage receives the values later stages need
(its *carry*, see :mod:`dyncal.analysis.stages` for the protocol); sizes are recomputed
from the tensors a stage receives rather than carried, so that they follow the batch when
rows leave. The carried values also tell whether rows can leave between stages at all.

:func:`export_partition` gives the stage modules and what
:class:`dyncal.analysis.stages.Stages` needs to run them; :func:`quiet_export_logs` keeps
export's own narration off the terminal (a failure becomes one line).

Example:
    >>> from dyncal.demo import DigitsExitNet
    >>> part = export_partition(DigitsExitNet().eval(), torch.zeros(2, 1, 8, 8))
    >>> len(part["modules"]), part["dynamic_batch"], part["drop_rows_reason"] is None
    (4, True, True)
"""

from __future__ import annotations

import contextlib
import io
import logging
import operator
from collections.abc import Iterator, Sequence
from typing import Any, TypedDict

import torch
from torch import fx, nn

from dyncal.errors import ProfileError, describe
from dyncal.inputs import Inputs, InputSignature, batch_size, is_single

__all__ = ["EXPORT_HINT", "Partition", "export_partition", "quiet_export_logs"]

log = logging.getLogger(__name__)

# Export inserts these for its own input checks; they compute nothing an exit needs and
# would pin the batch size, so stages leave them out (the partition is checked numerically).
_DROPPED_TARGETS = {
    "aten._assert_scalar.default",
    "aten._assert_tensor_metadata.default",
    "aten.sym_constrain_range_for_size.default",
    "aten.sym_constrain_range.default",
}

EXPORT_HINT = (
    "declare the stages by hand: give the model a 'dyncal_stages()' method or pass "
    "`stages_spec` pkg.module:fn (see dyncal.analysis.stages)"
)
"""What to do when a model cannot be exported or its exported stages are wrong."""


class Partition(TypedDict):
    """A model's exported graph cut into stages at its exits.

    The keyword arguments of :class:`dyncal.analysis.stages.Stages` (``source="export"``).

    Attributes:
        modules: The ``K`` stage modules, exit 1 first (sharing the export's parameters).
        batch_dims: For each stage, the batch dimension of each carried value (None for
            values without one); None when export pinned the batch size.
        dynamic_batch: Whether the stages run at any batch size (export kept it symbolic).
        example_batch_size: Batch size of the example the model was exported with.
        whole: The unsplit graph the stages were cut from.
        drop_rows_reason: Why rows cannot leave between stages, None when they can.
        dim_symbols: The symbolic dimensions of what each stage receives, ``K`` tuples (the
            inputs, then each stage's carry), one ``{dim: symbol}`` per value: the batch and,
            for models of several inputs, the sequence length. Exporting a stage again
            (``dyncal export``) keeps exactly these dimensions dynamic.
    """

    modules: tuple[nn.Module, ...]
    batch_dims: tuple[tuple[int | None, ...], ...] | None
    dynamic_batch: bool
    example_batch_size: int
    whole: nn.Module
    drop_rows_reason: str | None
    dim_symbols: tuple[tuple[dict[int, str], ...], ...]


def export_partition(
    model: nn.Module, example: Inputs, *, dynamic_batch: bool = True, signature: InputSignature | None = None
) -> Partition:
    """Export ``model`` with ``torch.export`` and cut its graph into stages at the exits.

    Args:
        model: A multi-exit model in eval mode; ``model(example)`` returns ``K`` logits.
        example: One input batch ``(B, ...)`` (B >= 2 keeps the batch dimension dynamic): a
            tensor, or a tuple or dict of tensors (:mod:`dyncal.inputs`), exported as args or kwargs.
        dynamic_batch: Ask export for a dynamic batch dimension (falls back to the example's
            batch size when the model pins it).
        signature: The inputs' signature (default: the example's); its dynamic dimensions (a
            sequence length) are exported dynamic too.

    Raises:
        ProfileError: The model cannot be exported (with export's reason in one line), or
            an exit's output is not an op computed by the graph.
    """
    if is_single(example):
        return _partition(_export(model, example, dynamic_batch=dynamic_batch).module(), example)
    signature = signature or InputSignature.of(example)
    return _partition(_export_inputs(model, example, signature, dynamic_batch).module(), example, signature.names)


def _export_inputs(model: nn.Module, example: Inputs, signature: InputSignature, dynamic_batch: bool) -> Any:
    """Export a model of several inputs: a tuple as args, a dict as kwargs (in the signature's order)."""
    from torch.export import Dim

    flat = signature.flatten(example)
    shapes = [
        {**({0: Dim.AUTO} if dynamic_batch else {}), **{d + 1: Dim.AUTO for d in spec.dynamic}}
        for spec in signature.inputs
    ]
    if signature.kind == "dict":
        args: tuple[Any, ...] = ()
        kwargs: dict[str, Any] | None = dict(zip(signature.names, flat, strict=True))
        dynamic: Any = dict(zip(signature.names, shapes, strict=True))
    else:
        args, kwargs, dynamic = tuple(flat), None, tuple(shapes)
    return _exported(model, args, kwargs, dynamic, f" on inputs {signature.describe()}")


def _exported(model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any] | None, dynamic: Any, on: str) -> Any:
    """``torch.export.export`` with its narration quiet; a failure is one ProfileError line (``on``: the inputs)."""
    try:
        with quiet_export_logs():
            return torch.export.export(model, args, kwargs, dynamic_shapes=dynamic, strict=False)
    except Exception as e:  # noqa: BLE001 - export raises many types for unsupported models
        log.debug("torch.export failed", exc_info=True)
        raise ProfileError(
            f"cannot export {type(model).__name__} with torch.export{on} ({describe(e)}); " + EXPORT_HINT
        ) from e


# Loggers through which export narrates its failures on stderr (it also prints the partial
# graph there); quiet while we export, since a failure becomes one ProfileError line. The
# full story is logged at DEBUG.
_EXPORT_LOGGERS = ("torch.fx.experimental.symbolic_shapes", "torch._dynamo", "torch._export", "torch.export")


@contextlib.contextmanager
def quiet_export_logs() -> Iterator[None]:
    """Silence export's loggers and stderr for the block; restore both afterwards."""
    loggers = [logging.getLogger(name) for name in _EXPORT_LOGGERS]
    levels = [lg.level for lg in loggers]
    captured = io.StringIO()
    try:
        for lg in loggers:
            lg.setLevel(logging.CRITICAL)
        with contextlib.redirect_stderr(captured):
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)
        if captured.getvalue():
            log.debug("torch.export wrote to stderr:\n%s", captured.getvalue())


def _export(model: nn.Module, example: torch.Tensor, *, dynamic_batch: bool) -> Any:
    from torch.export import Dim

    return _exported(model, (example,), None, ({0: Dim.AUTO},) if dynamic_batch else None, "")


def _describe(arg: Any) -> str:
    if isinstance(arg, fx.Node):
        if arg.op == "placeholder":
            return f"the model's input '{arg.name}'"
        if arg.op == "get_attr":
            return f"the parameter or buffer '{arg.target}'"
        return f"node '{arg.name}'"
    return f"the constant {arg!r}"


def _exit_outputs(gm: fx.GraphModule) -> list[fx.Node]:
    """The graph's ``K`` exit outputs, exit 1 first, each an op the graph computes."""
    out_node = next(n for n in gm.graph.nodes if n.op == "output")
    flat = out_node.args[0]
    flat = list(flat) if isinstance(flat, (tuple, list)) else [flat]
    out_spec = getattr(gm, "_out_spec", None)
    static = out_spec is not None and out_spec.is_leaf()  # one (B, C) tensor: a static model, K = 1
    if out_spec is not None and not static and getattr(out_spec, "type", None) not in (list, tuple):
        raise ProfileError(
            f"the model returns {getattr(out_spec, 'type', out_spec)}; a multi-exit model must "
            "return a list or tuple of K >= 2 logits tensors (B, C), exit 1 first"
        )
    if out_spec is not None and not static and out_spec.num_leaves != getattr(out_spec, "num_children", len(flat)):
        raise ProfileError(
            f"the model returns a nested structure with {out_spec.num_leaves} tensors; "
            "return a flat list or tuple of K logits tensors (B, C), exit 1 first"
        )
    if not flat:
        raise ProfileError("the model's graph has no output; a model returns K >= 1 logits tensors (B, C)")
    for i, o in enumerate(flat):
        if not isinstance(o, fx.Node) or o.op not in ("call_function", "call_method", "call_module"):
            raise ProfileError(
                f"exit {i + 1}'s output is not computed by the model's graph (it is "
                f"{_describe(o)}); every exit must return logits computed from the input"
            )
    return flat


def _dropped(n: fx.Node) -> bool:
    """Whether an op is one of export's own input checks (see :data:`_DROPPED_TARGETS`)."""
    if n.op == "call_module" and str(n.target).startswith("_guards_fn"):
        return True
    return n.op == "call_function" and str(n.target) in _DROPPED_TARGETS


def _memory_inputs(graph: fx.Graph) -> dict[fx.Node, list[fx.Node]]:
    """Inputs the data flow does not show: in-place writes before a read, reads before a write.

    Memory is named by its root, the op that allocated it; views and in-place ops return
    their argument's memory (the op's schema says so, ``Tensor(a)``), and so do the items
    of a list of views.
    """
    root: dict[fx.Node, fx.Node] = {}
    writes: dict[fx.Node, list[fx.Node]] = {}
    reads: dict[fx.Node, list[fx.Node]] = {}
    extra: dict[fx.Node, list[fx.Node]] = {}
    for n in graph.nodes:
        read = {root.get(a, a) for a in n.all_input_nodes}
        after = [w for r in read for w in writes.get(r, ())]
        schema = getattr(n.target, "_schema", None) if n.op == "call_function" else None
        aliased = [
            (spec.alias_info, a)
            for spec, a in zip(schema.arguments if schema else (), n.args, strict=False)
            if spec.alias_info is not None and isinstance(a, fx.Node)
        ]
        written = {root.get(a, a) for info, a in aliased if info.is_write}
        before = [r for m in written for r in reads.get(m, ())]
        if after or before:
            extra[n] = list(dict.fromkeys(after + before))
        if aliased and schema is not None and schema.returns and schema.returns[0].alias_info is not None:
            root[n] = root.get(aliased[0][1], aliased[0][1])
        elif n.target is operator.getitem and n.args[0] in root:
            root[n] = root[n.args[0]]
        for m in written:
            writes.setdefault(m, []).append(n)
        for r in read:
            reads.setdefault(r, []).append(n)
    return extra


def _stages_of(graph: fx.Graph, flat: Sequence[fx.Node]) -> tuple[dict[fx.Node, int], list[fx.Node]]:
    """The stage of each op (the first exit among whose ancestors it appears), and the ops in order."""
    memory = _memory_inputs(graph)
    stage_of: dict[fx.Node, int] = {}
    for i, o in enumerate(flat):
        todo = [o]
        while todo:
            n = todo.pop()
            if n in stage_of or n.op in ("placeholder", "get_attr"):
                continue
            stage_of[n] = i
            todo.extend(n.all_input_nodes)
            todo.extend(memory.get(n, ()))
    ops = [n for n in graph.nodes if n.op not in ("placeholder", "get_attr", "output") and not _dropped(n)]
    unused = [n for n in ops if n not in stage_of]
    for n in unused:
        stage_of[n] = len(flat) - 1
    if unused:
        log.info("%d op(s) feed no exit; charged to the last stage: %s", len(unused), [n.name for n in unused][:5])
    return stage_of, ops


def _partition(gm: fx.GraphModule, example: Inputs, names: Sequence[str] = ()) -> Partition:
    """Cut the exported graph ``gm`` into one stage per exit (see the module docs)."""
    flat = _exit_outputs(gm)
    stage_of, ops = _stages_of(gm.graph, flat)
    inputs = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if names and sorted(str(n.target) for n in inputs) == sorted(names):  # stage 1 takes the signature's order
        inputs.sort(key=lambda n: list(names).index(str(n.target)))

    # Tensors needed after stage i: used by an op of a later stage, or a later exit's output.
    # Sizes (SymInts) are not carried: a later stage reads them off a tensor it receives.
    last_use: dict[fx.Node, int] = {}
    for n in ops:
        for a in n.all_input_nodes:
            if a.op != "get_attr" and not _is_size(a):
                last_use[a] = max(last_use.get(a, -1), stage_of[n])
    for i, o in enumerate(flat):
        last_use[o] = max(last_use.get(o, -1), i)
    defined_at = {n: stage_of[n] for n in ops}
    for p in inputs:
        defined_at[p] = -1
    order = {n: j for j, n in enumerate(gm.graph.nodes)}
    carries: list[list[fx.Node]] = []
    for i in range(len(flat)):
        live = [v for v, s in defined_at.items() if s <= i and last_use.get(v, -1) > i]
        carries.append(sorted(live, key=order.__getitem__))
    remat = _rematerialize_sizes(ops, stage_of, defined_at, inputs, carries, order)

    def stage(i: int) -> fx.GraphModule:
        """Stage ``i + 1`` as a graph of its own: what it receives, its sizes recomputed, its ops."""
        g = fx.Graph()
        env: dict[fx.Node, Any] = {}
        for v in inputs if i == 0 else carries[i - 1]:
            p = g.placeholder(v.name)
            p.meta = dict(v.meta)
            env[v] = p
        for v, recipe in remat.get(i, []):
            if recipe[0] == "dim":
                env[v] = g.call_function(torch.ops.aten.sym_size.int, (env[recipe[1]], recipe[2]))
                env[v].meta = dict(v.meta)
            elif recipe[0] == "copy":
                env[v] = g.node_copy(v, env.__getitem__)
            else:
                env[v] = recipe[1]
        for n in gm.graph.nodes:
            if n.op == "get_attr" and any(stage_of.get(u) == i for u in n.users):
                env[n] = g.node_copy(n)
            elif stage_of.get(n) == i and n in defined_at:
                env[n] = g.node_copy(n, env.__getitem__)
        g.output(tuple(env[v] for v in [flat[i], *carries[i]]))
        g.lint()
        sm = fx.GraphModule(gm, g, class_name=f"Stage{i + 1}")
        sm.eval()
        return sm

    batch_sym = _batch_symbol(inputs)
    return Partition(
        modules=tuple(stage(i) for i in range(len(flat))),
        batch_dims=None if batch_sym is None else tuple(tuple(_batch_dim(v, batch_sym) for v in c) for c in carries),
        dynamic_batch=batch_sym is not None,
        example_batch_size=batch_size(example),
        whole=_whole(gm, stage_of, flat),
        drop_rows_reason=None if batch_sym is None else _uncuttable(carries, batch_sym),
        dim_symbols=tuple(tuple(_symbols(v) for v in values) for values in [inputs, *carries[:-1]]),
    )


def _symbols(node: fx.Node) -> dict[int, str]:
    """The dimensions of a value whose size is a bare symbol (the batch, a sequence length), by symbol name."""
    val = node.meta.get("val")
    if not isinstance(val, torch.Tensor):
        return {}
    sizes: list[Any] = list(val.shape)
    return {
        d: str(size.node.expr)
        for d, size in enumerate(sizes)
        if isinstance(size, torch.SymInt) and getattr(size.node.expr, "is_Symbol", False)
    }


def _whole(gm: fx.GraphModule, stage_of: dict[fx.Node, int], flat: Sequence[fx.Node]) -> nn.Module:
    """The unsplit graph (export's input checks left out, as in the stages)."""
    g = fx.Graph()
    env: dict[fx.Node, Any] = {}
    for n in gm.graph.nodes:
        if n.op in ("placeholder", "get_attr") or n in stage_of:
            env[n] = g.node_copy(n, env.__getitem__)
    g.output(tuple(env[o] for o in flat))
    whole = fx.GraphModule(gm, g, class_name="WholeGraph")
    whole.eval()
    return whole


def _is_size(n: fx.Node) -> bool:
    """Whether a node computes a size or other scalar rather than a tensor."""
    return isinstance(n.meta.get("val"), (torch.SymInt, torch.SymFloat, torch.SymBool, int, float, bool))


def _rematerialize_sizes(
    ops: Sequence[fx.Node],
    stage_of: dict[fx.Node, int],
    defined_at: dict[fx.Node, int],
    inputs: Sequence[fx.Node],
    carries: list[list[fx.Node]],
    order: dict[fx.Node, int],
) -> dict[int, list[tuple[fx.Node, tuple[Any, ...]]]]:
    """For each stage, how to recompute the sizes it uses but an earlier stage computed.

    Recipes, in dependency order: ``("dim", tensor, d)`` reads a dimension of a tensor the
    stage receives; ``("const", value)`` is a static size; ``("copy",)`` recomputes the size
    arithmetic from sizes resolved before it. Sizes are recomputed rather than carried so
    that they follow the tensors when :meth:`StageRun.keep` shrinks the batch; a size that
    cannot be recomputed is carried.
    """
    out: dict[int, list[tuple[fx.Node, tuple[Any, ...]]]] = {}
    for i in range(max(stage_of.values(), default=-1) + 1):
        avail = list(inputs if i == 0 else carries[i - 1])
        recipes: dict[fx.Node, tuple[Any, ...]] = {}
        steps: list[tuple[fx.Node, tuple[Any, ...]]] = []

        for n in ops:
            if stage_of[n] != i:
                continue
            for a in n.all_input_nodes:
                if not _is_size(a) or defined_at.get(a, i) >= i or a in recipes:
                    continue
                if not _resolve_size(a, avail, recipes, steps):  # carry the size itself from where it is computed
                    for j in range(defined_at[a], i):
                        if a not in carries[j]:
                            carries[j].append(a)
                            carries[j].sort(key=order.__getitem__)
                    if a not in avail:
                        avail.append(a)
        if steps:
            out[i] = steps
    return out


def _resolve_size(
    a: fx.Node,
    avail: Sequence[fx.Node],
    recipes: dict[fx.Node, tuple[Any, ...]],
    steps: list[tuple[fx.Node, tuple[Any, ...]]],
    depth: int = 0,
) -> bool:
    """Find a recipe for size ``a`` from the tensors in ``avail``; record it with its inputs'."""
    if a in recipes:
        return True
    val = a.meta.get("val")
    recipe: tuple[Any, ...] | None = None
    if not isinstance(val, (torch.SymInt, torch.SymFloat, torch.SymBool)):
        recipe = ("const", val)
    else:
        recipe = _find_dim(val, avail)
        if recipe is None and a.op == "call_function" and depth < 32:
            ok = all(
                arg in avail or (_is_size(arg) and _resolve_size(arg, avail, recipes, steps, depth + 1))
                for arg in a.all_input_nodes
            )
            recipe = ("copy",) if ok else None
    if recipe is None:
        return False
    recipes[a] = recipe
    steps.append((a, recipe))
    return True


def _find_dim(val: Any, tensors: Sequence[fx.Node]) -> tuple[Any, ...] | None:
    """``("dim", t, d)`` for the first received tensor ``t`` whose dim ``d`` equals ``val``."""
    for t in tensors:
        tv = t.meta.get("val")
        if isinstance(tv, torch.Tensor):
            for d, size in enumerate(tv.shape):
                if isinstance(size, torch.SymInt) and str(size.node.expr) == str(val.node.expr):
                    return ("dim", t, d)
    return None


def _batch_symbol(inputs: Sequence[fx.Node]) -> Any:
    """The symbolic batch size of the exported input, or None when export pinned it."""
    if not inputs:
        return None
    val = inputs[0].meta.get("val")
    if not isinstance(val, torch.Tensor) or val.ndim == 0:
        return None
    b = val.shape[0]
    return b if isinstance(b, torch.SymInt) else None


def _uncuttable(carries: Sequence[Sequence[fx.Node]], batch_sym: Any) -> str | None:
    """Why a carried value cannot be cut to the rows that stay, or None when all can.

    A carried tensor can be cut when the batch size appears in its shape only as one bare
    dimension (or not at all); a shape such as ``(B*T, D)`` or ``(B, B)``, or a carried size
    computed from the batch size, would keep the batch it was computed for.
    """
    import sympy

    sym = batch_sym.node.expr
    big_b = sympy.Symbol("B")

    def show(e: Any) -> str:
        return str(e.subs(sym, big_b)) if hasattr(e, "subs") else str(e)

    for i, carry in enumerate(carries[:-1]):
        for v in carry:
            val = v.meta.get("val")
            if not isinstance(val, torch.Tensor):
                continue
            exprs = [s.node.expr if isinstance(s, torch.SymInt) else s for s in val.shape]
            bare = sum(1 for e in exprs if e == sym)
            mixed = [e for e in exprs if e != sym and sym in getattr(e, "free_symbols", ())]
            if mixed or bare > 1:
                return (
                    f"stage {i + 1} hands on a tensor ('{v.name}') of shape ({', '.join(show(e) for e in exprs)}) "
                    "for batch size B, which cannot be cut to the rows that stay (the model mixes the batch "
                    "with another dimension; keep the batch a dimension of its own)"
                )
        for v in carry:
            val = v.meta.get("val")
            if isinstance(val, torch.SymInt) and sym in val.node.expr.free_symbols:
                return (
                    f"stage {i + 1} hands on a size ('{v.name}' = {show(val.node.expr)}) computed from the "
                    "batch size B that no carried tensor has as a dimension (the model reshapes with a "
                    "batch size it no longer has a tensor for), so it would keep the old batch size"
                )
    return None


def _batch_dim(node: fx.Node, batch_sym: Any) -> int | None:
    """The first dimension of a carried value whose size is the batch symbol, else None."""
    found = _find_dim(batch_sym, [node])
    return None if found is None else int(found[2])
