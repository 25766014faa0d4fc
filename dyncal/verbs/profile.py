"""``dyncal profile``: what each exit of a run's model costs, stored in the run.

The model is found through the run's provenance (``provenance.model``, and in
``provenance.extra``: ``weights``, ``model_path``, ``input_shape``, ``input_dtype``), each
of which :class:`ProfileOptions` can override (needed for imported runs), and checked to be
the run's model (:func:`dyncal.run_model.open_run_model`: the checkpoint's SHA-256 and a few
recorded rows re-run) unless ``allow_other_model``. The run is locked, and checked to be
writable, before anything is measured. The model is
partitioned into stages (:mod:`dyncal.analysis.stages`), the partition is proven on real
inputs (every exit's logits reproduced), MACs are counted per stage with fvcore
(:mod:`dyncal.analysis.flops`) and latency is measured per device and batch size
(:mod:`dyncal.analysis.latency`). The resulting :class:`dyncal.artifacts.costs.CostTable` is stored in
the run with :func:`dyncal.artifacts.run.store_costs`, keeping latency of other devices/batch sizes
(latency timed on another model is replaced only with ``allow_other_model``).

Example:
    >>> import numpy as np, tempfile, pathlib
    >>> from dyncal.artifacts.run_document import Provenance
    >>> from dyncal.artifacts.run_import import import_arrays
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "run"
    >>> prov = Provenance.here(model="dyncal.demo:pretrained", data="x", device="cpu",
    ...                        extra={"input_shape": [1, 8, 8], "input_dtype": "float32"})
    >>> _ = import_arrays(np.zeros((3, 4, 10), np.float32), [0, 1, 2], out, provenance=prov)
    >>> costs = profile_run(out, options=ProfileOptions(repeats=3, warmup=1))
    >>> [int(m) for m in costs.macs]
    [6464, 161344, 1942336, 9928000]
    >>> sorted(costs.latency)
    ['cpu/b1']
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from dyncal.analysis.cuda_timing import EventTimer, device_tuned
from dyncal.analysis.flops import StageMacs, stage_macs
from dyncal.analysis.graphs import graph_stages, refuse_verify_only_runtime, select_runtime
from dyncal.analysis.latency import LatencySettings, measure_latency
from dyncal.analysis.plausible import ATTEMPTS, check_plausible, implausible
from dyncal.analysis.stages import (
    EXAMPLE_BATCH,
    StageCheck,
    Stages,
    build_stages,
    checked_stages,
    example_input,
    stages_function,
    verify_stages,
)
from dyncal.artifacts.costs import CostTable, LatencyProfile, device_name
from dyncal.artifacts.lock import RunLock
from dyncal.artifacts.outputs import check_writable
from dyncal.artifacts.run import Run, load_run, other_model_latency, store_costs
from dyncal.constraints import check
from dyncal.errors import ProfileError, param
from dyncal.inputs import Inputs, InputSignature, batch_size
from dyncal.models import load_model, resolve_device, torch_dtype
from dyncal.options import options_from
from dyncal.run_model import ModelCheck, ModelOverrides, open_run_model, state_sha256
from dyncal.verbs.profile_inputs import LengthBucket, MultiInputProfile, averaged_macs

__all__ = ["ProfileOptions", "ProfileResult", "profile_run", "profile_run_full", "profile_model"]

log = logging.getLogger(__name__)

_ROWS_BATCH = 4  # rows of the check that samples can leave between stages


@dataclass(frozen=True, kw_only=True)
class ProfileOptions(ModelOverrides):
    """What to profile and how, on top of which model (:class:`~dyncal.run_model.ModelOverrides`).

    Attributes:
        devices: Devices to time on (``cpu``, ``cuda``, ``cuda:N``; one name is one device).
        batch_sizes: Batch sizes to time.
        threads: CPU threads pinned while timing (None: keep torch's current setting).
        data: Data spec overriding the run's, for re-running recorded rows.
        allow_other_model: Profile a model that is not the run's (checkpoint hash or
            recorded rows differ), and replace latency timed on another model; recorded.
        check_rows: Recorded rows re-run to check the model (0: hash only).
        latency: Measure latency (False: MACs only).
        warmup: Untimed calls before timing.
        repeats: Timed replicates.
        min_block_ms: Minimum length of one timed block of calls.
        seed: Seed of the random inputs.
        runtime: How the stages run while timed: ``eager``, or ``graphs`` (CUDA only:
            per-stage CUDA graphs at bucketed batch sizes); default per device
            (:func:`~dyncal.analysis.graphs.select_runtime`), recorded in each latency entry.
        seq_lens: For a model of several inputs with a sequence length, also the MACs and
            latency at each of these lengths (:mod:`dyncal.verbs.profile_inputs`).
    """

    devices: tuple[str, ...] = ("cpu",)
    batch_sizes: tuple[int, ...] = (1,)
    threads: int | None = None
    data: str | None = None
    allow_other_model: bool = False
    check_rows: int = 8
    latency: bool = True
    warmup: int = 5
    repeats: int = 25
    min_block_ms: float = 5.0
    seed: int = 0
    runtime: str | None = None
    seq_lens: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        """Validate the options that need no model; one device name is one device."""
        devices = (self.devices,) if isinstance(self.devices, str) else self.devices
        object.__setattr__(self, "devices", tuple(dict.fromkeys(device_name(d) for d in devices)))
        object.__setattr__(self, "batch_sizes", tuple(self.batch_sizes))
        if not self.devices and self.latency:
            raise ProfileError("give at least one of `devices` to time on")
        if self.check_rows < 0:
            raise ProfileError(f"{param('check_rows')} (recorded rows to re-run) must be >= 0, got {self.check_rows}")
        if not self.batch_sizes:
            raise ProfileError(f"{param('batch_sizes')} is empty; give at least one batch size")
        for b in self.batch_sizes:
            check("batch_sizes", b, rule="batch_size", error=ProfileError)
        for n in self.seq_lens:
            check("seq_lens", n, rule="seq_len", error=ProfileError)
        super().__post_init__()
        self.latency_settings()  # checks threads, warmup, repeats and min_block_ms
        refuse_verify_only_runtime(self.runtime, "profile")
        for d in self.devices if self.latency else ():
            select_runtime(self.runtime, d)  # graphs on a CPU is refused before anything loads

    def latency_settings(self) -> LatencySettings:
        """How latency is timed with these options."""
        return LatencySettings(
            threads=self.threads, warmup=self.warmup, repeats=self.repeats, min_block_ms=self.min_block_ms
        )


@dataclass(frozen=True)
class ProfileResult:
    """Everything :func:`profile_run_full` found.

    Attributes:
        costs: The cost table as stored in the run (merged with earlier latency entries).
        macs: Per-stage MACs, operator breakdown and the whole model's count.
        stage_source: ``"export"``, ``"method"`` or ``"function"``.
        checks: The partition checks, one per (device, batch size) verified.
        measured: The latency keys measured now (``"cpu/b1"``, ...).
        model: The model spec used.
        input_shape: The per-sample input shape used.
        drop_rows_reason: Why samples cannot leave a batch between stages (early exit must
            then run whole batches), None when they can.
        model_check: How the model compared with the run's (see :func:`dyncal.run_model.check_run_model`).
        replaced: Latency keys timed on another model that this profile replaced.
        replaced_model: That other model, described.
        macs_basis: For a model of several inputs, what its MACs are (averaged over the data's lengths).
        buckets: Cost per sequence length (``seq_lens``).
        inputs: For a model of several inputs, its inputs described (``input_shape`` is then empty).
    """

    costs: CostTable
    macs: StageMacs
    stage_source: str
    checks: tuple[tuple[str, StageCheck], ...]
    measured: tuple[str, ...]
    model: str
    input_shape: tuple[int, ...]
    drop_rows_reason: str | None = None
    model_check: ModelCheck | None = None
    replaced: tuple[str, ...] = ()
    replaced_model: str | None = None
    macs_basis: str | None = None
    buckets: tuple[LengthBucket, ...] = ()
    inputs: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The ``dyncal profile --json`` document."""
        multi: dict[str, Any] = {} if self.macs_basis is None else {"macs_basis": self.macs_basis}
        if self.inputs is not None:
            multi["inputs"] = self.inputs
        if self.buckets:
            multi["seq_len_buckets"] = [b.to_dict() for b in self.buckets]
        latency = sorted(self.costs.latency.items())
        k = len(self.macs.stage_macs)
        exits = [
            {
                "exit": i + 1,
                "macs": self.macs.exit_macs[i],
                "stage_macs": self.macs.stage_macs[i],
                "latency_ms": {key: p.exit_ms[i] for key, p in latency},
                "stage_latency_ms": {key: p.stage_median_ms[i] for key, p in latency},
                "stage_latency_iqr_ms": {key: p.stage_iqr_ms[i] for key, p in latency},
                "early_exit_ms": {key: p.early_exit_ms[i] for key, p in latency},
                "unsupported_ops": {u.op: u.count for u in self.macs.unsupported_ops if u.stage == i + 1},
            }
            for i in range(k)
        ]
        return {
            "model": self.model,
            "input_shape": list(self.input_shape),
            "stages": self.stage_source,
            "can_drop_rows": self.drop_rows_reason is None,
            "drop_rows_reason": self.drop_rows_reason,
            "k": k,
            "graph_macs": self.macs.graph_macs,
            "model_macs": self.macs.model_macs,
            "exits": exits,
            "unsupported_ops": [u.to_dict() for u in self.macs.unsupported_ops],
            "checks": [
                {"key": key, "batch_size": c.batch_size, "max_abs_diff": list(c.max_abs_diff)} for key, c in self.checks
            ],
            "measured": list(self.measured),
            "latency": {key: _latency_summary(p) for key, p in latency},
            "model_check": None if self.model_check is None else self.model_check.to_dict(),
            "replaced": list(self.replaced),
            "replaced_model": self.replaced_model,
            **multi,
        }


def _latency_summary(p: LatencyProfile) -> dict[str, Any]:
    return {
        "device": p.device,
        "batch_size": p.batch_size,
        "threads": p.threads,
        "hardware": p.hardware,
        "exit_ms": p.exit_ms,
        "stage_ms": p.stage_median_ms,
        "stage_iqr_ms": p.stage_iqr_ms,
        "decision_ms": p.decision_median_ms,
        "full_model_ms": p.full_model_median_ms,
        "early_exit_ms": p.early_exit_ms,
        "settings": dict(p.settings),
    }


def profile_model(
    model: nn.Module,
    input_shape: Sequence[int],
    options: ProfileOptions | None = None,
    *,
    input_dtype: torch.dtype = torch.float32,
    stages_fn: Callable[[nn.Module], Sequence[nn.Module]] | None = None,
    model_on: Callable[[str], nn.Module] | None = None,
    model_id: Mapping[str, Any] | None = None,
    batches: Callable[[int, torch.device], Inputs] | None = None,
    mac_samples: Sequence[tuple[Inputs, float]] = (),
    signature: InputSignature | None = None,
) -> tuple[CostTable, StageMacs, Stages, list[tuple[str, StageCheck]]]:
    """Stages, MACs and latency of one model (no run directory involved).

    Args:
        model: The multi-exit model, in eval mode on the CPU.
        input_shape: Per-sample input shape, e.g. ``(3, 224, 224)``.
        options: The devices and batch sizes to time, the latency settings, the seed of the
            random inputs, whether to measure latency and the ``runtime`` (:class:`ProfileOptions`;
            its model fields and ``seq_lens`` are the caller's; default: CPU, batch size 1).
        input_dtype: Input dtype.
        stages_fn: Optional hand-declared stages (``fn(model) -> [nn.Module]``).
        model_on: ``model_on(device)`` returns the model on another device (default: move
            ``model``'s copy there with ``.to``; the CPU model is restored afterwards).
        model_id: What identifies the model (``model`` spec, ``weights_sha256``,
            ``state_sha256``; see :data:`dyncal.artifacts.run.MODEL_ID_KEYS`), recorded in every latency
            entry's settings (default: the state's hash only).
        batches: ``batches(b, device)``: the inputs to build, check and time with (default: random).
        mac_samples: One-row batches whose MACs are averaged, with their weights (default: one count on
            ``batches(1)``).
        signature: The inputs' signature (several inputs: its dynamic dimensions stay dynamic).

    Returns:
        ``(cost table, per-stage MACs, stages, partition checks)``; ``stages.source`` says
        where they came from, ``stages.can_drop_rows`` / ``stages.drop_rows_reason`` whether
        samples can leave a batch between stages.

    Raises:
        ProfileError: Export/partition fails, the stages do not reproduce the model, fvcore
            cannot count, a stage fails on a device, or a latency cannot be right
            (:func:`dyncal.analysis.plausible.check_plausible`).
    """
    options = options or ProfileOptions()
    for d in options.devices:  # a missing CUDA device is refused before any export or count
        resolve_device(d)
    settings = options.latency_settings()
    model_id = dict(model_id) if model_id is not None else {"state_sha256": state_sha256(model)}
    cpu = torch.device("cpu")

    def inputs(b: int, device: torch.device) -> Inputs:
        if batches:
            return batches(b, device)
        return example_input(input_shape, input_dtype, b, device=device, seed=options.seed)

    x1 = inputs(1, cpu)
    stages, check = checked_stages(
        model, x1, example=inputs(EXAMPLE_BATCH, cpu), stages_fn=stages_fn, reexport=True, signature=signature
    )
    checks = [("cpu/b1", check)]
    if stages.can_drop_rows:  # can rows leave between stages? (needs >= 2 rows; marks the stages if not)
        x = inputs(_ROWS_BATCH, cpu)
        try:  # for the row-drop verdict only: a failing comparison at this size is left to the per-batch checks
            verify_stages(model, stages, x)
        except ProfileError as e:
            log.debug("row-drop check skipped at batch %d: %s", batch_size(x), e)
    # several inputs: MACs averaged over the samples, with no eager count (whose module view misleads)
    if mac_samples:
        macs = averaged_macs(lambda s: stage_macs(stages, s), mac_samples)
    else:
        macs = stage_macs(stages, x1, model=model)
    log.info("MACs per exit: %s", list(macs.exit_macs))
    profiles: dict[str, LatencyProfile] = {}
    for name in options.devices if options.latency else ():
        for attempt in range(1, ATTEMPTS + 1):  # a burst of load passes: time again before refusing
            attempt_checks: list[tuple[str, StageCheck]] = []
            timed = _time_on(
                name, model, stages, inputs, options.batch_sizes, settings, stages_fn=stages_fn, model_on=model_on,
                checks=attempt_checks, runtime=select_runtime(options.runtime, name),
            )  # fmt: skip
            why = implausible(timed)
            if why is None or attempt == ATTEMPTS:
                break
            log.warning(
                "latency on %s cannot be right (%s); timing it again (%d of %d)", name, why, attempt + 1, ATTEMPTS
            )
        checks.extend(attempt_checks)
        check_plausible(timed, threads=settings.threads, repeats=settings.repeats)
        for prof in timed:
            profiles[prof.key] = replace(prof, settings={**prof.settings, **model_id})
    costs = CostTable(
        macs=tuple(float(m) for m in macs.exit_macs),
        stage_macs=tuple(float(m) for m in macs.stage_macs),
        unsupported_ops=macs.unsupported_ops,
        latency=profiles,
        source="profile",
    )
    return costs, macs, stages, checks


def _time_on(
    name: str,
    model: nn.Module,
    stages: Stages,
    inputs: Callable[[int, torch.device], Inputs],
    batch_sizes: Sequence[int],
    settings: LatencySettings,
    *,
    stages_fn: Callable[[nn.Module], Sequence[nn.Module]] | None,
    model_on: Callable[[str], nn.Module] | None,
    checks: list[tuple[str, StageCheck]],
    runtime: str,
) -> list[LatencyProfile]:
    """Latency on device ``name`` at every batch size (inputs from ``inputs(b, device)``).

    Each partition check is appended to ``checks``. On a GPU blocks are timed by CUDA
    events after a warm-up that settles, with cuDNN's kernels chosen before timing
    (:mod:`dyncal.analysis.cuda_timing`); under ``runtime`` graphs the stages replay CUDA
    graphs captured at bucketed batch sizes (:mod:`dyncal.analysis.graphs`).
    """
    dev = resolve_device(name)
    if dev.type == "cpu":
        dev_model, dev_stages = model, stages
    else:
        dev_model = model_on(name) if model_on is not None else model.to(dev)
        dev_stages = build_stages(dev_model, inputs(EXAMPLE_BATCH, dev), stages_fn=stages_fn, signature=stages.inputs)
    try:
        profiles = []
        for b in batch_sizes:
            x = inputs(int(b), dev)
            key = f"{name}/b{int(b)}"
            if stages.drop_rows_reason is not None:
                dev_stages.forbid_dropping_rows(stages.drop_rows_reason)
            run_stages, check = checked_stages(dev_model, x, stages=dev_stages, stages_fn=stages_fn, reexport=True)
            checks.append((key, check))
            log.info("timing %s", key)
            try:
                if runtime == "graphs":
                    run_stages = graph_stages(run_stages, max(int(v) for v in batch_sizes))
                with device_tuned(dev):
                    prof = measure_latency(run_stages, dev_model, x, settings, device_name=name, timer=EventTimer(dev))
                profiles.append(replace(prof, settings={**prof.settings, "runtime": runtime}))
            except torch.OutOfMemoryError as e:
                raise ProfileError(f"out of memory on {name} at batch size {b}; try a smaller `batch_sizes`") from e
        return profiles
    finally:
        if dev.type != "cpu" and model_on is None:
            model.to(torch.device("cpu"))


def profile_run_full(run_path: str | os.PathLike[str], *, options: ProfileOptions | None = None) -> ProfileResult:
    """Profile a run's model and store the cost table in the run; return the details.

    Args:
        run_path: A complete run directory.
        options: What to profile (defaults: CPU, batch size 1, threads as they are).

    Returns:
        The stored cost table with per-stage MACs, the partition checks and what was
        measured now.

    Raises:
        DyncalError: The run, the model, a device, the partition or a measurement fails
            (one clear message each).
    """
    options = options or ProfileOptions()
    run = load_run(run_path)
    for d in options.devices:
        resolve_device(d)
    # Lock the run and prove it writable first: nothing is measured that cannot be stored.
    with RunLock(run.path):
        check_writable(run.path, what="the cost table (run.json)")
        return _profile_locked(run, options)


def _profile_locked(run: Run, options: ProfileOptions) -> ProfileResult:
    opened = open_run_model(
        run,
        options,
        data=options.data,
        allow_other_model=options.allow_other_model,
        check_rows=options.check_rows,
    )
    stages_fn = stages_function(options.stages, opened.model_path)
    model_id: dict[str, Any] = {
        "model": opened.spec,
        "weights_sha256": opened.weights_sha256,
        "state_sha256": opened.state_sha256,
    }
    if opened.check.allowed:
        model_id["other_model"] = opened.check.mismatch
    other_model_latency(run, model_id, allow_other_model=options.allow_other_model)  # refuse before measuring

    def model_on(device: str) -> nn.Module:
        return load_model(opened.spec, weights=opened.weights, model_path=opened.model_path, device=device).module

    multi = None
    if not opened.single_input and opened.inputs is not None:
        multi = MultiInputProfile.of_run(
            run, opened.inputs, data=options.data, search_path=opened.model_path, seed=options.seed
        )

    def measure(batches: Any = None, samples: Sequence[tuple[Inputs, float]] = ()) -> Any:
        return profile_model(
            opened.module,
            opened.input_shape,
            options,
            input_dtype=torch_dtype(opened.input_dtype or "float32"),
            stages_fn=stages_fn,
            model_on=model_on,
            model_id=model_id,
            batches=batches,
            mac_samples=samples,
            signature=opened.inputs if multi is not None else None,
        )

    costs, macs, stages, checks = measure() if multi is None else measure(multi.batches, multi.samples)
    basis = {} if multi is None else {"macs_basis": multi.basis}
    costs = replace(costs, model={**model_id, "check": opened.check.to_dict(), **basis})
    buckets = [] if multi is None else [(n, measure(*multi.bucket_batches(n))) for n in options.seq_lens]
    stored = store_costs(run, costs, model_id=model_id, allow_other_model=options.allow_other_model)
    return ProfileResult(
        costs=stored.costs,
        macs=macs,
        stage_source=stages.source,
        checks=tuple(checks),
        drop_rows_reason=stages.drop_rows_reason,
        measured=tuple(costs.latency),
        model=opened.spec,
        input_shape=opened.input_shape,
        model_check=opened.check,
        replaced=stored.replaced,
        replaced_model=stored.replaced_model,
        macs_basis=None if multi is None else multi.basis,
        inputs=None if multi is None else multi.batches.signature.describe(),
        buckets=tuple(
            LengthBucket(n, m.exit_macs, {key: list(p.exit_ms) for key, p in c.latency.items()})
            for n, (c, m, _, _) in buckets
        ),
    )


def profile_run(run_path: str | os.PathLike[str], options: ProfileOptions | None = None, **fields: Any) -> CostTable:
    """Profile a run's model (stages, MACs, latency) and store the cost table in the run.

    Args:
        run_path: A complete run directory (from collect, or import with ``options.model``).
        options: All options (devices, batch sizes, threads, model overrides, hand-declared
            stages, repeats, ...; :class:`ProfileOptions`).
        **fields: The fields of :class:`ProfileOptions` as keywords instead of ``options``
            (``devices=``, ``batch_sizes=``, ``threads=``, ...).

    Returns:
        The cost table as stored (latency of other devices/batch sizes kept).

    Raises:
        DyncalError: Options given both ways, or see :func:`profile_run_full`.
    """
    return profile_run_full(run_path, options=options_from(ProfileOptions, options, fields, "profile")).costs
