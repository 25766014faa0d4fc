"""One clock for every latency dyncal measures: profile's stage times and verify's pairs.

:class:`Timer` is the timing engine (after ``torch.utils.benchmark``): it synchronises the
device before and after every timed block and reads one host clock (``time.perf_counter``
unless another is injected, which is how the tests check the timing logic without
wall-clock assumptions); callables first run ``warmup`` times; a block repeats a call
often enough that the clock's overhead is negligible; every raw replicate is kept and
summarised on read. :func:`pinned_threads` pins the CPU thread count for the block and
restores it in a ``try/finally``; the count in force is recorded with the measurement.

:func:`measure_latency` is what ``dyncal profile`` times, on one device at one batch size:

* each stage ``k`` on the carry it receives (so exit ``k`` costs stages ``1..k``);
* one exit decision as the early exit makes it (:class:`dyncal.analysis.early_exit.EarlyExitRunner`:
  score, compare, and the host synchronisation that reading the count needs);
* the real early exit with every row leaving at exit ``k``, for each ``k`` (the *exit
  paths*: stages, decisions, predictions and the runner's own bookkeeping, as deployed);
* the exit paths again at 2, 4, 8, ... rows below ``B`` (the rows a batch still holds
  once samples have left; a stage's time is far from linear in its rows on a CPU);
* the batch compaction at each exit: the rows that leave are recorded and every carried
  tensor is cut down to the rows that stay (half of them), as the runner does it;
* the plain deployment (the stages and the last head only, no exit decision:
  :mod:`dyncal.analysis.plain`), for reference: what would be deployed without early exit
  (the model with every head only when no plain deployment can be built, said in
  ``settings.full_model``).

Everything is measured round-robin so slow drifts of the machine hit all of it alike. A
measurement whose inter-quartile range exceeds 10% of its median is flagged in
``settings["noisy"]`` and logged with what to do about it
(:func:`dyncal.measurement.noise_advice`).

Example:
    >>> from dyncal.demo import DigitsExitNet
    >>> from dyncal.analysis.stages import build_stages
    >>> net = DigitsExitNet().eval()
    >>> at_b1 = LatencySettings(repeats=3, warmup=1)
    >>> prof = measure_latency(build_stages(net, torch.zeros(2, 1, 8, 8)), net, torch.zeros(1, 1, 8, 8), at_b1)
    >>> prof.key, len(prof.stage_ms), len(prof.stage_ms[0]), len(prof.exit_path_ms)
    ('cpu/b1', 4, 3, 4)
"""

from __future__ import annotations

import contextlib
import copy
import functools
import logging
import math
import os
import platform
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from dyncal.analysis.early_exit import EarlyExitRunner
from dyncal.analysis.stages import Stages
from dyncal.artifacts.costs import LatencyProfile
from dyncal.constraints import check
from dyncal.errors import ProfileError
from dyncal.inputs import Inputs, batch_size, call_model, describe_inputs, flatten, is_single, take_rows
from dyncal.measurement import NOISE_IQR_FRACTION, Measurement, noise_advice

__all__ = [
    "Clock",
    "LatencySettings",
    "Timer",
    "measure_latency",
    "pinned_threads",
    "cpu_model",
    "device_hardware",
]

log = logging.getLogger(__name__)

PLAIN_FIGURE = "the plain deployment: the stages and the last head only, no exit decision (analysis/plain.py)"
"""What the full-model latency times (``settings.full_model`` of a latency profile)."""

Clock = Callable[[], float]
"""A monotonic clock in seconds (``time.perf_counter``); tests inject a fake one."""


