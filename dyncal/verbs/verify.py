"""A real early exit with solved thresholds, and its check against the prediction.

:class:`~dyncal.analysis.early_exit.EarlyExitRunner` runs a model's stages
one at a time and lets the confident rows leave at each exit: the computation a deployed
model does, so its wall-clock is what a user would get.

:func:`verify_run` replays the run's own samples through it, streamed from the data set
one batch at a time, and finds:

* **agreement** — the share of samples whose runtime exit and prediction equal what the
  exit rule gives on the stored logits (the simulation every other stage relies on), over
  every sample replayed;
* **latency** — the early exit and the plain model timed as *pairs*, back to back on the
  same batch (the plain model is the plain deployment, :mod:`dyncal.analysis.plain`: the
  stages and the last head only, no intermediate head, no exit decision, under the same
  ``runtime`` (:mod:`dyncal.analysis.runtime`), threads and device), alternating which
  goes first (:meth:`dyncal.analysis.latency.Timer.paired`, the clock ``dyncal profile``
  uses), so load on the machine hits both alike and the speed-up is measured as a ratio;
  each runs once untimed right before it is timed, so neither is timed in the caches the
  other left behind (deployed, it runs alone); beside it, the prediction from the run's
  cost table for the same batches (:func:`dyncal.analysis.costmodel.predict_batches_ms`).
  Rows are replayed in a seeded shuffled order (data sets are often sorted by class, which
  would make consecutive batches unlike deployment) and timing stops adding batches once
  ``max_seconds`` have passed (at least :data:`MIN_TIMED_BATCHES` per batch size); then,
  while the speed-up is not settled, rounds of more pairs on the timed batches within the
  same bound (:mod:`dyncal.verbs.verify_pairs`, recorded in ``coverage[key].pairs``). At
  batch 1 the order is stratified by simulated exit
  (:func:`dyncal.analysis.requests.stratified_order`), so whatever the bound allows shows
  every exit; each timing keeps its per-request view
  (:class:`dyncal.artifacts.requests.RequestTimings`: row, exit and both latencies of every
  timed request, weighted back to the exit shares of every replayed row) and its speed-up
  estimator (:func:`dyncal.paired.paired_speedup`).

The result is a :class:`dyncal.artifacts.verify.VerifyResult` bound to the run, the
thresholds and the model it measured.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from functools import partial
from typing import Any, TypeVar

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from dyncal.analysis.costmodel import predict_batches_ms
from dyncal.analysis.cuda_timing import EventTimer, device_tuned
from dyncal.analysis.early_exit import EarlyExitRunner
from dyncal.analysis.graphs import select_runtime
from dyncal.analysis.latency import Clock, Timer, device_hardware, pinned_threads
from dyncal.analysis.plain import plain_deployment, plain_runner
from dyncal.analysis.requests import stratified_order
from dyncal.analysis.runtime import RUNTIMES, apply_runtime
from dyncal.analysis.stages import checked_stages, stages_function
from dyncal.artifacts.costs import LatencyKey, device_name
from dyncal.artifacts.requests import RequestTimings
from dyncal.artifacts.run import Run, load_run
from dyncal.artifacts.thresholds import ThresholdsDocument, check_thresholds_for_run, thresholds_from_json
from dyncal.artifacts.verify import ModelIdentity, PairedTiming, VerifyResult
from dyncal.calibrate.policy import assign_exits
from dyncal.calibrate.scores import exit_scores
from dyncal.constraints import check
from dyncal.data import batch_inputs, dataset_for_run, loader_collate
from dyncal.errors import DataError, DyncalError, describe, param, user_call
from dyncal.inputs import batch_size, describe_inputs, is_single, take_rows, to_device
from dyncal.measurement import NOISE_IQR_FRACTION, noise_advice
from dyncal.models import resolve_device
from dyncal.options import options_from
from dyncal.paired import ESTIMATORS
from dyncal.run_model import ModelOverrides, open_run_model, probe_run_model, run_inputs
from dyncal.verbs.verify_pairs import SETTLE, more_pairs_rounds, time_pairs
from dyncal.verbs.verify_throughput import verify_throughput

__all__ = ["VerifyProgress", "verify_run", "VerifyOptions", "DEFAULT_MAX_SECONDS", "MIN_TIMED_BATCHES"]

log = logging.getLogger(__name__)

T = TypeVar("T")

BASELINE = (
    "plain deployment: the stages and the last head only (no intermediate head, no exit decision), "
    "same runtime, threads and device as the early exit"
)
"""What verify's "plain model" (``full_model_ms``, the speed-up's denominator) is."""

DEFAULT_MAX_SECONDS = 60.0
"""Default time bound of verify's timing (all batch sizes together).

