"""The early exit itself: a model's stages run one at a time, the confident rows leaving.

:class:`EarlyExitRunner` runs a model's stages (:mod:`dyncal.analysis.stages`) one at a
time; after stage ``k`` it scores exit ``k`` (temperature, score as in thresholds.json),
lets the samples with ``score >= t_k`` leave, and hands only the staying rows to stage
``k+1``. When nobody is left, later stages never run. At batch 1 each exit's score is read
once as a float and compared on the host (:meth:`EarlyExitRunner.leaves_one`): the same
decision, fewer operations. That is the computation a deployed
model does: ``dyncal profile`` times its parts (:mod:`dyncal.analysis.latency`), ``dyncal
verify`` times it whole (:mod:`dyncal.verbs.verify`) and an exported package
subclasses it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import torch

from dyncal.analysis.carry import split_rows
from dyncal.analysis.rebatch import Rebatcher
from dyncal.analysis.stages import StageRun, Stages
from dyncal.artifacts.thresholds import thresholds_from_json
from dyncal.choices import Score
from dyncal.errors import DyncalError
from dyncal.inputs import batch_size, flatten

__all__ = ["EarlyExitRunner"]

AtExit = tuple[torch.Tensor | None, int, torch.Tensor]
"""Rows at one exit: their indices (None: every row still there), the exit, and their predictions or scores."""


class EarlyExitRunner:
    """Runs stages with real early exit.

    Args:
        stages: The model's stages.
        thresholds: ``K`` thresholds, the last None (or NaN/inf: nobody leaves there).
        temperatures: ``K`` positive temperatures.
        score: ``maxprob``, ``margin`` or ``entropy``.

    Example:
        >>> from dyncal.analysis.stages import build_stages
        >>> from dyncal.demo import pretrained
        >>> stages = build_stages(pretrained(), torch.zeros(2, 1, 8, 8))
        >>> runner = EarlyExitRunner(stages, [0.0, 2.0, 2.0, None], [1.0] * 4)
        >>> exits, preds = runner(torch.zeros(3, 1, 8, 8))
        >>> exits.tolist()          # threshold 0 at exit 1: everyone leaves there
        [0, 0, 0]
    """

    def __init__(
        self,
        stages: Stages,
        thresholds: Sequence[float | None],
        temperatures: Sequence[float],
        score: str = "maxprob",
    ) -> None:
        Score.parse(score, "score")
        k = stages.k
        t = thresholds_from_json(list(thresholds))
        if len(t) != k - 1 or len(temperatures) != k:
            raise DyncalError(
                f"thresholds ({len(t) + 1}) and temperatures ({len(temperatures)}) must match the model's K={k} exits"
            )
        self.stages = stages
        self.k = k
        self.thresholds = [float(v) for v in t]
        # float32 as the scores: a host comparison with these decides as the tensor one does (bit for bit)
        self.thresholds32 = [torch.tensor(v, dtype=torch.float32).item() for v in self.thresholds]
        self.temperatures = [float(v) for v in temperatures]
        self.score = score

    def _score(self, logits: torch.Tensor, k: int) -> torch.Tensor:
        # float32 logits and a temperature of 1 skip two no-op calls (the same scores bit for bit)
        z = logits if logits.dtype == torch.float32 else logits.float()
        t = self.temperatures[k]
        p = torch.softmax(z if t == 1.0 else z / t, dim=1)
        if self.score == "maxprob":
            return p.amax(dim=1)
        if self.score == "margin":
            top2 = p.topk(2, dim=1).values
            return top2[:, 0] - top2[:, 1]
        entropy: torch.Tensor = torch.special.xlogy(p, p).sum(dim=1)
        return entropy

    def leaving(self, logits: torch.Tensor, k: int) -> tuple[torch.Tensor, int]:
        """Which rows leave at exit ``k`` (``(B,)`` bool) and how many.

        Reading the count is the host synchronisation every early exit pays at every exit.
        """
        leave = self._score(logits, k) >= self.thresholds[k]
        return leave, int(leave.sum()) if leave.shape[0] != 1 else int(bool(leave))  # one call less per request

    def leaves_one(self, logits: torch.Tensor, k: int) -> tuple[bool, float]:
        """Whether a batch of one leaves at exit ``k``, and its score (read once, as a Python float).

        The batch-1 form of :meth:`leaving`: the score comes to the host (the synchronisation
        every early exit pays) and is compared there with the float32 threshold, the same decision
        as the tensor comparison ``score >= threshold`` (which rounds the threshold to float32).

        Example:
            >>> from dyncal.analysis.stages import build_stages
            >>> from dyncal.demo import pretrained
            >>> stages = build_stages(pretrained(), torch.zeros(2, 1, 8, 8))
            >>> runner = EarlyExitRunner(stages, [0.0, 2.0, 2.0, None], [1.0] * 4)
            >>> leave, score = runner.leaves_one(torch.zeros(1, 10), 0)
            >>> leave, round(score, 3)          # ten equal logits: maxprob 0.1 >= threshold 0
            (True, 0.1)
        """
        score: float = self._score(logits, k).item()
        return score >= self.thresholds32[k], score

    def run_one(self, x: torch.Tensor, scores: list[float] | None = None) -> tuple[int, torch.Tensor, torch.Tensor]:
        """Early-exit a batch of one: ``(exit, that exit's logits, predictions (1,))``.

        Each exit's decision reads its score once (:meth:`leaves_one`); those read are appended
        to ``scores`` when given (what telemetry records). The last exit computes no score.
        Call it under ``torch.inference_mode()``, as :meth:`__call__` does.
        """
        run = self.stages.start(x)
        last = self.k - 1
        for k in range(last):
            logits = run.step()
            leave, score = self.leaves_one(logits, k)
            if scores is not None:
                scores.append(score)
            if leave:
                return k, logits, logits.argmax(dim=1)
        logits = run.step()
        return last, logits, logits.argmax(dim=1)

    @staticmethod
    def _split(
        run: StageRun,
        logits: torch.Tensor,
        leave: torch.Tensor,
        n_leave: int,
        alive: torch.Tensor | None,
        k: int,
        parts: list[AtExit],
    ) -> torch.Tensor:
        """Record the rows leaving at exit ``k``, cut the carry to the rest; return the rows still here.

        The indices come from ``n_leave`` (read by the exit decision) without another host synchronisation.
        """
        idx, stay = split_rows(leave, n_leave)
        parts.append((idx if alive is None else alive[idx], k, logits[idx].argmax(dim=1)))
        run.keep(stay)
        return stay if alive is None else alive[stay]

    @staticmethod
    def _assemble(b: int, parts: list[AtExit], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """``(exits, predictions)`` of the batch from the parts that left at each exit."""
        if len(parts) == 1 and parts[0][0] is None:  # the whole batch left together
            _, k, preds = parts[0]
            return torch.full((b,), k, dtype=torch.int64, device=device), preds
        exits = torch.empty((b,), dtype=torch.int64, device=device)
        preds = torch.empty((b,), dtype=torch.int64, device=device)
        for rows, k, p in parts:
            exits[rows if rows is not None else slice(None)] = k
            preds[rows if rows is not None else slice(None)] = p
        return exits, preds

    def compact(
        self, run: StageRun, logits: torch.Tensor, leave: torch.Tensor, k: int, rest: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One batch compaction as :meth:`__call__` does it (what ``dyncal profile`` times).

        The rows in ``leave`` are recorded as leaving at exit ``k``, ``run``'s carry is cut to
        the others, and the output is assembled as if those left at the next exit with
        predictions ``rest``. ``leave``'s count is read here, as the exit decision reads it.
        """
        parts: list[AtExit] = []
        alive = self._split(run, logits, leave, int(leave.sum()), None, k, parts)
        parts.append((alive, k + 1, rest))
        return self._assemble(logits.shape[0], parts, logits.device)

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Early-exit a batch ``x`` ``(B, ...)``, under ``torch.inference_mode()`` (entered unless it is on).

        Returns:
            ``(exits, predictions)``, ``(B,)`` int64 each on ``x``'s device; exits are
            0-based.
        """
        if torch.is_inference_mode_enabled():  # entering it again would change nothing, at a few µs a call
            return self._early_exit(x)
        with torch.inference_mode():
            return self._early_exit(x)

    def _early_exit(self, x: torch.Tensor, taps: list[AtExit] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`__call__`'s work; ``taps`` (telemetry) receives ``(rows, exit, scores)`` at each exit reached."""
        if taps is None and batch_size(x) == 1:
            k, logits, preds = self.run_one(x)
            return torch.full((1,), k, dtype=torch.int64, device=flatten(x)[0].device), preds
        # (rows that left, exit, their predictions); rows None means "all rows still here".
        parts: list[AtExit] = []
        alive: torch.Tensor | None = None
        run = self.stages.start(x)
        last = self.k - 1
        for k in range(self.k):
            logits = run.step()
            if taps is not None:
                score = self._score(logits, k)
                taps.append((alive, k, score))
            if k == last:
                parts.append((alive, k, logits.argmax(dim=1)))
                break
            if taps is None:
                leave, n_leave = self.leaving(logits, k)
            else:  # the decision from the score kept (leaving would compute it again)
                leave = score >= self.thresholds[k]
                n_leave = int(leave.sum())
            if n_leave == 0:
                continue
            if n_leave == logits.shape[0]:
                parts.append((alive, k, logits.argmax(dim=1)))
                break
            alive = self._split(run, logits, leave, n_leave, alive, k, parts)
        return self._assemble(batch_size(x), parts, flatten(x)[0].device)

    def map(
        self, batches: Iterable[torch.Tensor], *, batch_size: int | None = None, max_pending: int | None = None
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The throughput mode: early-exit a stream of batches, every stage on full batches.

        The rows that continue past an exit are pooled across input batches, so each stage
        runs on ``batch_size`` rows (default: the first batch's) until the stream ends
        (:class:`~dyncal.analysis.rebatch.Rebatcher`). Each row gets the exit and prediction
        :meth:`__call__` would give it.

        Args:
            batches: Input batches ``(B_i, ...)`` on the runner's device.
            batch_size: Rows of a full batch.
            max_pending: Bound on the input batches waiting for answers (None: none).

        Yields:
            ``(exits, predictions)`` per input batch, in input order.

        Example:
            >>> from dyncal.analysis.stages import build_stages
            >>> from dyncal.demo import pretrained
            >>> stages = build_stages(pretrained(), torch.zeros(2, 1, 8, 8))
            >>> runner = EarlyExitRunner(stages, [0.0, 2.0, 2.0, None], [1.0] * 4)   # all leave at exit 1
            >>> [e.tolist() for e, _ in runner.map([torch.zeros(2, 1, 8, 8), torch.zeros(1, 1, 8, 8)])]
            [[0, 0], [0]]
        """
        return Rebatcher(self, batch_size=batch_size, max_pending=max_pending).map(batches)