@dataclass(frozen=True)
class LatencySettings:
    """How to measure.

    Attributes:
        threads: CPU threads to pin (``torch.set_num_threads``) while measuring; None keeps
            the current setting (and records it). Default 1, as ``torch.utils.benchmark``.
        warmup: Untimed calls of every callable before timing.
        repeats: Timed replicates per callable.
        min_block_ms: Each replicate runs a block of calls lasting at least this long.
        max_block_calls: Upper bound on the calls in one block.
        threshold: Threshold used in the timed exit decision (its value barely matters).
    """

    threads: int | None = 1
    warmup: int = 5
    repeats: int = 25
    min_block_ms: float = 5.0
    max_block_calls: int = 1000
    threshold: float = 0.5

    def __post_init__(self) -> None:
        """Validate the settings."""
        if self.threads is not None:
            check("threads", self.threads, error=ProfileError)
        check("repeats", self.repeats, rule="profile.repeats", error=ProfileError)
        check("warmup", self.warmup, error=ProfileError)
        check("min_block_ms", self.min_block_ms, error=ProfileError)
        check("max_block_calls", self.max_block_calls, error=ProfileError)


@contextlib.contextmanager
def pinned_threads(threads: int | None) -> Iterator[int]:
    """Pin ``torch``'s CPU thread count for the block and restore it afterwards.

    Yields the thread count in force. ``None`` keeps the current count.

    Example:
        >>> before = torch.get_num_threads()
        >>> with pinned_threads(1) as n:
        ...     n, torch.get_num_threads()
        (1, 1)
        >>> torch.get_num_threads() == before
        True
    """
    before = torch.get_num_threads()
    try:
        if threads is not None:
            torch.set_num_threads(threads)
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, else ``platform.processor()``)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def device_hardware(device: torch.device) -> str:
    """CPU model, or the GPU's name for a CUDA device."""
    return str(torch.cuda.get_device_name(device)) if device.type == "cuda" else cpu_model()


class Timer:
    """The timing engine: device-synchronised blocks of calls on one clock.

    Args:
        device: The device the timed work runs on (CUDA is synchronised around each block).
        clock: Seconds, monotonic (default ``time.perf_counter``). Tests inject a fake
            clock that advances when the timed code runs.

    Example:
        >>> ticks = iter(range(100))
        >>> timer = Timer(torch.device("cpu"), clock=lambda: float(next(ticks)))
        >>> timer.block_ms(lambda: None, calls=4)      # one clock tick per read, 4 calls
        250.0
        >>> a, b = timer.paired(lambda: None, lambda: None, repeats=2)
        >>> a, b
        ([1000.0, 1000.0], [1000.0, 1000.0])
    """

    def __init__(self, device: torch.device, clock: Clock | None = None) -> None:
        self.device = device
        self.clock: Clock = clock or time.perf_counter
        self.cuda = device.type == "cuda"

    @property
    def label(self) -> str:
        """What the clock is, as recorded with a measurement."""
        host = "perf_counter" if self.clock is time.perf_counter else getattr(self.clock, "__name__", "injected")
        return f"{host}+cuda_synchronize" if self.cuda else host

    def sync(self) -> None:
        """Wait for the device's queued work (no-op on the CPU)."""
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def now(self) -> float:
        """The clock's reading in seconds (for time bounds measured on the same clock)."""
        return self.clock()

    def block_ms(self, fn: Callable[[], Any], calls: int = 1) -> float:
        """Mean milliseconds per call over a block of ``calls``, device synchronised on both ends."""
        self.sync()
        t0 = self.clock()
        for _ in range(calls):
            fn()
        self.sync()
        return (self.clock() - t0) * 1e3 / calls

    def warm(self, fn: Callable[[], Any], calls: int) -> None:
        """Run ``fn`` untimed ``calls`` times (caches, allocator, lazy initialisation)."""
        for _ in range(calls):
            fn()
        self.sync()

    def block_calls(self, fn: Callable[[], Any], min_block_ms: float, max_calls: int) -> int:
        """How many calls make a block of at least ``min_block_ms`` (one timed call decides)."""
        if min_block_ms <= 0:
            return 1
        one = max(self.block_ms(fn, 1), 1e-6)
        return int(min(max_calls, max(1, math.ceil(min_block_ms / one))))

    def round_robin(self, fns: Sequence[Callable[[], Any]], calls: Sequence[int], repeats: int) -> list[list[float]]:
        """``repeats`` replicates of every callable, one block each per round.

        Returns:
            ``len(fns)`` lists of ``repeats`` milliseconds per call.
        """
        out: list[list[float]] = [[] for _ in fns]
        for _ in range(repeats):
            for i, (fn, n) in enumerate(zip(fns, calls, strict=True)):
                out[i].append(self.block_ms(fn, n))
        return out

    def paired(
        self,
        a: Callable[[], Any],
        b: Callable[[], Any],
        repeats: int,
        *,
        a_first: bool = True,
        calls: int = 1,
        settle: int = 0,
    ) -> tuple[list[float], list[float]]:
        """``repeats`` pairs of ``a`` and ``b`` timed back to back, alternating which goes first.

        Whatever the machine does during a pair hits both of its members alike, so their
        ratio is measured as a ratio; alternating the order cancels what one member leaves
        behind for the next (clock boosts). ``settle`` untimed calls of each member right
        before its timed block let it run in its own steady state rather than in the caches
        the other member left (as it would when deployed alone).

        Returns:
            ``(a_ms, b_ms)``, ``repeats`` milliseconds per call each, pair by pair.
        """
        a_ms: list[float] = []
        b_ms: list[float] = []
        pair = ((a, a_ms), (b, b_ms))
        for r in range(repeats):
            a_leads = (r % 2 == 0) == a_first  # the order alternates pair by pair
            for fn, out in pair if a_leads else pair[::-1]:
                for _ in range(settle):
                    fn()
                out.append(self.block_ms(fn, calls))
        return a_ms, b_ms


