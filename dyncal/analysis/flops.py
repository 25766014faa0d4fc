"""Multiply-accumulates (MACs) per stage and per exit, counted by fvcore.

fvcore's :class:`~fvcore.nn.FlopCountAnalysis` counts one fused multiply-add as one unit;
dyncal calls that unit a MAC everywhere (papers in this field call it a FLOP). Each stage
module (:mod:`dyncal.analysis.stages`) is counted on its own, on the carry it receives for a
one-sample input, so a count is per sample. The cost of exit ``k`` is the sum over stages
``1..k``. Ops fvcore cannot count are listed per stage with how often they occur. Fused
attention operators are counted by the rules in :mod:`dyncal.analysis.attention_macs`.

fvcore traces with TorchScript, whose deprecation warnings (``FutureWarning:
`torch.jit.trace` is deprecated``) are filtered here and nowhere else; every other warning
passes through.

Example:
    >>> import torch
    >>> from torch import nn
    >>> m = nn.Linear(3, 4)
    >>> model_macs(m, torch.zeros(1, 3)).macs
    12
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import warnings
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from dyncal.analysis.attention_macs import ATTENTION_HANDLES, work_done_elsewhere
from dyncal.analysis.stages import Stages
from dyncal.artifacts.costs import UnsupportedOp
from dyncal.errors import ProfileError, first_line
from dyncal.inputs import Inputs, InputSignature, is_single

__all__ = ["MacCount", "StageMacs", "model_macs", "stage_macs", "stage_inputs"]

log = logging.getLogger(__name__)

# The exact deprecation notices TorchScript emits when fvcore imports or traces.
_JIT_DEPRECATION = r"`torch\.jit\.\w+` is deprecated\. Please switch to `torch\.compile` or `torch\.export`\."


@contextlib.contextmanager
def _quiet_torchscript() -> Iterator[None]:
    """Silence TorchScript's deprecation notices (only those) while fvcore runs."""
    with warnings.catch_warnings():
        for category in (FutureWarning, DeprecationWarning):
            warnings.filterwarnings("ignore", message=_JIT_DEPRECATION, category=category)
        yield


@dataclass(frozen=True)
class MacCount:
    """fvcore's count for one module on one input.

    Attributes:
        macs: Multiply-accumulates counted.
        by_operator: MACs per operator kind (``"conv"``, ``"linear"``, ...).
        unsupported: Operators fvcore could not count, with occurrence counts.
        uncalled_modules: Submodules that never ran during the count: their work is in no
            total (a head the forward skips, or a module bypassed by a fused path). An
            attention module's parts whose work its own operator did are not listed
            (:func:`~dyncal.analysis.attention_macs.work_done_elsewhere`).
    """

    macs: int
    by_operator: dict[str, int] = field(default_factory=dict)
    unsupported: dict[str, int] = field(default_factory=dict)
    uncalled_modules: tuple[str, ...] = ()


def _count(module: nn.Module, inputs: tuple[Any, ...]) -> MacCount:
    with _quiet_torchscript():
        from fvcore.nn import FlopCountAnalysis

        analysis = FlopCountAnalysis(module, inputs).set_op_handle(**ATTENTION_HANDLES)
        analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        try:
            with torch.no_grad():
                total = int(analysis.total())
        except Exception as e:  # noqa: BLE001 - TorchScript tracing raises many types
            raise ProfileError(
                f"fvcore cannot trace {type(module).__name__} to count MACs "
                f"({type(e).__name__}: {first_line(e)}); the module must be traceable by torch.jit.trace"
            ) from e
        by_op = {str(k): int(v) for k, v in analysis.by_operator().items()}
        unsupported = {str(k): int(v) for k, v in analysis.unsupported_ops().items()}
        uncalled_names = [str(m) for m in analysis.uncalled_modules()]
        fused = work_done_elsewhere(module, uncalled_names)
        uncalled = tuple(sorted(set(uncalled_names) - fused))
    return MacCount(macs=total, by_operator=by_op, unsupported=unsupported, uncalled_modules=uncalled)


