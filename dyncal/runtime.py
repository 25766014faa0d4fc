"""A real early exit with solved thresholds, and its check against the prediction.

:class:`EarlyExitRunner` runs a model's stages (:mod:`dyncal.analysis.stages`) one at a
time; after stage ``k`` it scores exit ``k`` (temperature, score as in thresholds.json),
lets the samples with ``score >= t_k`` leave, and hands only the staying rows to stage
``k+1``. When nobody is left, later stages never run. That is the computation a deployed
model does, so its wall-clock is what a user would get.

:func:`verify_run` replays the run's own samples through it and compares:

* **agreement** — the share of samples whose runtime exit and prediction equal what the
  exit rule gives on the stored logits (the simulation every other stage relies on);
* **latency** — measured mean milliseconds per batch against the prediction from the
  run's cost table for the same samples (:func:`predict_batch_ms`: each stage on the rows
  that reach it, interpolated between profiled batch sizes), and against the plain model
  on the same batches. At batch size 1 the prediction is the per-sample expectation
  ``solve`` reports (shown beside it as ``solve_expected_ms``); at larger batch sizes a
  batch keeps running while any of its samples stays, which the per-sample expectation
  misses and verify shows.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import torch
from torch import nn

from dyncal.analysis.costmodel import predict_batch_ms
from dyncal.analysis.latency import device_hardware, pinned_threads
from dyncal.analysis.stages import Stages, build_stages, verify_stages
from dyncal.artifacts.thresholds import check_thresholds_for_run, read_thresholds
from dyncal.calibrate.policy import assign_exits, thresholds_from_json
from dyncal.calibrate.scores import SCORES, exit_scores
from dyncal.calibrate.solvers import ThresholdsResult
from dyncal.data import ImageTransform, load_dataset
from dyncal.errors import DataError, DyncalError
from dyncal.models import check_exit_outputs, import_object, load_model, resolve_device
from dyncal.run import Run, latency_key, load_run

__all__ = ["EarlyExitRunner", "VerifyResult", "verify_run", "read_thresholds"]

log = logging.getLogger(__name__)

T = TypeVar("T")


class EarlyExitRunner:
    """Runs stages with real early exit.

    Args:
        stages: The model's stages.
        thresholds: ``K`` thresholds, the last None (or NaN/inf: nobody leaves there).
        temperatures: ``K`` positive temperatures.
        score: ``maxprob``, ``margin`` or ``entropy``.

    Example:
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
        if score not in SCORES:
            raise DyncalError(f"score must be one of {', '.join(SCORES)}; got {score!r}")
        k = stages.k
        t = thresholds_from_json(list(thresholds))
        if len(t) != k - 1 or len(temperatures) != k:
            raise DyncalError(
                f"thresholds ({len(t) + 1}) and temperatures ({len(temperatures)}) must match the model's K={k} exits"
            )
        self.stages = stages
        self.k = k
        self.thresholds = [float(v) for v in t]
        self.temperatures = [float(v) for v in temperatures]
        self.score = score

    def _score(self, logits: torch.Tensor, k: int) -> torch.Tensor:
        p = torch.softmax(logits.float() / self.temperatures[k], dim=1)
        if self.score == "maxprob":
            return p.amax(dim=1)
        if self.score == "margin":
            top2 = p.topk(2, dim=1).values
            return top2[:, 0] - top2[:, 1]
        entropy: torch.Tensor = torch.special.xlogy(p, p).sum(dim=1)
        return entropy

    @torch.inference_mode()
    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Early-exit a batch ``x`` ``(B, ...)``.

        Returns:
            ``(exits, predictions)``, ``(B,)`` int64 each on ``x``'s device; exits are
            0-based.
        """
        b = x.shape[0]
        # (rows that left, exit, their predictions); rows None means "all rows still here".
        parts: list[tuple[torch.Tensor | None, int, torch.Tensor]] = []
        alive: torch.Tensor | None = None
        run = self.stages.start(x)
        for k in range(self.k):
            logits = run.step()
            if k == self.k - 1:
                parts.append((alive, k, logits.argmax(dim=1)))
                break
            leave = self._score(logits, k) >= self.thresholds[k]
            n_leave = int(leave.sum())  # the host sync every early exit pays
            if n_leave == 0:
                continue
            if n_leave == logits.shape[0]:
                parts.append((alive, k, logits.argmax(dim=1)))
                break
            idx = leave.nonzero().squeeze(1)
            parts.append((idx if alive is None else alive[idx], k, logits[idx].argmax(dim=1)))
            stay = ~leave
            alive = stay.nonzero().squeeze(1) if alive is None else alive[stay]
            run.keep(stay)
        if len(parts) == 1 and parts[0][0] is None:  # the whole batch left together
            _, k, preds = parts[0]
            return torch.full((b,), k, dtype=torch.int64, device=x.device), preds
        exits = torch.empty((b,), dtype=torch.int64, device=x.device)
        preds = torch.empty((b,), dtype=torch.int64, device=x.device)
        for rows, k, p in parts:
            exits[rows if rows is not None else slice(None)] = k
            preds[rows if rows is not None else slice(None)] = p
        return exits, preds


@dataclass(frozen=True)
class BatchTiming:
    """Measured and predicted latency at one batch size."""

    key: str
    batch_size: int
    batches: int
    measured_ms: float
    measured_ms_iqr: float
    full_model_ms: float
    predicted_ms: float | None
    solve_expected_ms: float | None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {
            "key": self.key,
            "batch_size": self.batch_size,
            "batches": self.batches,
            "measured_ms": self.measured_ms,
            "measured_ms_iqr": self.measured_ms_iqr,
            "full_model_ms": self.full_model_ms,
            "predicted_ms": self.predicted_ms,
            "solve_expected_ms": self.solve_expected_ms,
            "measured_over_predicted": None if not self.predicted_ms else self.measured_ms / self.predicted_ms,
            "speedup_vs_full_model": self.full_model_ms / self.measured_ms if self.measured_ms > 0 else None,
        }


@dataclass(frozen=True)
class VerifyResult:
    """What ``dyncal verify`` found.

    Attributes:
        n: Samples replayed.
        agreement: Share whose runtime exit and prediction equal the simulated ones.
        exit_agreement: Share whose runtime exit equals the simulated one.
        runtime_accuracy: Accuracy of the runtime predictions.
        simulated_accuracy: Accuracy the exit rule gives on the stored logits, same samples.
        runtime_exit_shares: Share of samples leaving at each exit at runtime.
        simulated_exit_shares: The same from the stored logits.
        timings: Per batch size.
        device: Device name and hardware.
        threads: CPU threads in force.
    """

    n: int
    agreement: float
    exit_agreement: float
    runtime_accuracy: float
    simulated_accuracy: float
    runtime_exit_shares: list[float]
    simulated_exit_shares: list[float]
    timings: list[BatchTiming]
    device: str
    hardware: str
    threads: int
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The ``dyncal verify --json`` document."""
        return {
            "n": self.n,
            "agreement": self.agreement,
            "exit_agreement": self.exit_agreement,
            "runtime_accuracy": self.runtime_accuracy,
            "simulated_accuracy": self.simulated_accuracy,
            "runtime_exit_shares": self.runtime_exit_shares,
            "simulated_exit_shares": self.simulated_exit_shares,
            "measured_ms": {t.key: t.measured_ms for t in self.timings},
            "predicted_ms": {t.key: t.predicted_ms for t in self.timings},
            "full_model_ms": {t.key: t.full_model_ms for t in self.timings},
            "timings": [t.to_dict() for t in self.timings],
            "device": self.device,
            "hardware": self.hardware,
            "threads": self.threads,
            **self.extra,
        }