Groups = dict[str, list[Callable[[], Any]]]
"""Callables to time, by name: ``stage``, ``decision``, ``exit_path``, ``compaction``,
``ladder:<rows>`` (the exit paths at fewer rows) and ``full_model``, timed in that order."""


def _groups(
    stages: Stages, model: nn.Module, x: Inputs, threshold: float, ladder: list[int]
) -> tuple[Groups, int | None, str]:
    """What :func:`measure_latency` times, by name, the rows compaction is timed at, and what the full model is."""
    k = stages.k
    carries = []
    run = stages.start(x)
    logits: Any = x
    while not run.done:
        carries.append(run.carry)
        logits = run.step()

    def path_runner(at: int) -> EarlyExitRunner:
        """The early exit with every row leaving at exit ``at`` (nobody leaves before it)."""
        t: list[float | None] = [-math.inf if i == at else math.inf for i in range(k - 1)]
        return EarlyExitRunner(stages, [*t, None], [1.0] * k)

    decider = EarlyExitRunner(stages, [threshold] * (k - 1) + [None], [1.0] * k)
    paths = [path_runner(j) for j in range(k)]
    compaction, compaction_rows = _compaction_fns(stages, decider, x)
    full_model, full_model_what = _plain_call(stages, model, x)
    groups: Groups = {
        # each stage as the runner calls it
        "stage": [functools.partial(m, *c) for m, c in zip(stages.callers, carries, strict=True)],
        # a static model (K = 1) makes no exit decision: nothing to time
        "decision": [functools.partial(decider.leaving, logits, 0)] if k > 1 else [],
        "exit_path": [functools.partial(r, x) for r in paths],
        "compaction": compaction,
        **{f"ladder:{rows}": [functools.partial(r, take_rows(x, slice(0, rows))) for r in paths] for rows in ladder},
        "full_model": [full_model],
    }
    return groups, compaction_rows, full_model_what


def _plain_call(stages: Stages, model: nn.Module, x: Inputs) -> tuple[Callable[[], Any], str]:
    """The full-model figure's callable and what it is: the plain deployment, else the model with every head."""
    from dyncal.analysis.plain import plain_deployment, plain_runner

    example = x if batch_size(x) >= 2 else take_rows(x, torch.zeros(2, dtype=torch.int64))
    try:
        plain = plain_runner(plain_deployment(stages, model=model, example=example))
    except ProfileError as e:
        log.warning("the full-model latency times the model with every head (no plain deployment: %s)", e)
        return (lambda: call_model(model, x)), f"the model with every head (no plain deployment: {e})"
    return functools.partial(plain, x), PLAIN_FIGURE


