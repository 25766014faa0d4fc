"""Telemetry from the shipped runner: ``load_early_exit(DIR, telemetry=PATH, shadow=0.02)``.

With a telemetry folder, each call of the package's runner records one row per request through
a :class:`~dyncal.telemetry.TelemetryWriter` (one per process; files and crash behaviour in
:mod:`dyncal.telemetry`): the time stamp, the exit taken, the score at every exit evaluated
(the score the exit rule compared with its threshold, with the package's temperatures), the
prediction and the latency of the early exit in ms (the batch's, measured around it, the
answer on the host). On a random ``shadow`` share of requests the runner also runs the plain
model (every stage, nobody leaving) and records the last exit's prediction: the evidence
``dyncal monitor`` bounds the accuracy drop with. The shadow run is not in the latency.

The early exit here takes the same decisions as :meth:`EarlyExitRunner.__call__
<dyncal.analysis.early_exit.EarlyExitRunner.__call__>` (same stages, scores and thresholds)
and keeps each exit's scores; without telemetry the runner does not pay for that.

At batch 1 (the serving case, where a few microseconds show) the request path does the plain
early exit's work, keeps the scores its exit decisions read on the host anyway, reads the
prediction (``item()``), and appends the numbers to the writer's buffer (what
:meth:`~dyncal.telemetry.TelemetryWriter.record_one` does, without its checks: the runner's
rows fit by construction): no numpy array, no check of arrays, no tensor kept, except the last
exit's logits of a request that got there: the exit rule computes no score there, and the
flush computes them for the whole buffer at once (:func:`last_exit_scores`). Keeping every
request's tensors until the flush was tried and measured: the garbage collector then walks
them, which costs more than reading them. Larger batches are converted on the request path,
where the cost is shared by the batch's rows.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from dyncal.errors import DyncalError, param
from dyncal.inputs import batch_size, flatten, take_rows

if TYPE_CHECKING:
    from dyncal.analysis.early_exit import AtExit, EarlyExitRunner
    from dyncal.telemetry import TelemetryWriter
    from dyncal.telemetry.columns import DeferredScores

_ALREADY_ON = contextlib.nullcontext()
"""Reused (a nullcontext can be entered again): the context when inference mode is on already."""

OneRow = tuple[int, int, list[float], torch.Tensor | None]
"""One batch-1 request's row: (exit, prediction, the scores read, the last exit's logits or None)."""

__all__ = ["early_exit_one", "last_exit_scores", "early_exit_with_scores", "observed_call", "open_telemetry"]


@torch.inference_mode()
def early_exit_with_scores(runner: EarlyExitRunner, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """Early-exit ``x`` as ``runner(x)`` does, keeping the score of every row at every exit it reached.

    Returns:
        ``(exits, predictions, scores)``: int64 ``(B,)`` tensors on ``x``'s device, and float32
        ``(B, K)`` scores on the host, NaN past each row's exit.

    Example:
        >>> from dyncal.analysis.early_exit import EarlyExitRunner
        >>> from dyncal.analysis.stages import build_stages
        >>> from dyncal.demo import pretrained
        >>> stages = build_stages(pretrained(), torch.zeros(2, 1, 8, 8))
        >>> runner = EarlyExitRunner(stages, [0.0, 2.0, 2.0, None], [1.0] * 4)
        >>> exits, preds, scores = early_exit_with_scores(runner, torch.zeros(3, 1, 8, 8))
        >>> exits.tolist(), scores.shape, bool(np.isnan(scores[:, 1:]).all())
        ([0, 0, 0], (3, 4), True)
    """
    taps: list[AtExit] = []  # (rows present, exit, their scores)
    exits, preds = runner._early_exit(x, taps)
    scores = np.full((batch_size(x), runner.k), np.nan, dtype=np.float32)
    for rows, k, s in taps:
        scores[slice(None) if rows is None else rows.cpu().numpy(), k] = s.float().cpu().numpy()
    return exits, preds, scores


def early_exit_one(runner: EarlyExitRunner, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, OneRow]:
    """Early-exit one request ``x`` ``(1, ...)`` as ``runner(x)`` does, reading what its telemetry row needs.

    The same work as :meth:`EarlyExitRunner.__call__
    <dyncal.analysis.early_exit.EarlyExitRunner.__call__>` at batch 1
    (:meth:`~dyncal.analysis.early_exit.EarlyExitRunner.run_one`: same stages, scores,
    decisions and outputs); the scores are the floats the exit decisions read anyway, so the
    only extra read is the prediction's ``item()``. At the last exit the rule computes no
    score; its logits are handed on, for the flush to score with the whole buffer.

    Returns:
        ``(exits, predictions, row)``: the runner's ``(1,)`` tensors and ``(exit, prediction,
        scores read, the last exit's logits or None)``.
    """
    scores: list[float] = []
    # as the runner's own call: inference mode entered only when it is off (a few µs a request)
    with _ALREADY_ON if torch.is_inference_mode_enabled() else torch.inference_mode():
        k, logits, preds = runner.run_one(x, scores)  # the decisions' floats, kept: no extra read
        exits = torch.full((1,), k, dtype=torch.int64, device=flatten(x)[0].device)
        pred = int(preds.item())
    return exits, preds, (k, pred, scores, logits if k == runner.k - 1 else None)


def last_exit_scores(runner: EarlyExitRunner) -> DeferredScores:
    """What the writer's flush computes the last exit's scores with: one call for the whole buffer.

    Takes the last exit's logits ``(1, C)`` of ``n`` requests and returns their ``(n,)``
    float32 scores, as the runner's score rule computes them (its temperature), on the host.
    """

    @torch.inference_mode()
    def scores(logits: Sequence[torch.Tensor]) -> np.ndarray:
        try:
            z = torch.cat(list(logits))
        except RuntimeError:  # the runner moved to another device while rows were buffered
            z = torch.cat([t.cpu() for t in logits])
        out: np.ndarray = runner._score(z, runner.k - 1).float().cpu().numpy()
        return out

    return scores


def observed_call(
    runner: EarlyExitRunner,
    writer: TelemetryWriter,
    x: torch.Tensor,
    request_ids: Sequence[str | None] | None,
    batch: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``runner(x)`` with one telemetry row per request (and the plain model on the shadow share).

    ``batch`` is ``x``'s batch size, as the caller read it.

    Returns:
        ``(exits, predictions)`` as ``runner(x)``.

    Raises:
        DyncalError: ``request_ids`` of another length than the batch, or a failed telemetry write.
    """
    if request_ids is not None and len(request_ids) != batch:
        raise DyncalError(f"{param('request_ids')} has {len(request_ids)} ids for a batch of {batch}")
    if batch == 1 and writer.deferred is not None:
        return _observed_one(runner, writer, x, None if request_ids is None else request_ids[0])
    shadow = writer.shadow_mask(batch)
    t0 = time.perf_counter()
    exits, preds, scores = early_exit_with_scores(runner, x)
    exits_host, preds_host = exits.cpu(), preds.cpu()  # the answer on the host: the latency's end
    ms = (time.perf_counter() - t0) * 1e3
    last = None
    if shadow.any():
        rows = np.flatnonzero(shadow)
        index = torch.from_numpy(rows).to(flatten(x)[0].device)
        with torch.inference_mode():
            plain = runner.stages.run(take_rows(x, index))[-1].argmax(dim=1).cpu().numpy()
        last = np.full(batch, -1, dtype=np.int64)
        last[rows] = plain
    writer.record(exits_host, preds_host, scores, ms, last_predictions=last, request_ids=request_ids)
    return exits, preds


