"""Measured latency of every stage, every exit decision and the plain model.

What is timed, on one device at one batch size:

* each stage ``k`` on the carry it receives (so exit ``k`` costs stages ``1..k``);
* one exit decision: the score of a ``(B, C)`` logits tensor (top softmax probability)
  compared with a threshold, plus the host synchronisation that reading the result needs;
* the plain, unpartitioned model producing all exits, for reference.

Method (after ``torch.utils.benchmark``): the CPU thread count is pinned and restored in a
``try/finally``; every callable first runs ``warmup`` times; each replicate runs a block of
calls long enough that the clock's overhead is negligible and records the mean time per
call; stages are measured round-robin so slow drifts of the machine hit all stages alike.
On CUDA the device is synchronised before every clock read and blocks are timed with CUDA
events. Raw replicates are kept (:class:`dyncal.run.LatencyProfile`); medians and spreads
are derived on read. A stage whose inter-quartile range exceeds 10% of its median is
flagged in ``settings["noisy"]`` and logged.

Example:
    >>> import torch
    >>> from dyncal.demo import DigitsExitNet
    >>> from dyncal.analysis.stages import build_stages
    >>> net = DigitsExitNet().eval()
    >>> stages = build_stages(net, torch.zeros(2, 1, 8, 8))
    >>> settings = LatencySettings(repeats=3, warmup=1)
    >>> prof = measure_latency(stages, net, torch.zeros(1, 1, 8, 8), settings)
    >>> prof.key, len(prof.stage_ms), len(prof.stage_ms[0])
    ('cpu/b1', 4, 3)
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import platform
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from dyncal.analysis.stages import Stages
from dyncal.errors import ProfileError
from dyncal.run import LatencyProfile

__all__ = [
    "LatencySettings",
    "measure_latency",
    "pinned_threads",
    "cpu_model",
    "device_label",
    "device_hardware",
    "NOISE_IQR_FRACTION",
]

log = logging.getLogger(__name__)

NOISE_IQR_FRACTION = 0.10
"""A measurement whose IQR exceeds this fraction of its median is flagged as noisy."""


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
        if self.threads is not None and self.threads < 1:
            raise ProfileError(f"--threads must be at least 1, got {self.threads}")
        if self.repeats < 3:
            raise ProfileError(f"repeats must be at least 3 to give a spread, got {self.repeats}")
        if self.warmup < 0 or self.min_block_ms < 0 or self.max_block_calls < 1:
            raise ProfileError(
                f"warmup, min_block_ms and max_block_calls must be >= 0, >= 0, >= 1; got "
                f"{self.warmup}, {self.min_block_ms}, {self.max_block_calls}"
            )


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


def device_label(device: torch.device) -> str:
    """The device's name in cost-table keys: ``cpu``, ``cuda`` or ``cuda:N`` as given."""
    return str(device)


def device_hardware(device: torch.device) -> str:
    """CPU model, or the GPU's name for a CUDA device."""
    if device.type == "cuda":
        return str(torch.cuda.get_device_name(device))
    return cpu_model()


