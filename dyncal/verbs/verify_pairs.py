"""verify's pairs: the early exit and the plain deployment timed back to back, and more of them when needed.

:func:`time_pairs` times ``n`` pairs on one batch (:meth:`dyncal.analysis.latency.Timer.paired`,
each member run untimed right before it is timed); :func:`more_pairs_rounds` adds rounds of
pairs on every timed batch while the speed-up is not settled, within the time bound
(:func:`dyncal.pair_rounds.add_rounds`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from functools import partial
from typing import Any, TypeVar

import numpy as np
import torch

from dyncal.analysis.early_exit import EarlyExitRunner
from dyncal.analysis.latency import Timer
from dyncal.errors import user_call
from dyncal.inputs import to_device
from dyncal.pair_rounds import PairRounds, add_rounds, max_pairs_for

__all__ = ["SETTLE", "time_pairs", "more_pairs_rounds"]

T = TypeVar("T")
Subject = tuple[EarlyExitRunner, EarlyExitRunner, int]
"""The early exit, the plain deployment's runner and the batch size they are timed at."""

SETTLE = 1
"""Untimed calls of each pair member right before it is timed (its own caches, as deployed)."""


def time_pairs(
    timer: Timer, subject: Subject, x: torch.Tensor, n: int, a_first: bool, out: list[Any] | None = None
) -> tuple[list[float], list[float]]:
    """``n`` pairs on ``x``, alternating which goes first; the early exit's outputs appended to ``out`` when given."""
    runner, plain, b = subject
    ee = partial(runner, x) if out is None else partial(_into, out, runner, x)
    # a runner enters inference mode itself: timed as deployed, with nothing around it
    pair = partial(timer.paired, ee, partial(plain, x), n, a_first=a_first, settle=SETTLE)
    return user_call(pair, f"the early exit or the model failed at batch size {b}")


def more_pairs_rounds(
    timer: Timer,
    subject: Subject,
    inputs: Callable[[], Iterable[tuple[np.ndarray, torch.Tensor]]],
    rows: tuple[list[list[float]], list[list[float]]],
    *,
    repeats: int,
    estimator: str,
    start: float,
    share_s: float,
) -> PairRounds:
    """Rounds of ``repeats`` more pairs on every timed batch (``inputs()`` streams them again) until settled.

    ``rows`` (early exit, plain) are extended in place; the deadline is ``start + share_s`` on the timer's clock.
    """

    def one_round(n: int, a_first: bool) -> Iterable[tuple[list[float], list[float]]]:
        return (time_pairs(timer, subject, to_device(x, timer.device), n, a_first) for _, x in inputs())

    return add_rounds(
        *rows,
        one_round,
        clock=timer.now,
        deadline=start + share_s,
        estimator=estimator,
        round_pairs=repeats,
        max_pairs=max_pairs_for(repeats),
        seconds_per_pair=(timer.now() - start) / repeats,
    )


def _into(out: list[T], fn: Callable[[torch.Tensor], T], x: torch.Tensor) -> None:
    """``out.append(fn(x))``: keeps what a timed call returned."""
    out.append(fn(x))