def _timed(
    timer: Timer, groups: Groups, settings: LatencySettings
) -> tuple[dict[str, list[Measurement]], dict[str, list[int]]]:
    """Every callable of ``groups`` warmed up, sized into blocks and timed round-robin.

    Returns:
        A :class:`Measurement` per callable and the calls per block of each, by group.
    """
    fns = [f for group in groups.values() for f in group]
    calls = []
    for f in fns:
        timer.warm(f, settings.warmup)
        calls.append(timer.block_calls(f, settings.min_block_ms, settings.max_block_calls))
    reps, blocks = iter(timer.round_robin(fns, calls, settings.repeats)), iter(calls)
    timed = {name: [Measurement(tuple(next(reps))) for _ in group] for name, group in groups.items()}
    return timed, {name: [next(blocks) for _ in group] for name, group in groups.items()}


def _noisy(timed: dict[str, list[Measurement]], x: Inputs, threads: int | None, repeats: int) -> dict[str, float]:
    """``{name: IQR/median}`` of the noisy stages, decision, exit paths and full model, logged with the remedy."""
    named = [
        *((f"stage{i + 1}", m) for i, m in enumerate(timed["stage"])),
        *(("decision", m) for m in timed["decision"]),
        *((f"exit_path{i + 1}", m) for i, m in enumerate(timed["exit_path"])),
        ("full_model", timed["full_model"][0]),
    ]
    noisy = {name: round(m.spread, 3) for name, m in named if m.noisy}
    if noisy:
        log.warning(
            "noisy latency on %s at batch %d (IQR/median > %.0f%%): %s; %s",
            flatten(x)[0].device,
            batch_size(x),
            100 * NOISE_IQR_FRACTION,
            ", ".join(f"{n} {100 * v:.0f}%" for n, v in noisy.items()),
            noise_advice(threads, repeats),
        )
    return noisy


def _replicates(measurements: list[Measurement]) -> tuple[tuple[float, ...], ...]:
    return tuple(m.replicates_ms for m in measurements)