class _Clock:
    """Times blocks of calls on one device; synchronises CUDA before reading."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.cuda = device.type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def block_ms(self, fn: Callable[[], Any], calls: int) -> float:
        """Mean milliseconds per call over a block of ``calls``."""
        if self.cuda:
            # Events are recorded on the current stream of *this* device (cuda:N, not cuda:0).
            stream = torch.cuda.current_stream(self.device)
            start = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
            end = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
            self.sync()
            with torch.cuda.device(self.device):
                start.record(stream)
                for _ in range(calls):
                    fn()
                end.record(stream)
            end.synchronize()
            return float(start.elapsed_time(end)) / calls
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        return (time.perf_counter() - t0) * 1e3 / calls

    def wall_block_ms(self, fn: Callable[[], Any], calls: int) -> float:
        """Like :meth:`block_ms` on the host clock (for work that syncs the host itself)."""
        self.sync()
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        self.sync()
        return (time.perf_counter() - t0) * 1e3 / calls


def _block_calls(clock: _Clock, fn: Callable[[], Any], settings: LatencySettings, wall: bool) -> int:
    """How many calls make a block of at least ``min_block_ms``."""
    timer = clock.wall_block_ms if wall else clock.block_ms
    for _ in range(settings.warmup):
        fn()
    one = max(timer(fn, 1), 1e-6)
    return int(min(settings.max_block_calls, max(1, math.ceil(settings.min_block_ms / one))))


def _bind(module: nn.Module, args: tuple[Any, ...]) -> Callable[[], Any]:
    """``module(*args)`` as a callable without arguments."""
    return lambda: module(*args)


def _decision(threshold: float) -> Callable[[torch.Tensor], int]:
    def decide(logits: torch.Tensor) -> int:
        conf = torch.softmax(logits.float(), dim=1).amax(dim=1)
        return int((conf >= threshold).sum())  # reading the count is the host sync

    return decide


def measure_latency(
    stages: Stages,
    model: nn.Module,
    x: torch.Tensor,
    settings: LatencySettings | None = None,
    *,
    device_name: str | None = None,
) -> LatencyProfile:
    """Measure every stage, one exit decision and the plain model on ``x``'s device.

    Args:
        stages: The model's stages, on the same device as ``x``.
        model: The plain model (for the reference time).
        x: An input batch ``(B, ...)``; ``B`` is the batch size measured.
        settings: How to measure (defaults: 1 thread, 5 warm-up calls, 25 replicates).
        device_name: The device as named in the key (``"cuda"`` rather than ``"cuda:0"``);
            defaults to ``x.device``.

    Returns:
        Raw replicate times per stage, per decision and for the full model, with the
        device, batch size, thread count, hardware name and settings.

    Raises:
        ProfileError: A stage fails to run on this input.
    """
    settings = settings or LatencySettings()
    device = x.device
    clock = _Clock(device)
    with pinned_threads(settings.threads) as threads, torch.inference_mode():
        carries = []
        run = stages.start(x)
        logits = x
        while not run.done:
            carries.append(run.carry)
            logits = run.step()
        stage_fns = [_bind(m, c) for m, c in zip(stages.modules, carries, strict=True)]
        decide = _decision(settings.threshold)
        last_logits = logits
        decision_fn: Callable[[], Any] = lambda: decide(last_logits)  # noqa: E731
        model_fn: Callable[[], Any] = lambda: model(x)  # noqa: E731

        calls = [_block_calls(clock, f, settings, wall=False) for f in stage_fns]
        dec_calls = _block_calls(clock, decision_fn, settings, wall=True)
        model_calls = _block_calls(clock, model_fn, settings, wall=False)

        stage_ms: list[list[float]] = [[] for _ in stage_fns]
        decision_ms: list[float] = []
        model_ms: list[float] = []
        for _ in range(settings.repeats):
            for i, f in enumerate(stage_fns):
                stage_ms[i].append(clock.block_ms(f, calls[i]))
            decision_ms.append(clock.wall_block_ms(decision_fn, dec_calls))
            model_ms.append(clock.block_ms(model_fn, model_calls))

    noisy = {}
    for name, reps in [
        *((f"stage{i + 1}", r) for i, r in enumerate(stage_ms)),
        ("decision", decision_ms),
        ("full_model", model_ms),
    ]:
        q75, q50, q25 = np.percentile(reps, [75, 50, 25])
        if q50 > 0 and (q75 - q25) > NOISE_IQR_FRACTION * q50:
            noisy[name] = round(float((q75 - q25) / q50), 3)
    if noisy:
        log.warning(
            "noisy latency on %s at batch %d (IQR/median > %.0f%%): %s",
            device,
            x.shape[0],
            100 * NOISE_IQR_FRACTION,
            ", ".join(f"{k} {100 * v:.0f}%" for k, v in noisy.items()),
        )
    info: dict[str, Any] = {
        "warmup": settings.warmup,
        "repeats": settings.repeats,
        "min_block_ms": settings.min_block_ms,
        "block_calls": calls,
        "decision_block_calls": dec_calls,
        "full_model_block_calls": model_calls,
        "timer": "cuda_events" if clock.cuda else "perf_counter",
        "decision": f"softmax max-probability >= {settings.threshold} + host sync",
        "dtype": str(x.dtype).replace("torch.", ""),
        "input_shape": list(x.shape[1:]),
        "stages": stages.source,
        "torch": torch.__version__,
        "cpu": cpu_model(),
        "gpu": torch.cuda.get_device_name(device) if clock.cuda else None,
        "cuda": torch.version.cuda if clock.cuda else None,
        "cpu_count": os.cpu_count(),
        "noisy": noisy,
        "noise_iqr_fraction": NOISE_IQR_FRACTION,
    }
    return LatencyProfile(
        device=device_name or device_label(device),
        batch_size=int(x.shape[0]),
        stage_ms=tuple(tuple(r) for r in stage_ms),
        decision_ms=tuple(decision_ms),
        full_model_ms=tuple(model_ms),
        threads=threads,
        hardware=device_hardware(device),
        settings=info,
    )
