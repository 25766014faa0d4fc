"""GPU timing worth trusting: CUDA events, clocks that have settled, kernels chosen before timing.

* :class:`EventTimer` is :class:`~dyncal.analysis.latency.Timer` with each block timed by
  two CUDA events recorded on the device's stream around it (the device's own clock, no
  host clock jitter at either end), and a warm-up that goes on until block times settle;
  on the CPU it is the plain :class:`Timer`, so code written against it runs (and is
  tested) anywhere. ``dyncal profile`` and ``dyncal verify`` time with it.
* :func:`settle` warms a callable up until its block times stop drifting (GPU clocks ramp
  up, caches and the allocator fill): the last ``window`` blocks must spread (IQR over
  median) by at most ``tolerance``, within a bound on blocks.
* :func:`autotuned` lets cuDNN pick its kernels for the shapes at hand (``cudnn.benchmark``)
  for a block (warm-up, graph capture) and restores the setting: the choice must be made
  before timing, not during it; :func:`device_tuned` does so on a CUDA device only.

Example:
    >>> ticks = iter(range(1000))
    >>> timer = EventTimer(torch.device("cpu"), clock=lambda: float(next(ticks)))
    >>> timer.label, timer.block_ms(lambda: None, calls=2)   # the CPU: the host clock
    ('<lambda>', 500.0)
    >>> settle(timer, lambda: None, window=3).settled          # equal blocks: settled at once
    True
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from dyncal.analysis.latency import Timer
from dyncal.artifacts.fields import JsonFields
from dyncal.errors import DyncalError, param
from dyncal.measurement import Measurement

__all__ = ["EventTimer", "SettleResult", "settle", "autotuned", "device_tuned"]

SETTLE_MAX_BLOCKS = 20
"""Most blocks :meth:`EventTimer.warm` adds on a GPU while waiting for times to settle."""


class EventTimer(Timer):
    """A :class:`~dyncal.analysis.latency.Timer` whose blocks CUDA events time on a GPU.

    Args:
        device: Where the timed work runs; on a CUDA device events time each block, on the
            CPU the host clock does (as :class:`Timer`).
        clock: Host clock for the CPU and for :meth:`now` (default ``time.perf_counter``).
    """

    @property
    def label(self) -> str:
        """``cuda_events`` on a GPU, else the host clock's name."""
        return "cuda_events" if self.cuda else super().label

    def warm(self, fn: Callable[[], Any], calls: int) -> None:
        """``calls`` untimed calls; on a GPU then blocks until their times settle (:func:`settle`).

        GPU clocks ramp up and the allocator fills over the first calls, so a fixed number
        of warm-up calls leaves the first replicates slower; the settled warm-up stops once
        the last blocks agree within 2 % (at most :data:`SETTLE_MAX_BLOCKS` blocks).
        """
        super().warm(fn, calls)
        if self.cuda:
            settle(self, fn, max_blocks=SETTLE_MAX_BLOCKS)

    def block_ms(self, fn: Callable[[], Any], calls: int = 1) -> float:
        """Mean milliseconds per call over a block of ``calls``: between two events on the device's stream.

        The stream is synchronised before the block (nothing queued earlier is counted) and
        the end event is waited for; host synchronisations inside ``fn`` (an early exit's
        decisions) are part of the time, as they are of a deployment's.
        """
        if not self.cuda:
            return super().block_ms(fn, calls)
        with torch.cuda.device(self.device):
            start = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
            end = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
            torch.cuda.synchronize(self.device)
            start.record()
            for _ in range(calls):
                fn()
            end.record()
            end.synchronize()
            return float(start.elapsed_time(end)) / calls


@dataclass(frozen=True)
class SettleResult(JsonFields):
    """How a warm-up went.

    Attributes:
        blocks: Blocks run (each ``calls`` calls).
        settled: Whether the last ``window`` blocks spread by at most the tolerance.
        spread: IQR over median of the last ``window`` blocks.
        last_ms: Their milliseconds per call.
    """

    blocks: int
    settled: bool
    spread: float
    last_ms: tuple[float, ...]


def settle(
    timer: Timer,
    fn: Callable[[], Any],
    *,
    calls: int = 1,
    window: int = 5,
    tolerance: float = 0.02,
    max_blocks: int = 200,
) -> SettleResult:
    """Run ``fn`` in timed blocks until its times settle, or ``max_blocks`` blocks have run.

    Args:
        timer: The timer the measurement will use.
        fn: What will be timed.
        calls: Calls per block.
        window: Blocks that must agree (at least 3).
        tolerance: Largest IQR over median of the last ``window`` blocks that counts as settled.
        max_blocks: Upper bound on blocks; the result says whether it settled by then.

    Returns:
        How many blocks ran and whether the times settled.

    Raises:
        DyncalError: ``window`` below 3, ``calls`` or ``max_blocks`` below 1, or a
            negative ``tolerance``.
    """
    if window < 3:
        raise DyncalError(f"{param('window')} must be at least 3 blocks, got {window}")
    if calls < 1 or max_blocks < 1:
        raise DyncalError(f"{param('calls')} and {param('max_blocks')} must be at least 1, got {calls}, {max_blocks}")
    if not tolerance >= 0:
        raise DyncalError(f"{param('tolerance')} must be >= 0, got {tolerance}")
    times: list[float] = []
    for _ in range(max_blocks):
        times.append(timer.block_ms(fn, calls))
        if len(times) >= window and (spread := Measurement(tuple(times[-window:])).spread) <= tolerance:
            return SettleResult(len(times), True, spread, tuple(times[-window:]))
    last = times[-window:]
    return SettleResult(len(times), False, Measurement(tuple(last)).spread, tuple(last))


def device_tuned(device: torch.device) -> contextlib.AbstractContextManager[None]:
    """:func:`autotuned` on a CUDA device; elsewhere nothing (the user's cuDNN setting is left alone).

    Example:
        >>> with device_tuned(torch.device("cpu")):
        ...     pass
    """
    return autotuned() if device.type == "cuda" else contextlib.nullcontext()


@contextlib.contextmanager
def autotuned(enabled: bool = True) -> Iterator[None]:
    """Let cuDNN benchmark and pick convolution kernels for the block; restore the setting after.

    Run the warm-up (and any CUDA graph capture) inside, so the kernels are chosen before
    anything is timed. A no-op for work that does not run on cuDNN.

    Example:
        >>> before = torch.backends.cudnn.benchmark
        >>> with autotuned():
        ...     torch.backends.cudnn.benchmark
        True
        >>> torch.backends.cudnn.benchmark == before
        True
    """
    before = torch.backends.cudnn.benchmark
    try:
        torch.backends.cudnn.benchmark = enabled
        yield
    finally:
        torch.backends.cudnn.benchmark = before