10 s timed 46 of 1,000 samples of a ResNet-18 at batch 1 on a 2-core CPU, too few to put a
1.6x speed-up's interval on one side of 1.5x; 60 s timed enough. A fast model times every
batch well before the bound and stops there.
"""

MIN_TIMED_BATCHES = 3
"""Batches timed per batch size even when the time bound has passed."""

_ORDER_SEED = 20231
_SIM_CHUNK = 4096  # rows of stored logits scored at a time


VerifyProgress = Callable[[str, int, int], None]
"""Called as ``progress(key, done, total)`` after each batch of a batch size.

``key`` is ``"<device>/b<batch>"``; when the time bound ends a batch size early, a last
call has ``done == total`` with the batches actually replayed.
"""


def _try(what: str, batch_size: int, fn: Callable[[], T]) -> T:
    """``fn()``; an error in the user's model or its stages becomes one line."""
    return user_call(fn, f"{what} failed at batch size {batch_size}")


def _subject(
    run: Run, thresholds: ThresholdsDocument, opts: VerifyOptions, dev: torch.device
) -> tuple[ModelIdentity, dict[str, Any] | None, Callable[[torch.Tensor], tuple[EarlyExitRunner, EarlyExitRunner]]]:
    """What is replayed: its identity, how it compared with the run's model, and how to make its early exit.

    A package must have been exported from this run with these thresholds. The early exit
    is made later, from a probe batch of the run's inputs, under the pinned thread count:
    ``early_exit(probe)`` returns it and the plain deployment's runner, both under ``runtime``.
    """
    if opts.package is not None:
        from dyncal.analysis.package_runner import load_early_exit

        pkg = load_early_exit(opts.package, device=str(dev), verify_key=opts.verify_key)
        if pkg.manifest.run_fingerprint != run.fingerprint:
            raise DyncalError(
                f"the package '{opts.package}' was exported from another run (fingerprint "
                f"{pkg.manifest.run_fingerprint[:12]}, run '{run.path}' is {run.fingerprint[:12]}); "
                "export it from this run"
            )
        if pkg.manifest.decision_fingerprint != thresholds.decision_fingerprint:
            raise DyncalError(
                f"the package '{opts.package}' holds other thresholds than `thresholds`; pass the thresholds it "
                "was exported with, or export again"
            )
        identity = ModelIdentity(
            spec=str(opts.package), weights_sha256=pkg.manifest.model.get("weights_sha256"), kind="package"
        )
        return identity, None, lambda probe: _under_runtime(pkg, pkg.plain_runner(), probe, opts)
    opened = open_run_model(
        run,
        ModelOverrides(model=opts.model, weights=opts.weights, model_path=opts.model_path),
        probe=None,
        device=str(dev),
        data=opts.data if isinstance(opts.data, str) else None,
        allow_other_model=opts.allow_other_model,
    )

    def early_exit(probe: Any) -> tuple[EarlyExitRunner, EarlyExitRunner]:
        # stages that reproduce the model on the probe; a model exported with a fixed batch
        # size cannot drop rows, which is said in one line rather than failing mid-run
        probe_run_model(run, opened, probe)
        stages_fn = stages_function(opts.stages, opened.model_path)
        signature = run_inputs(run) if run.provenance.extra.get("inputs") is not None else None
        example = take_rows(probe, slice(0, min(2, batch_size(probe))))
        stages, _ = checked_stages(opened.module, probe, example=example, stages_fn=stages_fn, signature=signature)
        if not stages.dynamic_batch:
            raise DyncalError(
                f"the model's stages run at batch size {stages.example_batch_size} only (export could not keep the "
                "batch dynamic), so samples cannot leave a batch early; declare stages with `stages_spec` or fix "
                "the model"
            )
        runner = EarlyExitRunner(stages, thresholds.thresholds, thresholds.temperatures, thresholds.score)
        example = probe if batch_size(probe) >= 2 else take_rows(probe, torch.zeros(2, dtype=torch.int64, device=dev))
        plain = plain_runner(plain_deployment(stages, model=opened.module, example=example), thresholds.score)
        return _under_runtime(runner, plain, probe, opts)

    identity = ModelIdentity(spec=opened.spec, weights_sha256=opened.weights_sha256)
    return identity, opened.check.to_dict(), early_exit


