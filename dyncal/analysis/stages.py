"""Stages of a multi-exit model, derived from its own graph.

A multi-exit model computes ``K`` logits tensors, exit 1 (the cheapest) first. Stage ``k``
is the work exit ``k`` needs beyond what exits ``1..k-1`` already needed: every op of the
exported graph belongs to the first exit among whose ancestors it appears. Running stages
``1..k`` therefore computes exactly what exit ``k`` costs in a real early exit (heads of
the earlier exits included), and stopping after stage ``k`` skips the rest.

**The stage protocol.** Every stage is an ``nn.Module``; stage values flow as a *carry*,
a tuple of tensors::

    stage_1(x)            -> (logits_1, *carry_1)
    stage_k(*carry_{k-1}) -> (logits_k, *carry_k)      (1 < k < K)
    stage_K(*carry_{K-1}) -> (logits_K,)

``logits_k`` is ``(B, C)``. The carry holds every value a later stage needs (feature maps,
latent tokens, the input itself when a later stage reads it); sizes are recomputed from the
tensors, not carried. Carried tensors are cut to the samples that stay along their batch
dimension (:meth:`StageRun.keep`).

Some models cannot let samples leave a batch between stages: a carried value mixes the batch
with another dimension (``f.reshape(B*T, D)``), or a later exit depends on the other rows
(``a - a.mean(0)``, BatchNorm in train mode). The partition and :func:`verify_stages` detect
this; such stages still give valid MACs and full-batch latency, but
:attr:`Stages.can_drop_rows` is False, :attr:`Stages.drop_rows_reason` says why, and
:meth:`StageRun.keep` raises a one-line :class:`~dyncal.errors.ProfileError`: early exit must
then run whole batches.

**Where stages come from**, first match wins:

1. ``stages_fn`` given to :func:`build_stages` (the CLI's ``--stages pkg.module:fn``): a
   callable ``fn(model) -> Sequence[nn.Module]`` returning stages that follow the protocol;
2. a method ``model.dyncal_stages()`` returning the same (:data:`STAGES_METHOD`);
3. otherwise the model is exported with :func:`torch.export.export` on one batch and
   partitioned automatically (:mod:`dyncal.analysis.partition`).

Hand-declared stages must carry only batch-major tensors (first dimension = batch). Either
way, :func:`verify_stages` checks that the stages reproduce every exit of the model, and
``dyncal profile`` refuses stages that do not.

**Declaring stages by hand** (for a model ``torch.export`` cannot capture, e.g. one with
control flow on tensor values)::

    class Stage1(nn.Module):
        def __init__(self, net):
            super().__init__()
            self.body, self.head = net.body1, net.head1
        def forward(self, x):
            h = self.body(x)
            return self.head(h), h            # (logits_1, carry)

    class Stage2(nn.Module):
        def __init__(self, net):
            super().__init__()
            self.body, self.head = net.body2, net.head2
        def forward(self, h):
            return (self.head(self.body(h)),)  # (logits_2,)

    class Net(nn.Module):
        ...
        def dyncal_stages(self):               # picked up automatically
            return [Stage1(self), Stage2(self)]

or, without touching the model, ``def my_stages(net): return [Stage1(net), Stage2(net)]``
in ``mypkg/stages.py`` and ``dyncal profile RUN --stages mypkg.stages:my_stages``. Stages
share the model's parameters; MACs are counted per stage module with fvcore, so each
stage must be traceable by ``torch.jit.trace``.

Example:
    >>> import torch
    >>> from dyncal.demo import DigitsExitNet
    >>> stages = build_stages(DigitsExitNet().eval(), torch.zeros(2, 1, 8, 8))
    >>> stages.k, stages.source
    (4, 'export')
    >>> run = stages.start(torch.zeros(3, 1, 8, 8))
    >>> tuple(run.step().shape)          # exit 1 only: stages 2..4 have not run
    (3, 10)
    >>> run.keep(torch.tensor([True, False, True]))   # one sample left at exit 1
    >>> tuple(run.step().shape)
    (2, 10)
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import KW_ONLY, dataclass
from typing import Any

import torch
from torch import nn

from dyncal.analysis.lean import caller
from dyncal.analysis.partition import EXPORT_HINT, export_partition
from dyncal.errors import DyncalError, ProfileError, describe, param, user_call
from dyncal.inputs import Inputs, InputSignature, batch_size, call_model, flatten, take_rows

__all__ = [
    "STAGES_METHOD",
    "Stages",
    "StageRun",
    "StageCheck",
    "EXAMPLE_BATCH",
    "build_stages",
    "checked_stages",
    "example_input",
    "declared_stages",
    "stages_function",
    "verify_stages",
]

log = logging.getLogger(__name__)

STAGES_METHOD = "dyncal_stages"
"""Name of the optional model method that declares stages by hand (see module docs)."""

EXAMPLE_BATCH = 2
"""Rows of the example stages are exported from: two or more keep the batch dimension symbolic."""


@dataclass(eq=False, repr=False)  # identity semantics, as a plain class: stages hold modules
class Stages:
    """``K`` runnable stages of a multi-exit model (see the module docs for the protocol).

    Args:
        modules: The ``K`` stage modules, exit 1 first.
        batch_dims: For each stage, the batch dimension of each carry output (None for
            values without one, such as weights computed once); ``K`` tuples, the last
            empty. None (hand-declared stages): every carried tensor is batch-major.
        source: ``"export"`` (derived from the graph), ``"method"`` (``model.dyncal_stages``)
            or ``"function"`` (``--stages``).
        dynamic_batch: Whether the stages run at any batch size (else only at
            ``example_batch_size``).
        example_batch_size: Batch size of the example the stages were built from.
        whole: For exported stages, the unsplit graph they were cut from (its fvcore count
            must equal the stages' sum).
        drop_rows_reason: Why rows cannot leave between stages (see :attr:`can_drop_rows`),
            None when they can.
        dim_symbols: For exported stages, the symbolic dimensions of what each stage
            receives (:class:`~dyncal.analysis.partition.Partition`); None: the batch only.
        inputs: The model's inputs (:class:`~dyncal.inputs.InputSignature`), for a model of
            several inputs: stage 1 takes them positionally in this order; None: as given.

    Example:
        >>> import torch
        >>> from dyncal.demo import DigitsExitNet
        >>> stages = build_stages(DigitsExitNet().eval(), torch.zeros(2, 1, 8, 8))
        >>> [tuple(o.shape) for o in stages.run(torch.zeros(5, 1, 8, 8), upto=2)]
        [(5, 10), (5, 10)]
    """

    modules: Sequence[nn.Module]
    _: KW_ONLY
    batch_dims: Sequence[tuple[int | None, ...]] | None = None
    source: str = "export"
    dynamic_batch: bool = True
    example_batch_size: int | None = None
    whole: nn.Module | None = None
    drop_rows_reason: str | None = None
    dim_symbols: Sequence[tuple[dict[int, str], ...]] | None = None
    inputs: InputSignature | None = None

    def __post_init__(self) -> None:
        """Hold the sequences as tuples; stages pinned to one batch size cannot drop rows."""
        if len(self.modules) < 1:  # K = 1: a static model, measured as one stage
            raise ProfileError(f"a model needs K >= 1 stages, got {len(self.modules)}")
        self.modules = tuple(self.modules)
        self.batch_dims = None if self.batch_dims is None else tuple(tuple(b) for b in self.batch_dims)
        self.dim_symbols = None if self.dim_symbols is None else tuple(tuple(v) for v in self.dim_symbols)
        if not self.dynamic_batch and self.drop_rows_reason is None:
            self.drop_rows_reason = (
                f"the stages were exported for batch size {self.example_batch_size} only (the model could "
                "not be exported with a dynamic batch)"
            )

    def layout(self) -> dict[str, Any]:
        """Everything but the modules, as :class:`Stages`' keyword arguments: other modules, same stages."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "modules"}

    @property
    def can_drop_rows(self) -> bool:
        """Whether samples can leave between stages (:meth:`StageRun.keep`).

        False when a carried value cannot be cut to the remaining rows (e.g. the model
        flattens the batch into another dimension) or a later exit depends on the other
        rows of the batch (batch statistics, BatchNorm in train mode); early exit must then
        run whole batches. :attr:`drop_rows_reason` says why.
        """
        return self.drop_rows_reason is None

    def forbid_dropping_rows(self, reason: str) -> None:
        """Mark the stages as unable to drop rows, for ``reason`` (the first reason is kept)."""
        if self.drop_rows_reason is None:
            log.warning("samples cannot leave a batch early: %s", reason)
            self.drop_rows_reason = reason

    @property
    def k(self) -> int:
        """Number of stages (= exits)."""
        return len(self.modules)

    def to(self, device: torch.device | str) -> Stages:
        """Move every stage to ``device`` (in place) and return ``self``."""
        for m in self.modules:
            m.to(device)
        return self

    @functools.cached_property
    def callers(self) -> tuple[Callable[..., Any], ...]:
        """What :meth:`StageRun.step` calls: each module, or as fast the same (:func:`~dyncal.analysis.lean.caller`)."""
        return tuple(caller(m) for m in self.modules)

    def flat_inputs(self, x: Inputs) -> tuple[torch.Tensor, ...]:
        """What stage 1 receives for the inputs ``x``: its tensors in the signature's order."""
        return flatten(x) if self.inputs is None else self.inputs.flatten(x)

    def start(self, x: Inputs) -> StageRun:
        """Begin an early-exit pass over inputs ``x`` (a tensor ``(B, ...)``, tuple or dict); see :class:`StageRun`."""
        return StageRun(self, x)

    def iter_exits(self, x: Inputs) -> Iterator[torch.Tensor]:
        """Yield exit ``k``'s logits ``(B, C)`` after running stage ``k``; stop when you like.

        Breaking out of the loop after exit ``k`` means stages ``k+1..K`` never run.
        """
        run = self.start(x)
        while not run.done:
            yield run.step()

    def run(self, x: Inputs, *, upto: int | None = None) -> list[torch.Tensor]:
        """Run stages ``1..upto`` (default all) and return those exits' logits, each ``(B, C)``."""
        upto = self.k if upto is None else upto
        if not 1 <= upto <= self.k:
            raise ProfileError(f"upto must be an exit in 1..{self.k}, got {upto}")
        return list(itertools.islice(self.iter_exits(x), upto))


class StageRun:
    """One early-exit pass through :class:`Stages`, one stage per :meth:`step`.

    Example (an early-exit loop)::

        run = stages.start(x)                      # x: (B, ...)
        while not run.done:
            logits = run.step()                    # (B_k, C): exit run.exit
            leave = score(logits) >= threshold     # (B_k,) bool
            ...                                    # record predictions of leaving rows
            if run.done or leave.all():
                break
            run.keep(~leave)                       # later stages see only staying rows
    """

    def __init__(self, stages: Stages, x: Inputs) -> None:
        self.stages = stages
        self.exit = 0
        self.carry: tuple[Any, ...] = stages.flat_inputs(x)  # the values handed to the next stage

    @property
    def done(self) -> bool:
        """Whether the last exit has been produced."""
        return self.exit >= self.stages.k

    def step(self) -> torch.Tensor:
        """Run the next stage and return its exit's logits ``(B, C)``."""
        if self.done:
            raise ProfileError(f"all {self.stages.k} stages have run; start a new pass")
        out = self.stages.callers[self.exit](*self.carry)
        if not isinstance(out, (tuple, list)) or not out:
            raise ProfileError(
                f"stage {self.exit + 1} returned {type(out).__name__}; a stage must return a tuple (logits, *carry)"
            )
        self.exit += 1
        self.carry = tuple(out[1:])
        logits: torch.Tensor = out[0]
        return logits

    def keep(self, rows: torch.Tensor) -> None:
        """Keep only ``rows`` (a ``(B,)`` bool mask or integer indices) for later stages.

        Every carried tensor is cut along its batch dimension (found from the exported
        graph's symbolic shapes; dimension 0 for hand-declared stages).
        """
        if self.done:
            return
        dims = None if self.stages.batch_dims is None else self.stages.batch_dims[self.exit - 1]
        if self.exit == 0:  # the inputs: every one batch-major, rows leave all of them together
            dims = (0,) * len(self.carry)
        if dims is None:
            dims = tuple(0 if isinstance(t, torch.Tensor) and t.ndim > 0 else None for t in self.carry)
        if self.stages.drop_rows_reason is not None:
            raise ProfileError(
                f"samples cannot leave this model's batch early: {self.stages.drop_rows_reason}; "
                "early exit must run whole batches (every sample through the same stages)"
            )
        self.carry = tuple(
            t if d is None else t[(slice(None),) * d + (rows,)] for t, d in zip(self.carry, dims, strict=True)
        )


def declared_stages(
    model: nn.Module,
    stages_fn: Callable[[nn.Module], Sequence[nn.Module]] | None = None,
) -> Stages | None:
    """Stages declared by hand, or None when there are none.

    Args:
        model: The multi-exit model.
        stages_fn: ``fn(model) -> Sequence[nn.Module]`` (the CLI's ``--stages``); when None,
            the model's ``dyncal_stages()`` method is used if it has one.

    Returns:
        The declared stages (``source`` ``"function"`` or ``"method"``), or None.

    Raises:
        ProfileError: The declaration fails or returns something other than >= 2 modules.
    """
    if stages_fn is not None:
        source, name, declared = "function", param("stages_fn"), functools.partial(stages_fn, model)
    elif callable(getattr(model, STAGES_METHOD, None)):
        source, name, declared = "method", f"{type(model).__name__}.{STAGES_METHOD}()", getattr(model, STAGES_METHOD)
    else:
        return None
    mods: Any = user_call(declared, f"{name} failed", ProfileError)
    if not isinstance(mods, (list, tuple)) or len(mods) < 2 or not all(isinstance(m, nn.Module) for m in mods):
        raise ProfileError(
            f"{name} must return a list of K >= 2 nn.Module stages "
            "(stage_1(*inputs) -> (logits, *carry), "
            f"stage_k(*carry) -> (logits, *carry)); got {type(mods).__name__}"
        )
    for m in mods:
        m.eval()
    return Stages(list(mods), source=source)


def stages_function(
    spec: str | None, search_path: str | os.PathLike[str] | None = None
) -> Callable[[nn.Module], Sequence[nn.Module]] | None:
    """The ``--stages pkg.module:fn`` function that declares a model's stages by hand (None: none given).

    It is code the user names: imported from ``search_path`` (``--model-path``) or ``PYTHONPATH``.

    Raises:
        ProfileError: It cannot be imported, or is not callable.
    """
    if spec is None:
        return None
    from dyncal.specs import import_object

    fn = import_object(spec, what=param("stages_spec"), search_path=search_path)
    if not callable(fn):
        raise ProfileError(f"`stages_spec`: '{spec}' is not callable; name a function fn(model) -> [stage modules]")
    return fn  # type: ignore[no-any-return]


def build_stages(
    model: nn.Module,
    example: Inputs,
    *,
    stages_fn: Callable[[nn.Module], Sequence[nn.Module]] | None = None,
    dynamic_batch: bool = True,
    signature: InputSignature | None = None,
) -> Stages:
    """Stages of ``model``: declared by hand if it declares them, else from its graph.

    Args:
        model: A multi-exit model in eval mode.
        example: One input batch ``(B, ...)`` on the model's device: a tensor, a tuple or a
            dict of tensors (stage 1 then takes them positionally, in the signature's order).
        stages_fn: Optional ``fn(model) -> Sequence[nn.Module]`` (``--stages``).
        dynamic_batch: For exported stages, try to keep the batch dimension dynamic.
        signature: The inputs' signature (default: the example's; a run's records which
            dimensions, such as the sequence length, vary).

    Returns:
        The stages (not yet verified; see :func:`verify_stages`).

    Raises:
        ProfileError: Export fails (with a hint on declaring stages) or the declaration is
            malformed.
    """
    if signature is None and not isinstance(example, torch.Tensor):
        signature = InputSignature.of(example)
    declared = declared_stages(model, stages_fn)
    if declared is not None:
        declared.inputs = signature
        return declared
    part = export_partition(model, example, dynamic_batch=dynamic_batch, signature=signature)
    return Stages(**part, source="export", inputs=signature)


@dataclass(frozen=True)
class StageCheck:
    """How closely the stages reproduce the model's exits on one batch.

    Attributes:
        batch_size: Rows of the batch checked.
        max_abs_diff: Largest absolute logit difference per exit, ``K`` floats.
    """

    batch_size: int
    max_abs_diff: tuple[float, ...]


def verify_stages(
    model: nn.Module,
    stages: Stages,
    x: Inputs,
    *,
    rtol: float = 1e-4,
    atol: float = 1e-5,
) -> StageCheck:
    """Check that running stages ``1..K`` reproduces every exit of ``model`` on ``x``.

    With two or more rows, also check that rows can leave between stages: for each stage
    ``j < K``, run stages ``1..j`` on ``x``, keep every other row, finish, and compare exits
    ``j+1..K`` with ``model(x[::2])``. When they differ (a later exit depends on the other
    rows: batch statistics, BatchNorm in train mode) the stages are marked unable to drop
    rows (:attr:`Stages.can_drop_rows`) instead of failing: their MACs and full-batch
    latency remain valid.

    Args:
        model: The multi-exit model.
        stages: Its stages.
        x: An input batch ``(B, ...)``: a tensor, a tuple or a dict of tensors.
        rtol: Relative tolerance (of each exit's largest logit magnitude).
        atol: Absolute tolerance.

    Returns:
        The differences seen.

    Raises:
        ProfileError: The stages fail to run, return a different number of exits, or an
            exit differs beyond tolerance.
    """
    with torch.inference_mode():
        want = call_model(model, x)
        want = [want] if isinstance(want, torch.Tensor) else want  # a static model (K = 1)
        try:
            got = stages.run(x)
        except DyncalError:
            raise
        except Exception as e:  # noqa: BLE001 - stage code may raise anything
            raise ProfileError(
                f"the {stages.source} stages fail at batch size {batch_size(x)} ({describe(e)}); "
                + ("fix dyncal_stages / `stages_spec`" if stages.source != "export" else EXPORT_HINT)
            ) from e
    if not isinstance(want, (list, tuple)) or len(want) != len(got):
        n = len(want) if isinstance(want, (list, tuple)) else 1
        raise ProfileError(f"the model has {n} exit(s) but its stages produce {len(got)}")
    diffs = []
    for i, (a, b) in enumerate(zip(want, got, strict=True)):
        if a.shape != b.shape:
            raise ProfileError(
                f"stage {i + 1} gives logits of shape {tuple(b.shape)} but exit {i + 1} of the "
                f"model has {tuple(a.shape)}"
            )
        d = float((a.float() - b.float()).abs().max()) if a.numel() else 0.0
        scale = float(a.float().abs().max()) if a.numel() else 0.0
        if not d <= atol + rtol * scale:
            raise ProfileError(
                f"running stages 1..{i + 1} does not reproduce exit {i + 1} of the model "
                f"(max |diff| {d:.3g} at logit scale {scale:.3g}); the {stages.source} stages are "
                "wrong" + ("" if stages.source == "export" else ": fix dyncal_stages / `stages_spec`")
            )
        diffs.append(d)
    if batch_size(x) >= 2 and stages.can_drop_rows:
        reason = _row_drop_problem(model, stages, x, rtol=rtol, atol=atol)
        if reason is not None:
            stages.forbid_dropping_rows(reason)
    return StageCheck(batch_size=batch_size(x), max_abs_diff=tuple(diffs))


def example_input(
    shape: Sequence[int], dtype: torch.dtype, batch_size: int, *, seed: int = 0, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """A reproducible random batch ``(batch_size, *shape)`` to trace and check stages with.

    Normal values for floating dtypes, 0 or 1 otherwise; the seed is offset by the batch
    size, so every size gets its own rows.

    Example:
        >>> x = example_input((1, 8, 8), torch.float32, 2)
        >>> tuple(x.shape), bool((x == example_input((1, 8, 8), torch.float32, 2)).all())
        ((2, 1, 8, 8), True)
    """
    g = torch.Generator().manual_seed(seed + batch_size)
    size = (batch_size, *shape)
    x = torch.randn(size, generator=g) if dtype.is_floating_point else torch.randint(0, 2, size, generator=g)
    return x.to(dtype).to(device)


def checked_stages(
    model: nn.Module,
    x: Inputs,
    *,
    stages: Stages | None = None,
    example: Inputs | None = None,
    stages_fn: Callable[[nn.Module], Sequence[nn.Module]] | None = None,
    reexport: bool = False,
    signature: InputSignature | None = None,
) -> tuple[Stages, StageCheck]:
    """Stages of ``model`` proven on the batch ``x``: built (or given), then verified there.

    On CUDA the stages and the model may pick different kernels (TF32 convolutions by
    default), so the tolerance is looser there.

    Args:
        model: The multi-exit model, on ``x``'s device.
        x: The batch the stages must reproduce the model on.
        stages: Stages already built (default: :func:`build_stages` on ``example``).
        example: The batch to build them from (default ``x``).
        stages_fn: Optional hand-declared stages (``--stages``).
        reexport: When exported stages built at another batch size fail at ``x``'s, export
            again at exactly that size (fixed: they cannot drop rows) instead of failing.
        signature: The inputs' signature, for a model of several inputs (:func:`build_stages`).

    Returns:
        The stages (the re-exported ones when that happened) and their check on ``x``.

    Raises:
        ProfileError: The stages cannot be built, or do not reproduce the model on ``x``.
    """
    rtol = 2e-3 if flatten(x)[0].device.type == "cuda" else 1e-4
    if stages is None:
        stages = build_stages(model, x if example is None else example, stages_fn=stages_fn, signature=signature)
    try:
        return stages, verify_stages(model, stages, x, rtol=rtol)
    except ProfileError:
        if not reexport or stages.source != "export" or stages.example_batch_size == batch_size(x):
            raise
        log.info(
            "stages exported at batch %s fail at batch %d; exporting again at that size",
            stages.example_batch_size,
            batch_size(x),
        )
        again = build_stages(model, x, stages_fn=stages_fn, dynamic_batch=False, signature=signature)
        return again, verify_stages(model, again, x, rtol=rtol)


def _row_drop_problem(model: nn.Module, stages: Stages, x: Inputs, *, rtol: float, atol: float) -> str | None:
    """Why dropping rows after some stage changes a later exit, or None when it never does."""
    rows = torch.arange(0, batch_size(x), 2, device=flatten(x)[0].device)
    with torch.inference_mode():
        want = call_model(model, take_rows(x, rows))
        for j in range(1, stages.k):
            run = stages.start(x)
            try:
                for _ in range(j):
                    run.step()
                run.keep(rows)
                got = [run.step() for _ in range(j, stages.k)]
            except DyncalError:
                raise
            except Exception as e:  # noqa: BLE001 - stage code may raise anything
                return f"after rows leave at exit {j}, the next stage fails ({describe(e)})"
            for i, (a, b) in enumerate(zip(want[j:], got, strict=True), start=j + 1):
                d = float((a.float() - b.float()).abs().max()) if a.numel() else 0.0
                scale = float(a.float().abs().max()) if a.numel() else 0.0
                if a.shape != b.shape or not d <= atol + rtol * scale:
                    diff = f"max |diff| {d:.3g}" if a.shape == b.shape else f"shape {tuple(b.shape)}"
                    return (
                        f"exit {i} of the rows that stay after exit {j} differs from the model run on those "
                        f"rows alone ({diff}): the model's outputs depend on the other rows of the batch "
                        "(batch statistics such as BatchNorm in train mode or x - x.mean(0))"
                    )
    return None