def measure_latency(
    stages: Stages,
    model: nn.Module,
    x: Inputs,
    settings: LatencySettings | None = None,
    *,
    device_name: str | None = None,
    clock: Clock | None = None,
    timer: Timer | None = None,
) -> LatencyProfile:
    """Measure every stage, the exit decision, each exit path, compaction and the plain model.

    Args:
        stages: The model's stages, on the same device as ``x``.
        model: The multi-exit model (its plain deployment is cut from it when the stages carry no graph).
        x: An input batch ``(B, ...)`` (or a tuple or dict of inputs); ``B`` is the batch size measured.
        settings: How to measure (defaults: 1 thread, 5 warm-up calls, 25 replicates).
        device_name: The device as named in the key (``"cuda"`` rather than ``"cuda:0"``);
            defaults to ``x.device``.
        clock: The host clock (default ``time.perf_counter``; see :class:`Timer`).
        timer: The timing engine (default a :class:`Timer` on ``clock``; on a GPU ``dyncal
            profile`` passes :class:`~dyncal.analysis.cuda_timing.EventTimer`).

    Returns:
        Raw replicate times per stage, per decision, per exit path, per compaction and for
        the full model, with the device, batch size, thread count, hardware and settings.
        Compaction is measured at ``max(2, B)`` rows (a single row cannot be split) and
        left empty when the stages cannot drop rows.

    Raises:
        ProfileError: A stage fails to run on this input.
    """
    settings = settings or LatencySettings()
    first = flatten(x)[0]
    timer = timer or Timer(first.device, clock)
    ladder = _row_ladder(batch_size(x)) if stages.dynamic_batch else []
    with pinned_threads(settings.threads) as threads, torch.inference_mode():
        groups, compaction_rows, full_model_what = _groups(stages, model, x, settings.threshold, ladder)
        timed, blocks = _timed(timer, groups, settings)
    return LatencyProfile(
        device=device_name or str(first.device),
        batch_size=batch_size(x),
        stage_ms=_replicates(timed["stage"]),
        decision_ms=next(iter(_replicates(timed["decision"])), ()),
        full_model_ms=timed["full_model"][0].replicates_ms,
        threads=threads,
        hardware=device_hardware(first.device),
        settings={
            "warmup": settings.warmup,
            "repeats": settings.repeats,
            "min_block_ms": settings.min_block_ms,
            "block_calls": blocks["stage"],
            "decision_block_calls": next(iter(blocks["decision"]), None),
            "exit_path_block_calls": blocks["exit_path"],
            "compaction_block_calls": blocks["compaction"],
            "exit_path_rows": ladder,
            "full_model_block_calls": blocks["full_model"][0],
            "full_model": full_model_what,
            "timer": timer.label,
            "decision": f"softmax max-probability >= {settings.threshold} + host sync (EarlyExitRunner.leaving)",
            "exit_path": "EarlyExitRunner with every row leaving at exit k",
            "compaction": "EarlyExitRunner split at exit k, every other row leaving, and the output assembled",
            "compaction_rows": compaction_rows,
            "dtype": str(first.dtype).replace("torch.", ""),
            "input_shape": list(first.shape[1:]),
            **({} if is_single(x) else {"inputs": describe_inputs(x)}),
            "stages": stages.source,
            "torch": torch.__version__,
            "cpu": cpu_model(),
            "gpu": torch.cuda.get_device_name(first.device) if timer.cuda else None,
            "cuda": torch.version.cuda if timer.cuda else None,
            "cpu_count": os.cpu_count(),
            "noisy": _noisy(timed, x, threads, settings.repeats),
            "noise_iqr_fraction": NOISE_IQR_FRACTION,
        },
        exit_path_ms=_replicates(timed["exit_path"]),
        compaction_ms=_replicates(timed["compaction"]),
        exit_path_rows_ms={rows: _replicates(timed[f"ladder:{rows}"]) for rows in ladder},
    )


def _row_ladder(batch_size: int) -> list[int]:
    """Row counts below ``batch_size`` whose exit paths are measured too: 2, 4, 8, ... (powers of two).

    Example:
        >>> _row_ladder(32), _row_ladder(5), _row_ladder(1)
        ([2, 4, 8, 16], [2, 4], [])
    """
    return [1 << i for i in range(1, (batch_size - 1).bit_length())]  # the powers of two in [2, batch_size)


def _compaction_fns(stages: Stages, runner: Any, x: Inputs) -> tuple[list[Callable[[], Any]], int | None]:
    """One callable per exit before the last: the runner's split with every other row leaving.

    Measured at ``max(2, B)`` rows on the carry the next stage would receive; none when the
    stages cannot drop rows (early exit then runs whole batches and never compacts).
    """
    if not stages.can_drop_rows or not stages.dynamic_batch:
        return [], None
    rows = max(2, batch_size(x))
    device = flatten(x)[0].device
    xc = x if batch_size(x) == rows else take_rows(x, torch.zeros(rows, dtype=torch.int64, device=device))
    leave = torch.zeros(rows, dtype=torch.bool, device=device)
    leave[::2] = True
    rest = torch.zeros(rows - int(leave.sum()), dtype=torch.int64, device=device)  # predictions of the stayers
    fns: list[Callable[[], Any]] = []
    run = stages.start(xc)
    for k in range(stages.k - 1):
        logits = run.step()
        snapshot = copy.copy(run)  # its carry is what stage k+1 receives; each call cuts a copy
        fns.append(functools.partial(_compact_copy, runner, snapshot, logits, leave, k, rest))
    return fns, rows


def _compact_copy(
    runner: Any, snapshot: Any, logits: torch.Tensor, leave: torch.Tensor, k: int, rest: torch.Tensor
) -> Any:
    """One compaction on a copy of ``snapshot`` (the snapshot itself is never cut)."""
    return runner.compact(copy.copy(snapshot), logits, leave, k, rest)