def _under_runtime(
    runner: EarlyExitRunner, plain: EarlyExitRunner, probe: Any, opts: VerifyOptions
) -> tuple[EarlyExitRunner, EarlyExitRunner]:
    """The early exit and the plain deployment, both under ``opts.runtime`` (checked on ``probe``)."""
    big = max(opts.batch_sizes)
    return (
        apply_runtime(runner, str(opts.runtime), example=probe, max_batch_size=big),
        apply_runtime(plain, str(opts.runtime), example=probe, max_batch_size=big),
    )


def _simulated(run: Run, n: int, thresholds: ThresholdsDocument) -> tuple[np.ndarray, np.ndarray]:
    """Exits and predictions the exit rule gives on the stored logits of rows ``0..n-1``."""
    t = thresholds_from_json(thresholds.thresholds)
    exits = np.empty(n, dtype=np.int64)
    preds = np.empty(n, dtype=np.int64)
    for s in range(0, n, _SIM_CHUNK):
        scores, p = exit_scores(
            np.asarray(run.logits[s : min(n, s + _SIM_CHUNK)]), thresholds.score, thresholds.temperatures
        )
        e = assign_exits(scores, t)
        exits[s : s + len(e)] = e
        preds[s : s + len(e)] = p[np.arange(len(e)), e]
    return exits, preds


def _threads_for(run: Run, device: str, batch_sizes: Sequence[int], threads: int | None) -> tuple[int | None, str]:
    """The thread count to pin: as given, else the one the run's profile timed with (one clock)."""
    if threads is not None:
        return threads, "--threads"
    latency = {} if run.costs is None else run.costs.latency
    # a profile at one of these batch sizes first, else any on the device
    timed_with = [latency.get(str(LatencyKey(device, b))) for b in batch_sizes]
    timed_with += [prof for prof in latency.values() if prof.device == device]
    for prof in timed_with:
        if prof is not None and prof.threads:
            return int(prof.threads), f"the profile of {prof.key}"
    return None, "torch's default"