def _line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [""])[0][:300]


def _try(what: str, batch_size: int, fn: Callable[[torch.Tensor], T], x: torch.Tensor) -> T:
    """``fn(x)``; an error in the user's model or its stages becomes one line."""
    try:
        return fn(x)
    except DyncalError:
        raise
    except Exception as e:  # noqa: BLE001 - the user's model may raise anything
        raise DyncalError(f"{what} failed at batch size {batch_size}: {type(e).__name__}: {_line(e)}") from e


def _checked_stages(
    model: nn.Module, x: torch.Tensor, dev: torch.device, k: int, stages_spec: str | None, search_path: str | None
) -> Stages:
    """Stages proven on a real batch: the model keeps the contract and the stages reproduce it.

    A model exported with a fixed batch size cannot drop rows, so it cannot early-exit a
    batch; that is said in one line rather than failing mid-run.
    """
    stages_fn = None
    if stages_spec is not None:
        stages_fn = import_object(stages_spec, what="--stages", search_path=search_path)
        if not callable(stages_fn):
            raise DyncalError(
                f"--stages: '{stages_spec}' is not callable; name a function fn(model) -> [stage modules]"
            )
    probe = x[: min(4, x.shape[0])].to(dev)
    with torch.inference_mode():
        outs = _try("the model", probe.shape[0], model, probe)
    got_k, _ = check_exit_outputs(outs, probe.shape[0])
    if got_k != k:
        raise DyncalError(f"the model returns K={got_k} exits but the run has K={k}; is it the run's model?")
    stages = build_stages(model, probe[: min(2, probe.shape[0])], stages_fn=stages_fn)
    verify_stages(model, stages, probe)
    if not stages.dynamic_batch:
        raise DyncalError(
            f"the model's stages run at batch size {stages.example_batch_size} only (export could not keep the "
            "batch dynamic), so samples cannot leave a batch early; declare stages with --stages or fix the model"
        )
    return stages


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _dataset_for(run: Run, data: str | None) -> Any:
    spec = data or run.provenance.data
    if not spec or spec.startswith("("):
        raise DyncalError(f"run '{run.path}' does not name its data set; pass --data")
    tf = run.provenance.extra.get("image_transform")
    transform = None
    if tf:
        transform = ImageTransform(
            resize=int(tf["resize"]), crop=int(tf["crop"]), mean=tuple(tf["mean"]), std=tuple(tf["std"])
        )
    return load_dataset(spec, transform=transform)