class _TensorsOnly(nn.Module):
    """A stage as the tracer sees it: tensors only (other arguments fixed, outputs dropped)."""

    def __init__(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        super().__init__()
        self.stage = module
        self.template = args
        self.slots = [i for i, a in enumerate(args) if isinstance(a, torch.Tensor)]

    def forward(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        args = list(self.template)
        for i, t in zip(self.slots, tensors, strict=True):
            args[i] = t
        out = self.stage(*args)
        out = out if isinstance(out, (tuple, list)) else (out,)
        return tuple(o for o in out if isinstance(o, torch.Tensor))


class _CalledWith(nn.Module):
    """A model of several inputs called with positional tensors (fvcore passes positional inputs)."""

    def __init__(self, model: nn.Module, signature: InputSignature) -> None:
        super().__init__()
        self.model, self.signature = model, signature

    def forward(self, *flat: torch.Tensor) -> Any:
        return self.signature.call(self.model, flat)


def model_macs(model: nn.Module, x: Inputs) -> MacCount:
    """Fvcore's MACs for the whole model on input ``x`` (use ``B = 1`` for per-sample MACs).

    Args:
        model: Any module.
        x: Its input, ``(B, ...)``, or a tuple or dict of inputs (:mod:`dyncal.inputs`).

    Returns:
        The count, with per-operator MACs and uncounted operators.

    Raises:
        ProfileError: fvcore cannot trace the model.

    Example:
        >>> import torch
        >>> model_macs(torch.nn.Conv2d(2, 3, 1, bias=False), torch.zeros(1, 2, 4, 4)).macs
        96
    """
    if is_single(x):
        return _count(model, (x,))
    signature = InputSignature.of(x)
    if signature.kind == "tuple":
        return _count(model, signature.flatten(x))
    return _count(_CalledWith(model, signature), signature.flatten(x))


def stage_inputs(stages: Stages, x: Inputs) -> list[tuple[Any, ...]]:
    """The arguments each stage receives when the stages run on ``x``, ``K`` tuples."""
    out: list[tuple[Any, ...]] = []
    with torch.no_grad():
        run = stages.start(x)
        while not run.done:
            out.append(run.carry)
            run.step()
    return out


@dataclass(frozen=True)
class StageMacs:
    """MACs of every stage and every exit, per sample.

    Attributes:
        stage_macs: MACs of each stage alone, ``K`` ints.
        by_operator: MACs per operator kind of each stage, ``K`` dicts.
        unsupported_ops: Operators fvcore could not count, per stage (1-based) with counts.
        graph_macs: fvcore on the unsplit exported graph (equals the stages' sum; None for
            stages declared by hand).
        model_macs: fvcore on the eager model (None when not counted). It can differ from
            ``graph_macs`` where eager tracing takes a fused path no rule counts
            (``nn.MultiheadAttention``'s fused kernel is counted: :mod:`~dyncal.analysis.attention_macs`).
        uncalled_modules: Submodules of the eager model that never ran while fvcore counted
            it (fvcore's ``uncalled_modules()``); empty when the model was not counted.
    """

    stage_macs: tuple[int, ...]
    by_operator: tuple[dict[str, int], ...]
    unsupported_ops: tuple[UnsupportedOp, ...]
    graph_macs: int | None = None
    model_macs: int | None = None
    uncalled_modules: tuple[str, ...] = ()

    @property
    def exit_macs(self) -> tuple[int, ...]:
        """Cumulative MACs to produce exit ``k`` (stages ``1..k``), ``K`` ints."""
        return tuple(itertools.accumulate(self.stage_macs))

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return {
            "stage_macs": list(self.stage_macs),
            "exit_macs": list(self.exit_macs),
            "by_operator": [dict(d) for d in self.by_operator],
            "unsupported_ops": [u.to_dict() for u in self.unsupported_ops],
            "graph_macs": self.graph_macs,
            "model_macs": self.model_macs,
            "uncalled_modules": list(self.uncalled_modules),
        }


def stage_macs(
    stages: Stages,
    x: Inputs,
    *,
    model: nn.Module | None = None,
) -> StageMacs:
    """Count every stage's MACs with fvcore, per sample.

    Args:
        stages: The model's stages.
        x: One sample ``(1, ...)`` on the stages' device (a larger batch scales every count);
            a tuple or dict of inputs for a model of several.
        model: When given, also count the eager model (a difference from the stages' sum
            is logged, not raised: eager tracing may take fused paths fvcore cannot count).

    Returns:
        Per-stage and cumulative per-exit MACs, uncounted operators per stage.

    Raises:
        ProfileError: fvcore cannot trace a stage, or exported stages do not add up to the
            unsplit graph's count (a partition bug).

    Example:
        >>> import torch
        >>> from dyncal.demo import DigitsExitNet
        >>> from dyncal.analysis.stages import build_stages
        >>> net = DigitsExitNet().eval()
        >>> stages = build_stages(net, torch.zeros(2, 1, 8, 8))
        >>> counts = stage_macs(stages, torch.zeros(1, 1, 8, 8), model=net)
        >>> counts.exit_macs[-1] == counts.graph_macs == counts.model_macs
        True
    """
    per_stage: list[MacCount] = []
    for m, args in zip(stages.modules, stage_inputs(stages, x), strict=True):
        wrapped = _TensorsOnly(m, args)
        per_stage.append(_count(wrapped, tuple(args[j] for j in wrapped.slots)))
    unsupported = tuple(
        UnsupportedOp(stage=i + 1, op=op, count=n)
        for i, c in enumerate(per_stage)
        for op, n in sorted(c.unsupported.items())
    )
    if unsupported:
        log.info(
            "ops fvcore could not count: %s",
            ", ".join(f"{u.op} x{u.count} (stage {u.stage})" for u in unsupported),
        )
    summed = sum(c.macs for c in per_stage)
    stage_ops: Counter[str] = Counter()  # update, not +: an operator counted 0 stays listed
    for c in per_stage:
        stage_ops.update(c.by_operator)
    graph_total = None
    if stages.whole is not None:
        graph = _count(stages.whole, stages.flat_inputs(x))
        graph_total = graph.macs
        if summed != graph_total:
            raise ProfileError(
                f"the stages add up to {summed} MACs but fvcore counts {graph_total} on the "
                f"unsplit graph (per operator: stages {dict(stage_ops)}, graph {graph.by_operator}); "
                "the partition lost or duplicated work: please report this model"
            )
    total = None
    uncalled: tuple[str, ...] = ()
    if model is not None:
        whole = model_macs(model, x)
        total = whole.macs
        uncalled = whole.uncalled_modules
        if uncalled:
            log.warning(
                "modules that never ran while fvcore counted the model (their work is in no count): %s",
                ", ".join(uncalled[:8]) + (f" and {len(uncalled) - 8} more" if len(uncalled) > 8 else ""),
            )
        if summed != total:
            log.warning(
                "fvcore counts %d MACs on the eager model but %d on its stages (per operator: "
                "model %s, stages %s, model uncounted %s); eager tracing took another path",
                total,
                summed,
                whole.by_operator,
                dict(stage_ops),
                whole.unsupported,
            )
    return StageMacs(
        stage_macs=tuple(c.macs for c in per_stage),
        by_operator=tuple(c.by_operator for c in per_stage),
        unsupported_ops=unsupported,
        graph_macs=graph_total,
        model_macs=total,
        uncalled_modules=uncalled,
    )