@dataclass(frozen=True, kw_only=True)
class VerifyOptions:
    """What ``dyncal verify`` replays and how it times it (see :func:`verify_run`).

    Attributes:
        device: ``cpu``, ``cuda`` or ``cuda:N``.
        batch_sizes: Batch sizes to time; every sample is replayed at the first for agreement.
        limit: Replay only the first ``limit`` rows of the run.
        threads: CPU threads pinned while replaying (default: those the run's profile timed
            with on ``device``, else torch's current setting).
        model: Model spec overriding the run's provenance (with ``weights``, ``model_path``).
        weights: Checkpoint overriding the provenance.
        model_path: Import folder overriding the provenance.
        data: Data spec (or a map-style data set) overriding the provenance.
        allow_other_model: Replay a model that is not the run's (its checkpoint hash or its
            logits on recorded rows differ); recorded in the result.
        package: A ``dyncal export`` package to replay instead of the model: what is measured
            is what is shipped. It must be bound to this run and to the thresholds.
        verify_key: Key file the package was signed with (``dyncal export --sign-key``): a
            package whose signature does not verify under it, or an unsigned one, is refused.
        repeats: Pairs timed per batch (default 5).
        warmup: Untimed calls of each before timing a batch size (default 3).
        max_seconds: Time bound of the timing, all batch sizes together, shared out evenly
            (default 60 s); batches past it are replayed untimed for agreement at the first
            batch size and not at all at the others. At least :data:`MIN_TIMED_BATCHES` are
            timed per batch size.
        stages: ``pkg.module:fn`` declaring the stages by hand (as ``profile --stages``).
        runtime: How the stages and the plain deployment run, both alike
            (:data:`dyncal.analysis.runtime.RUNTIMES`: ``eager``, ``frozen``, ``compiled``, ``graphs``
            (CUDA only)); default per device
            (:func:`~dyncal.analysis.graphs.select_runtime`). Recorded in ``settings``.
        throughput: Also measure samples/s of per-batch early exit, the throughput mode
            (``runner.map``) and the plain deployment over the same rows, at every batch
            size (:mod:`dyncal.verbs.verify_throughput`; its own time bound of ``max_seconds``).
        estimator: The speed-up estimator (:data:`dyncal.paired.ESTIMATORS`, default ``auto``).

    Example:
        >>> VerifyOptions(batch_sizes=(1, 32)).batch_sizes
        (1, 32)
        >>> VerifyOptions(repeats=0)
        Traceback (most recent call last):
        ...
        dyncal.errors.DyncalError: `repeats` must be at least 1, got 0
    """

    device: str = "cpu"
    batch_sizes: tuple[int, ...] = (1,)
    limit: int | None = None
    threads: int | None = None
    model: str | None = None
    weights: str | None = None
    model_path: str | None = None
    data: str | Dataset[Any] | None = None
    allow_other_model: bool = False
    package: str | os.PathLike[str] | None = None
    verify_key: str | None = None
    repeats: int = 5
    warmup: int = 3
    max_seconds: float = DEFAULT_MAX_SECONDS
    stages: str | None = None
    runtime: str | None = None
    throughput: bool = False
    estimator: str = "auto"

    def __post_init__(self) -> None:
        """Check the values that need no run or model; one device has one name (:func:`device_name`)."""
        object.__setattr__(self, "batch_sizes", tuple(self.batch_sizes))
        object.__setattr__(self, "device", device_name(self.device))
        check("repeats", self.repeats)
        check("warmup", self.warmup)
        if not self.max_seconds > 0:
            raise DyncalError(f"{param('max_seconds')} must be positive, got {self.max_seconds}")
        if not self.batch_sizes:
            raise DyncalError(f"{param('batch_sizes')} is empty; give at least one batch size")
        for b in self.batch_sizes:
            check("batch_sizes", b, rule="batch_size")
        if self.threads is not None:
            check("threads", self.threads)
        if self.estimator not in ESTIMATORS:
            raise DyncalError(f"{param('estimator')} must be one of {', '.join(ESTIMATORS)}, got {self.estimator!r}")
        if self.limit is not None:
            check("limit", self.limit)
        if self.verify_key is not None and self.package is None:
            raise DyncalError(f"{param('verify_key')} checks the signature of a {param('package')}; pass one too")
        object.__setattr__(self, "runtime", select_runtime(self.runtime, self.device))
        if self.package is not None and (self.model, self.weights, self.stages) != (None, None, None):
            raise DyncalError(
                "`package` replays the exported stages: `model`, `weights` and `stages_spec` do not apply"
            )


def _refuse_several_inputs(probe: Any, opts: VerifyOptions) -> None:
    """Other runtimes and re-batching take one input tensor: a model of several runs eagerly, batch by batch."""
    asked = [f"{param('runtime')} {opts.runtime}"] * (opts.runtime != "eager") + [param("throughput")] * opts.throughput
    if asked and not is_single(probe):
        raise DyncalError(
            f"{' and '.join(asked)} work with models of one input tensor only; this run's model takes several "
            f"({describe_inputs(probe)}): use {param('runtime')} eager without {param('throughput')}"
        )