def verify_run(
    run_path: str | os.PathLike[str],
    thresholds: ThresholdsResult,
    *,
    device: str = "cpu",
    batch_sizes: Sequence[int] = (1,),
    limit: int | None = None,
    threads: int | None = None,
    model: str | None = None,
    weights: str | None = None,
    model_path: str | None = None,
    data: str | None = None,
    repeats: int = 3,
    stages_spec: str | None = None,
) -> VerifyResult:
    """Run a real early exit over the run's samples and compare with the prediction.

    Args:
        run_path: A complete run (collected, so its model and data are recorded).
        thresholds: From ``dyncal solve`` (:func:`read_thresholds`).
        device: ``cpu``, ``cuda`` or ``cuda:N``.
        batch_sizes: Batch sizes to time.
        limit: Replay only the first ``limit`` rows of the run.
        threads: CPU threads pinned while timing.
        model: Model spec overriding the run's provenance (with ``weights``, ``model_path``).
        weights: Checkpoint overriding the provenance.
        model_path: Import folder overriding the provenance.
        data: Data spec overriding the provenance.
        repeats: Timings per batch; the median is kept (default 3).
        stages_spec: ``pkg.module:fn`` declaring the stages by hand (as ``profile --stages``).

    Returns:
        Agreement with the simulation and measured vs predicted latency.

    Raises:
        DyncalError: Thresholds that do not fit the run, no recorded model/data, or a
            model whose stages cannot be built.
    """
    run = load_run(run_path)
    check_thresholds_for_run(thresholds, run)
    if repeats < 1:
        raise DyncalError(f"--repeats must be at least 1, got {repeats}")
    if any(b < 1 for b in batch_sizes):
        raise DyncalError(f"--batch-size must be positive, got {list(batch_sizes)}")
    dev = resolve_device(device)
    prov = run.provenance
    spec = model or prov.model
    if not spec or spec.startswith("("):
        raise DyncalError(f"run '{run.path}' does not name its model; pass --model (and --weights)")
    loaded = load_model(
        spec,
        weights=weights if weights is not None else (prov.extra.get("weights") if model is None else None),
        model_path=model_path if model_path is not None else prov.extra.get("model_path"),
        device=str(dev),
    )
    dataset = _dataset_for(run, data)
    n = run.n if limit is None else min(limit, run.n)
    rows = np.asarray(run.indices[:n])
    labels = np.asarray(run.labels[:n])

    try:
        x_all = torch.stack([torch.as_tensor(dataset[int(i)][0]) for i in rows])
    except Exception as e:  # noqa: BLE001 - anything the user's data set raises
        raise DataError(
            f"could not load the run's inputs from '{data or prov.data}': {type(e).__name__}: {_line(e)}"
        ) from e
    stages = _checked_stages(loaded.module, x_all, dev, run.k, stages_spec, model_path or prov.extra.get("model_path"))
    runner = EarlyExitRunner(stages, thresholds.thresholds, thresholds.temperatures, thresholds.score)

    scores, sim_preds_all = exit_scores(run.logits[:n], thresholds.score, thresholds.temperatures)
    sim_exits = assign_exits(scores, thresholds_from_json(thresholds.thresholds))
    sim_preds = sim_preds_all[np.arange(n), sim_exits]

    timings: list[BatchTiming] = []
    rt_exits = rt_preds = None
    with pinned_threads(threads) as n_threads:
        for b in batch_sizes:
            batches = [x_all[s : s + b].to(dev) for s in range(0, n, b)]
            _try("the early exit", b, runner, batches[0])  # warm-up
            _try("the model", b, loaded.module, batches[0])
            exit_parts, pred_parts, ee_ms, full_ms = [], [], [], []
            for xb in batches:
                # Median of `repeats` timings per batch (robust to a shared machine), then
                # the mean over batches (their compositions differ, so all of them count).
                ee, full = [], []
                for _ in range(repeats):
                    _sync(dev)
                    t0 = time.perf_counter()
                    batch_exits, batch_preds = _try("the early exit", b, runner, xb)
                    _sync(dev)
                    ee.append((time.perf_counter() - t0) * 1e3)
                    with torch.inference_mode():
                        _sync(dev)
                        t0 = time.perf_counter()
                        loaded.module(xb)
                        _sync(dev)
                        full.append((time.perf_counter() - t0) * 1e3)
                ee_ms.append(float(np.median(ee)))
                full_ms.append(float(np.median(full)))
                exit_parts.append(batch_exits.cpu())
                pred_parts.append(batch_preds.cpu())
            if rt_exits is None:
                rt_exits = torch.cat(exit_parts).numpy()
                rt_preds = torch.cat(pred_parts).numpy()
            key = latency_key(device, b)
            predicted = predict_batch_ms(run.costs, device, sim_exits, b)
            timings.append(
                BatchTiming(
                    key=key,
                    batch_size=b,
                    batches=len(batches),
                    measured_ms=float(np.mean(ee_ms)),
                    measured_ms_iqr=float(np.subtract(*np.percentile(ee_ms, [75, 25]))),
                    full_model_ms=float(np.mean(full_ms)),
                    predicted_ms=predicted,
                    solve_expected_ms=thresholds.expected_ms.get(key),
                )
            )
    assert rt_exits is not None and rt_preds is not None
    k = run.k
    return VerifyResult(
        n=n,
        agreement=float(np.mean((rt_exits == sim_exits) & (rt_preds == sim_preds))),
        exit_agreement=float(np.mean(rt_exits == sim_exits)),
        runtime_accuracy=float(np.mean(rt_preds == labels)),
        simulated_accuracy=float(np.mean(sim_preds == labels)),
        runtime_exit_shares=[float(v) for v in np.bincount(rt_exits, minlength=k) / n],
        simulated_exit_shares=[float(v) for v in np.bincount(sim_exits, minlength=k) / n],
        timings=timings,
        device=str(dev),
        hardware=device_hardware(dev),
        threads=n_threads,
        extra={"stages": stages.source, "repeats": repeats},
    )
