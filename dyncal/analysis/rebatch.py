"""The throughput mode: early exit over a stream of batches, every stage run on full batches.

Per-batch early exit shrinks the batch at every exit: stage ``k`` runs on the rows still
there. On a GPU a stage on 16 rows costs about what it costs on 32, so the MACs saved do
not turn into time. :class:`Rebatcher` pools the rows that continue from successive input
batches instead: each stage has a queue, a stage runs whenever its queue holds a full batch
(``batch_size`` rows, by default the first input batch's size), the rows that leave are
answered and the rest join the next stage's queue. At the end of the stream every queue is
flushed (smaller batches). Results come out per input batch, in input order, once every row
of the batch is answered.

Each row meets the same stages and the same exit rule as in per-batch early exit, so its
exit and prediction are the same (up to the floating-point differences a kernel may show
between batch sizes). The decisions reuse the runner's own (:meth:`ExitRule.leaving`): one
host synchronisation per stage run, the rest stays on the device.

Works with any runner that has ``stages``, ``k`` and ``leaving(logits, k)``:
:class:`~dyncal.analysis.early_exit.EarlyExitRunner` and so an exported package's runner.

Example:
    >>> import torch
    >>> from dyncal.analysis.early_exit import EarlyExitRunner
    >>> from dyncal.analysis.stages import build_stages
    >>> from dyncal.demo import pretrained
    >>> stages = build_stages(pretrained(), torch.zeros(2, 1, 8, 8))
    >>> runner = EarlyExitRunner(stages, [0.9, 0.9, 0.9, None], [1.0] * 4)
    >>> batches = [torch.randn(4, 1, 8, 8) for _ in range(3)]
    >>> out = list(Rebatcher(runner).map(batches))
    >>> [tuple(e.shape) for e, _ in out]
    [(4,), (4,), (4,)]
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from dyncal.analysis.carry import (
    BatchDims,
    cat_rows,
    check_stage_output,
    input_batch_dims,
    narrow_rows,
    split_rows,
    take_rows,
)
from dyncal.analysis.stages import Stages
from dyncal.errors import DyncalError, ProfileError, param

__all__ = ["ExitRule", "Rebatcher", "RebatchStats"]

log = logging.getLogger(__name__)


class ExitRule(Protocol):
    """What the throughput mode needs of a runner: its stages and its exit decision."""

    stages: Stages
    k: int

    def leaving(self, logits: torch.Tensor, k: int) -> tuple[torch.Tensor, int]:
        """Which rows leave at exit ``k`` (``(B,)`` bool) and how many."""
        ...


@dataclass
class RebatchStats:
    """What a :class:`Rebatcher` did so far.

    Attributes:
        stage_calls: Times each stage ran, ``K`` ints.
        stage_rows: Rows each stage computed, ``K`` ints.
        full_calls: Runs of each stage on a full batch, ``K`` ints (the others are flushes).
        batches: Input batches answered.
    """

    stage_calls: list[int] = field(default_factory=list)
    stage_rows: list[int] = field(default_factory=list)
    full_calls: list[int] = field(default_factory=list)
    batches: int = 0


@dataclass
class _Chunk:
    """Rows waiting for a stage: their carry, their global row numbers, the oldest batch they may hold."""

    values: tuple[Any, ...]
    dims: BatchDims
    rows: torch.Tensor
    n: int
    first_batch: int


class _Answers:
    """Exits and predictions of the rows not yet handed out, on the device, indexed by global row number."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.base = 0  # global row number of exits[0]
        self.size = 0
        self.exits = torch.empty(0, dtype=torch.int64, device=device)
        self.preds = torch.empty(0, dtype=torch.int64, device=device)

    def reserve(self, n: int) -> None:
        if self.size + n > self.exits.shape[0]:
            cap = max(2 * (self.size + n), 1024)
            exits = torch.full((cap,), -1, dtype=torch.int64, device=self.device)
            preds = torch.full((cap,), -1, dtype=torch.int64, device=self.device)
            exits[: self.size] = self.exits[: self.size]
            preds[: self.size] = self.preds[: self.size]
            self.exits, self.preds = exits, preds
        self.size += n

    def write(self, rows: torch.Tensor, k: int, preds: torch.Tensor) -> None:
        local = rows - self.base
        self.exits.index_fill_(0, local, k)
        self.preds.index_copy_(0, local, preds)

    def pop(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.exits[:n].clone(), self.preds[:n].clone()
        self.exits, self.preds = self.exits[n:], self.preds[n:]
        self.base += n
        self.size -= n
        return out


class Rebatcher:
    """Early exit over a stream of batches, pooling the rows that continue so stages run on full batches.

    Args:
        runner: An early-exit runner (:class:`~dyncal.analysis.early_exit.EarlyExitRunner`, a
            package's runner): its stages and its exit decision are used as they are.
        batch_size: Rows of a full batch (default: the first input batch's).
        max_pending: At most this many input batches wait for answers; when more would,
            every queue is flushed (smaller batches) so results keep coming. None: no bound
            (a batch waits until enough rows behind it fill the queues, or the stream ends).

    Raises:
        ProfileError: The stages cannot drop rows (early exit must then run whole batches).
        DyncalError: ``batch_size`` or ``max_pending`` is not a positive integer.

    Example:
        >>> from dyncal.analysis.early_exit import EarlyExitRunner
        >>> from dyncal.analysis.stages import build_stages
        >>> from dyncal.demo import pretrained
        >>> runner = EarlyExitRunner(build_stages(pretrained(), torch.zeros(2, 1, 8, 8)), [0.9] * 3 + [None], [1.0] * 4)
        >>> rb = Rebatcher(runner, batch_size=8)
        >>> sizes = [len(e) for e, _ in rb.map(torch.randn(5, 1, 8, 8) for _ in range(4))]
        >>> sizes, rb.stats.full_calls[0]          # 20 rows: stage 1 ran twice on 8 rows, then on 4
        ([5, 5, 5, 5], 2)
    """

    def __init__(self, runner: ExitRule, *, batch_size: int | None = None, max_pending: int | None = None) -> None:
        for name, value in (("batch_size", batch_size), ("max_pending", max_pending)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise DyncalError(f"{param(name)} must be a positive integer, got {value!r}")
        stages = runner.stages
        if not stages.can_drop_rows:
            raise ProfileError(
                f"samples cannot leave this model's batch early: {stages.drop_rows_reason}; the throughput mode "
                "pools the rows that continue, so it needs stages that can drop rows"
            )
        self.runner = runner
        self.batch_size = batch_size
        self.max_pending = max_pending
        self.stats = RebatchStats([0] * runner.k, [0] * runner.k, [0] * runner.k)

    def map(self, batches: Iterable[torch.Tensor]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Early-exit every batch of ``batches``; yield ``(exits, predictions)`` per batch, in input order.

        Batches are read lazily: a result comes out as soon as all of its rows are answered
        (and the ones before it were handed out), so a stream can be served as it arrives.

        Args:
            batches: Input batches ``(B_i, ...)`` on one device (sizes may differ; the last is
                often smaller).

        Yields:
            ``(exits, predictions)``: int64 ``(B_i,)`` each on the batches' device, exits
            0-based, for batch ``i`` in order.
        """
        run = _Stream(self)
        for x in batches:
            with torch.inference_mode():
                run.add(x)
            yield from run.ready()
        with torch.inference_mode():
            run.flush()
        yield from run.ready()


class _Stream:
    """The state of one :meth:`Rebatcher.map`: a queue per stage, the answers, the batches waiting."""

    def __init__(self, rb: Rebatcher) -> None:
        self.rb = rb
        self.runner = rb.runner
        self.stages = rb.runner.stages
        self.k = rb.runner.k
        self.full = rb.batch_size
        self.queues: list[deque[_Chunk]] = [deque() for _ in range(self.k)]
        self.queued = [0] * self.k
        self.sizes: deque[int] = deque()  # rows of the batches not yet handed out, oldest first
        self.next_batch = 0  # id of the next input batch
        self.first_pending = 0  # id of the oldest batch not handed out
        self.rows_seen = 0
        self.answers: _Answers | None = None

    def add(self, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor) or x.ndim == 0:
            raise DyncalError(f"each batch must be a tensor (B, ...); got {type(x).__name__}")
        n = int(x.shape[0])
        if self.answers is None:
            self.answers = _Answers(x.device)
        elif x.device != self.answers.device:
            raise DyncalError(f"all batches must be on one device: {self.answers.device}, then {x.device}")
        if self.full is None and n:
            self.full = n  # the first batch with rows sets the full size
        rows = torch.arange(self.rows_seen, self.rows_seen + n, device=x.device)
        self.answers.reserve(n)
        self.sizes.append(n)
        self.rows_seen += n
        if n:
            self._push(0, _Chunk((x,), (0,), rows, n, self.next_batch))
        self.next_batch += 1
        for k in range(self.k):
            while self.full is not None and self.queued[k] >= self.full:
                self._run(k, self.full)
        if self.rb.max_pending is not None and len(self.sizes) > self.rb.max_pending:
            self.flush()

    def flush(self) -> None:
        """Run every stage on what waits for it, in stage order, in batches of at most ``full`` rows."""
        for k in range(self.k):
            while self.queued[k]:
                self._run(k, min(self.queued[k], self.full or self.queued[k]))

    def ready(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Hand out the oldest batches whose rows are all answered."""
        oldest_waiting = min((q[0].first_batch for q in self.queues if q), default=self.next_batch)
        while self.sizes and self.first_pending < oldest_waiting:
            assert self.answers is not None
            out = self.answers.pop(self.sizes.popleft())
            self.first_pending += 1
            self.rb.stats.batches += 1
            yield out

    def _push(self, k: int, chunk: _Chunk) -> None:
        self.queues[k].append(chunk)
        self.queued[k] += chunk.n

    def _pop(self, k: int, n: int) -> _Chunk:
        """The first ``n`` rows waiting for stage ``k``, joined into one chunk."""
        q = self.queues[k]
        parts: list[_Chunk] = []
        got = 0
        while got < n:
            c = q.popleft()
            if got + c.n > n:  # split: the rest waits at the front
                m = n - got
                q.appendleft(
                    _Chunk(narrow_rows(c.values, c.dims, m, c.n - m), c.dims, c.rows[m:], c.n - m, c.first_batch)
                )
                c = _Chunk(narrow_rows(c.values, c.dims, 0, m), c.dims, c.rows[:m], m, c.first_batch)
            parts.append(c)
            got += c.n
        self.queued[k] -= n
        if len(parts) == 1:
            return parts[0]
        dims = parts[0].dims
        return _Chunk(
            cat_rows([p.values for p in parts], dims),
            dims,
            torch.cat([p.rows for p in parts]),
            n,
            parts[0].first_batch,
        )

    def _run(self, k: int, n: int) -> None:
        """Run stage ``k`` on its first ``n`` waiting rows; answer those leaving, queue the rest."""
        c = self._pop(k, n)
        stats = self.rb.stats
        stats.stage_calls[k] += 1
        stats.stage_rows[k] += n
        stats.full_calls[k] += int(n == self.full)
        out = check_stage_output(self.stages.callers[k](*c.values), k)  # the module, or its lean code
        logits = out[0]
        assert self.answers is not None
        if k == self.k - 1:
            self.answers.write(c.rows, k, logits.argmax(dim=1))
            return
        leave, n_leave = self.runner.leaving(logits, k)
        carry = out[1:]
        if n_leave == n:
            self.answers.write(c.rows, k, logits.argmax(dim=1))
            return
        dims = input_batch_dims(self.stages, k + 1, carry)
        if n_leave == 0:
            self._push(k + 1, _Chunk(carry, dims, c.rows, n, c.first_batch))
            return
        gone, stay = split_rows(leave, n_leave)
        self.answers.write(c.rows[gone], k, logits[gone].argmax(dim=1))
        self._push(k + 1, _Chunk(take_rows(carry, dims, stay), dims, c.rows[stay], n - n_leave, c.first_batch))