def verify_run(
    run_path: str | os.PathLike[str],
    thresholds: ThresholdsDocument,
    options: VerifyOptions | None = None,
    *,
    progress: VerifyProgress | None = None,
    clock: Clock | None = None,
    **fields: Any,
) -> VerifyResult:
    """Run a real early exit over the run's samples and compare with the plain model and the prediction.

    Args:
        run_path: A complete run (collected, so its model and data are recorded).
        thresholds: From ``dyncal solve`` (:func:`read_thresholds`); must be the run's.
        options: What to replay and time (:class:`VerifyOptions`).
        progress: Called after each batch (:class:`VerifyProgress`).
        clock: The host clock timing and the time bound read (default ``time.perf_counter``).
        **fields: The fields of :class:`VerifyOptions` as keywords instead of ``options``
            (``device=``, ``batch_sizes=``, ``model=``, ...).

    Returns:
        The verify result: agreement, paired timings per batch size with the prediction,
        bound to the run, the thresholds and the model.

    Raises:
        DyncalError: Thresholds that are not the run's, bad settings, no recorded
            model/data, inputs that cannot be read, or a model whose stages cannot be built.
    """
    opts = options_from(VerifyOptions, options, fields, "verify")
    run = load_run(run_path)
    check_thresholds_for_run(thresholds, run)
    dev = resolve_device(opts.device)
    identity, model_check, early_exit = _subject(run, thresholds, opts, dev)
    session = _Session(run, thresholds, opts, EventTimer(dev, clock), progress)
    pin, threads_source = _threads_for(run, opts.device, opts.batch_sizes, opts.threads)
    with pinned_threads(pin) as n_threads, device_tuned(dev):
        _, probe = next(session.stream([session.order[: min(4, session.n)]]))
        probe = to_device(probe, dev)
        _refuse_several_inputs(probe, opts)
        runner, plain = early_exit(probe)
        runtime = {
            "runtime": str(opts.runtime),
            "early_exit": str(opts.runtime),
            "plain": f"{opts.runtime} (plain deployment: backbone and last head)",
        }
        used_s = 0.0
        timings: list[PairedTiming] = []
        coverage: dict[str, dict[str, Any]] = {}
        for i, b in enumerate(opts.batch_sizes):
            share_s = (opts.max_seconds - used_s) / (len(opts.batch_sizes) - i)
            timing, coverage[str(LatencyKey(opts.device, b))], spent = session.time(
                runner, plain, b, share_s, first=i == 0
            )
            used_s += spent
            timings.append(timing)
        session.replay_untimed(runner, max(opts.batch_sizes))
        throughput = (
            tuple(
                verify_throughput(
                    session,
                    probe,
                    (runner, plain, str(opts.runtime)),
                    timings,
                    repeats=opts.repeats,
                    budget_s=opts.max_seconds,
                )
            )
            if opts.throughput
            else ()
        )
    result = session.result(
        identity,
        timings,
        n_threads,
        {
            "repeats": opts.repeats,
            "warmup": opts.warmup,
            "threads": n_threads,
            "threads_from": threads_source,
            "max_seconds": opts.max_seconds,
            "seconds": round(used_s, 3),
            "min_timed_batches": MIN_TIMED_BATCHES,
            "stopped_early": any(c["stopped_early"] for c in coverage.values()),
            "coverage": coverage,
            "order": f"batch 1: rows stratified by simulated exit (seed {_ORDER_SEED}); larger batches: rows "
            f"shuffled (seed {_ORDER_SEED}), then consecutive batches",
            "pairs": "early exit and plain model back to back on each batch, alternating which goes first; "
            f"each runs {SETTLE} time(s) untimed right before it is timed",
            "baseline": BASELINE,
            "runtime_description": RUNTIMES[str(opts.runtime)],
            "estimator": opts.estimator,
            "timer": session.timer.label,
            "model_check": model_check,
            "stages": runner.stages.source,
            "limit": opts.limit,
            "runtime": runtime,
        },
    )
    return replace(result, throughput=throughput)