def _observed_one(
    runner: EarlyExitRunner, writer: TelemetryWriter, x: torch.Tensor, request_id: str | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`observed_call` at batch 1: :func:`early_exit_one`, its row handed to the writer's lists.

    The scores list goes to the writer as it is (no tuple), and the writer's unchecked append
    takes the row: run_one's answer fits the package by construction.
    """
    t0 = time.perf_counter()
    exits, preds, (k, pred, scores, pending) = early_exit_one(runner, x)
    ms = (time.perf_counter() - t0) * 1e3  # item() read the answer: it is on the host
    last = -1
    if writer.shadow > 0.0 and writer.shadow_mask(1)[0]:
        with torch.inference_mode():
            last = int(runner.stages.run(x)[-1].argmax(dim=1).item())
    writer._record_one(k, pred, scores, ms, pending, last, None if request_id is None else str(request_id))
    return exits, preds


def open_telemetry(
    runner: Any,
    folder: str | os.PathLike[str],
    *,
    shadow: float = 0.0,
    metrics: Any = None,
    seed: int | None = None,
    **writer_options: Any,
) -> TelemetryWriter:
    """The telemetry writer of a package runner (its identity: the manifest, thresholds and run).

    Args:
        runner: A :class:`~dyncal.analysis.package_runner.PackageRunner`.
        folder: Telemetry folder (created if missing; several processes may share it).
        shadow: Share of requests whose plain model is run too, in [0, 1].
        metrics: Prometheus metrics: None (none), True (the global registry), or a
            ``prometheus_client.CollectorRegistry``.
        seed: Seed of the shadow draws (default: fresh entropy).
        **writer_options: More :class:`~dyncal.telemetry.TelemetryWriter` options (``flush_rows``, ...).

    Raises:
        DyncalError: A bad ``shadow``, pyarrow (or prometheus-client, with ``metrics``) not installed.
    """
    from dyncal.telemetry import PackageIdentity, TelemetryMetrics, TelemetryWriter

    if isinstance(shadow, bool) or not isinstance(shadow, (int, float)) or not 0.0 <= shadow <= 1.0:
        raise DyncalError(f"{param('shadow')} must be a share in [0, 1], got {shadow!r}")
    identity = PackageIdentity.from_runner(runner)
    prom = None
    if metrics is not None and metrics is not False:
        prom = TelemetryMetrics(identity.k, registry=None if metrics is True else metrics)
    writer_options.setdefault("deferred", last_exit_scores(runner))
    return TelemetryWriter(folder, identity, shadow=float(shadow), metrics=prom, seed=seed, **writer_options)