class _Session:
    """One verify: the run's rows in replay order, what the exit rule gives on their stored logits, what ran."""

    def __init__(
        self,
        run: Run,
        thresholds: ThresholdsDocument,
        opts: VerifyOptions,
        timer: Timer,
        progress: VerifyProgress | None,
    ) -> None:
        self.run, self.thresholds, self.opts, self.timer = run, thresholds, opts, timer
        self.progress: VerifyProgress = progress or (lambda key, done, total: None)
        data = opts.data  # a data set given, else the run's (or the spec given)
        if data is None or isinstance(data, str):
            self.dataset = dataset_for_run(run, data=data, search_path=opts.model_path)
            self.data_name = str(data or run.provenance.data)
        else:
            self.dataset, self.data_name = data, type(data).__name__
        self.n = run.n if opts.limit is None else min(opts.limit, run.n)
        self.sim_exits, self.sim_preds = _simulated(run, self.n, thresholds)
        self.order = np.random.default_rng(_ORDER_SEED).permutation(self.n)
        self.exits = np.full(self.n, -1, dtype=np.int64)  # what ran, -1 until replayed
        self.preds = np.full(self.n, -1, dtype=np.int64)
        self.batches: dict[str, tuple[list[np.ndarray], list[np.ndarray]]] = {}  # key: (timed, all batches)

    def stream(self, batches: Sequence[np.ndarray]) -> Iterator[tuple[np.ndarray, Any]]:
        """Yield ``(positions, inputs)`` per batch of run positions, read from the data set one batch at a time."""
        rows = np.asarray(self.run.indices[: self.n])  # the data set index of each run row
        collate = loader_collate(self.run, self.opts.model_path)
        loader = DataLoader(
            Subset(self.dataset, rows.tolist()), batch_sampler=[b.tolist() for b in batches], collate_fn=collate
        )
        it = iter(loader)
        for i, positions in enumerate(batches):
            try:
                item = next(it)
            except Exception as e:  # noqa: BLE001 - anything the user's data set or collate raises
                raise DataError(
                    f"could not load the run's inputs from '{self.data_name}' (batch {i}): {describe(e)}"
                ) from e
            yield positions, batch_inputs(item, self.data_name)

    def record(self, result: tuple[torch.Tensor, torch.Tensor], positions: np.ndarray) -> None:
        """Store a batch's runtime exits and predictions at its run positions."""
        self.exits[positions] = result[0].cpu().numpy()
        self.preds[positions] = result[1].cpu().numpy()

    def time(
        self, runner: EarlyExitRunner, plain: EarlyExitRunner, b: int, share_s: float, *, first: bool
    ) -> tuple[PairedTiming, dict[str, Any], float]:
        """Time batches of ``b`` in pairs until ``share_s`` seconds passed: the timing, its coverage, the seconds spent.

        At the ``first`` batch size the timed batches' exits are recorded for agreement.
        """
        opts, timer, dev = self.opts, self.timer, self.timer.device
        key = str(LatencyKey(opts.device, b))
        # rows in the order batches of ``b`` are timed: stratified by exit at batch 1, else shuffled
        order = stratified_order(self.sim_exits, seed=_ORDER_SEED) if b == 1 else self.order
        batches = [order[s : s + b] for s in range(0, self.n, b)]
        ee_ms: list[list[float]] = []
        full_ms: list[list[float]] = []
        timed: list[np.ndarray] = []
        start = timer.now()
        for positions, xb in self.stream(batches):
            if len(timed) >= MIN_TIMED_BATCHES and timer.now() - start >= share_s:
                break
            xb = to_device(xb, dev)
            if not timed:
                _try("the early exit", b, partial(timer.warm, partial(runner, xb), opts.warmup))
                _try("the model", b, partial(timer.warm, partial(plain, xb), opts.warmup))
            out: list[tuple[torch.Tensor, torch.Tensor]] = []
            ee, fm = time_pairs(timer, (runner, plain, b), xb, opts.repeats, len(timed) % 2 == 0, out)
            ee_ms.append(ee)
            full_ms.append(fm)
            timed.append(positions)
            if first:
                self.record(out[-1], positions)
            self.progress(key, len(timed), len(batches))
        rounds = more_pairs_rounds(  # more pairs while the speed-up is not settled (within the bound)
            timer, (runner, plain, b), lambda: self.stream(timed), (ee_ms, full_ms), repeats=opts.repeats,
            estimator=opts.estimator, start=start, share_s=share_s,
        )  # fmt: skip
        spent = timer.now() - start
        if len(timed) < len(batches):
            self.progress(key, len(timed), len(timed))
        self.batches[key] = (timed, batches)
        timing = PairedTiming(
            key=key,
            batch_size=b,
            early_exit_ms=tuple(tuple(r) for r in ee_ms),
            full_model_ms=tuple(tuple(r) for r in full_ms),
            predicted_ms=predict_batches_ms(self.run.costs, opts.device, [self.sim_exits[p] for p in timed]),
            solve_expected_ms=self.thresholds.expected_ms.get(key),
            estimator=opts.estimator,
        )
        if timing.timing_spread > NOISE_IQR_FRACTION:  # the CLI prints it from the result
            log.info(
                "noisy timing at %s: the paired ratio's IQR is %.0f%% of its median (> %.0f%%); %s",
                key,
                100 * timing.timing_spread,
                100 * NOISE_IQR_FRACTION,
                noise_advice(torch.get_num_threads() if dev.type == "cpu" else None, opts.repeats),
            )
        coverage = {
            "batches_timed": len(timed),
            "batches": len(batches),
            "samples_timed": int(sum(len(p) for p in timed)),
            "stopped_early": len(timed) < len(batches),
            "seconds": round(spent, 3),
            "pairs": rounds.to_dict(),
        }
        return timing, coverage, spent

    def replay_untimed(self, runner: EarlyExitRunner, big: int) -> None:
        """Agreement covers every sample: replay (untimed, in batches of ``big``) the rows the time bound left out."""
        rest = self.order[self.exits[self.order] < 0]
        rest_batches = [rest[s : s + big] for s in range(0, len(rest), big)]
        for done, (positions, xb) in enumerate(self.stream(rest_batches), start=1):
            self.record(_try("the early exit", big, partial(runner, to_device(xb, self.timer.device))), positions)
            self.progress("agreement", done, len(rest_batches))

    def result(
        self, identity: ModelIdentity, timings: Sequence[PairedTiming], threads: int | None, settings: dict[str, Any]
    ) -> VerifyResult:
        """The verify result: agreement of what ran with the simulation, and the timings.

        Each timing gets its per-request view: the rows, runtime exits and both latencies of each timed unit.
        """
        n, k, dev = self.n, self.run.k, self.timer.device
        with_requests = []
        for t in timings:
            timed, every = self.batches[t.key]
            requests = RequestTimings.from_batches(
                t.key,
                timed,
                self.exits,
                t.early_exit_ms,
                t.full_model_ms,
                n_exits=k,
                all_batches=every,
                time_bound_s=self.opts.max_seconds,
            )
            settings["coverage"][t.key]["requests"] = requests.coverage()
            with_requests.append(replace(t, requests=requests))
        labels = np.asarray(self.run.labels[:n])
        exits, preds, sim_exits, sim_preds = self.exits, self.preds, self.sim_exits, self.sim_preds
        return VerifyResult(
            run_fingerprint=self.run.fingerprint,
            decision_fingerprint=self.thresholds.decision_fingerprint,
            model=identity,
            n=n,
            agreement=float(np.mean((exits == sim_exits) & (preds == sim_preds))),
            exit_agreement=float(np.mean(exits == sim_exits)),
            runtime_accuracy=float(np.mean(preds == labels)),
            simulated_accuracy=float(np.mean(sim_preds == labels)),
            runtime_exit_shares=tuple(float(v) for v in np.bincount(exits, minlength=k) / n),
            simulated_exit_shares=tuple(float(v) for v in np.bincount(sim_exits, minlength=k) / n),
            timings=tuple(with_requests),
            device=str(dev),
            hardware=device_hardware(dev),
            threads=threads,
            settings=settings,
        )
