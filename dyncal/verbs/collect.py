"""Run a multi-exit model over a data set and stream every exit's logits to a run directory.

One process, or several under ``torchrun``: each process takes a contiguous block of
the data set, process 0 allocates the on-disk arrays once the first batches tell K and
C, every process writes its rows in place, and process 0 publishes the run. Rows stay in
data set order and nothing is merged or copied afterwards.

Memory stays flat as N grows: rows go straight to disk (see :class:`dyncal.artifacts.run_writer.RunWriter`).
Process 0 holds the run's lock throughout, and every process saves its progress in the
partial run, so ``resume`` continues a collect that was killed where it stopped.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, Subset

from dyncal.artifacts.outputs import check_out
from dyncal.artifacts.run import Run, load_run
from dyncal.artifacts.run_document import Provenance
from dyncal.artifacts.run_writer import RunWriter
from dyncal.artifacts.rundir import PARTIAL_SUFFIX
from dyncal.constraints import check
from dyncal.data import item_signature
from dyncal.errors import DataError, DyncalError, ModelError, first_line, param
from dyncal.inputs import (
    InputError,
    InputSignature,
    as_inputs,
    batch_size,
    call_model,
    describe_inputs,
    resolve_collate,
    to_device,
)
from dyncal.models import LoadedModel, check_exit_outputs, resolve_device
from dyncal.options import options_from
from dyncal.verbs.collect_resume import compare_saved, read_progress, resume_point, write_progress

__all__ = ["collect_run", "CollectOptions", "DistributedContext"]

log = logging.getLogger(__name__)

ProgressFn = Callable[[int, int, float], None]


@dataclass(frozen=True)
class DistributedContext:
    """Where this process stands in a ``torchrun`` job (world size 1 without one)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> DistributedContext:
        """Read ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` as set by torchrun."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        return cls(
            rank=int(os.environ.get("RANK", "0")),
            world_size=world,
            local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        )

    @property
    def active(self) -> bool:
        """Whether there is more than one process."""
        return self.world_size > 1

    def block(self, n: int) -> tuple[int, int]:
        """This process's contiguous share ``[start, stop)`` of ``n`` rows."""
        return self.rank * n // self.world_size, (self.rank + 1) * n // self.world_size


def _gather(ctx: DistributedContext, value: Any) -> list[Any]:
    """Every process's ``value`` (just ``[value]`` without torchrun); a string is an error, raised on every process."""
    values: list[Any] = [value]
    if ctx.active:
        values = [None] * ctx.world_size
        dist.all_gather_object(values, value)
    for v in values:
        if isinstance(v, str):
            raise DyncalError(v)
    return values


def _labels_of(y: Any, batch_index: int, c: int) -> np.ndarray:
    if not isinstance(y, torch.Tensor):
        raise DataError(f"batch {batch_index}: labels collated to {type(y).__name__}; items must be (input, label)")
    if y.is_floating_point() or y.ndim != 1:
        raise DataError(
            f"batch {batch_index}: labels must be one integer per item, got {y.dtype} of shape {tuple(y.shape)}"
        )
    labels = y.numpy().astype(np.int64, copy=False)
    bad = (labels < 0) | (labels >= c)
    if bad.any():
        raise DataError(
            f"batch {batch_index}: labels {labels[bad][:5].tolist()} lie outside [0, {c}) for the model's "
            f"C={c} classes; check that the data set and the model use the same classes"
        )
    return labels


def _next_batch(batches: Any, batch_index: int, first_row: int, batch_size: int) -> tuple[Any, Any] | None:
    """The next ``(inputs, labels)`` batch, or None at the end; loading errors become one line."""
    try:
        batch = next(batches)
    except StopIteration:
        return None
    except DyncalError as e:  # dyncal's collate refusing the items says why itself
        raise DataError(f"batch {batch_index} (rows {first_row}..{first_row + batch_size - 1}): {e}") from None
    except Exception as e:  # noqa: BLE001 - anything the user's data set or collate raises
        raise DataError(
            f"could not load batch {batch_index} (rows {first_row}..{first_row + batch_size - 1}): "
            f"{type(e).__name__}: {first_line(e)}; every item must be an (input, label) pair of the same shape"
        ) from e
    if not isinstance(batch, (list, tuple)) or len(batch) != 2:
        raise DataError(f"batch {batch_index} is not (inputs, labels); every item must be an (input, label) pair")
    return batch[0], batch[1]


def _check_finite(logits: np.ndarray, batch_index: int, first_row: int) -> None:
    finite = np.isfinite(logits)
    if not finite.all():
        rows, exits = np.nonzero(~finite.all(axis=2))
        raise ModelError(
            f"exit {int(exits[0]) + 1} produced NaN or inf logits in batch {batch_index} "
            f"(row {first_row + int(rows[0])}); check the model and its weights (no run was written)"
        )


@dataclass(frozen=True, kw_only=True)
class CollectOptions:
    """How ``dyncal collect`` runs a model over a data set (see :func:`collect_run`).

    Attributes:
        data_spec: The data spec, for provenance.
        batch_size: Samples per forward.
        workers: DataLoader worker processes.
        limit: Use only the first ``limit`` samples.
        device: ``cpu``, ``cuda`` or ``cuda:N``; under torchrun ``cuda`` means this
            process's ``LOCAL_RANK`` device.
        overwrite: Replace an existing run once the new one is complete; discard an
            interrupted ``OUT.partial`` (unless ``resume``).
        resume: Continue ``OUT.partial`` from its last saved progress, after checking
            that model, weights, data and options match what it recorded (a fresh start
            when there is none). The result equals an uninterrupted collect bit for bit.
        checkpoint_s: Save progress at most this often, in seconds (0: after every batch).

    Example:
        >>> CollectOptions(data_spec="digits.npz", batch_size=32).batch_size
        32
        >>> CollectOptions(data_spec="digits.npz", checkpoint_s=-1)
        Traceback (most recent call last):
        ...
        dyncal.errors.DyncalError: `checkpoint_s` must be >= 0 seconds, got -1
    """

    data_spec: str
    batch_size: int = 64
    workers: int = 0
    limit: int | None = None
    device: str = "cpu"
    overwrite: bool = False
    resume: bool = False
    checkpoint_s: float = 2.0
    collate: str | None = None

    def __post_init__(self) -> None:
        """Check the values."""
        if not 0 <= self.checkpoint_s < math.inf:  # NaN too
            raise DyncalError(f"{param('checkpoint_s')} must be >= 0 seconds, got {self.checkpoint_s}")
        check("batch_size", self.batch_size)
        check("workers", self.workers)
        if self.limit is not None:
            check("limit", self.limit)


@dataclass
class _ProcessCollect:
    """What every step of one process's collect reads: its model and device, the options, its block of rows.

    ``signature`` is the inputs' signature over every batch seen: sizes that vary become
    dynamic, integer ranges join.
    """

    model: Any
    dev: torch.device
    ctx: DistributedContext
    options: CollectOptions
    spec: dict[str, Any]  # what a resumed collect must repeat (:func:`~dyncal.verbs.collect_resume.resume_point`)
    block: tuple[int, int]
    signature: InputSignature | None = None

    def run_next(self, batches: Any, batch_index: int, first_row: int) -> tuple[Any, Any, Any] | None:
        """The next batch through the model: ``(inputs, labels, outputs)``, or None at the end.

        ``model(x)`` (``model(*x)``, ``model(**x)``) runs on this process's device; a failing
        forward becomes one line naming the batch. Each batch must have the inputs, dtypes and
        ranks of the batches before it.
        """
        batch = _next_batch(batches, batch_index, first_row, self.options.batch_size)
        if batch is None:
            return None
        try:
            x = as_inputs(batch[0], what=f"batch {batch_index}: the collated inputs")
            seen = InputSignature.of(x)
            self.signature = seen if self.signature is None else self.signature.merge(seen)
        except InputError as e:
            raise DataError(f"batch {batch_index}: {e}" if not str(e).startswith("batch") else str(e)) from None
        try:
            out = call_model(self.model, to_device(x, self.dev, non_blocking=True))
        except Exception as e:  # noqa: BLE001 - the user's model may raise anything
            raise ModelError(
                f"the model failed on batch {batch_index} (inputs {describe_inputs(x)}): "
                f"{type(e).__name__}: {first_line(e)}; check that the data set gives the inputs the model expects"
            ) from e
        return x, batch[1], [out] if isinstance(out, torch.Tensor) else out  # a static model: one exit (K = 1)


def collect_run(
    loaded: LoadedModel,
    dataset: Dataset[Any],
    out: str | os.PathLike[str],
    options: CollectOptions | None = None,
    *,
    progress: ProgressFn | None = None,
    image_transform: dict[str, Any] | None = None,
    command: str | None = None,
    **fields: Any,
) -> Run | None:
    """Collect per-exit logits of ``loaded`` over ``dataset`` into the run ``out``.

    The run is built in ``OUT.partial`` under the run's lock (:class:`dyncal.artifacts.lock.RunLock`)
    and published only once every row is written. Progress is saved in
    ``OUT.partial/progress.<rank>.json`` (after the rows it names are on disk), so an
    interrupted collect, ``kill -9`` included, can be continued with ``resume``.

    Args:
        loaded: The model (see :func:`dyncal.models.load_model`).
        dataset: Map-style data set of ``(input, label)`` items, read in order.
        out: Run directory to create.
        options: How to collect (:class:`CollectOptions`; ``data_spec`` is required).
        progress: Called as ``progress(done, total, items_per_s)`` after each batch
            (process 0 only; counts are this process's share).
        image_transform: The ``imagefolder:`` transform settings, for provenance (so
            verify can read the same inputs).
        command: The command line to record (default: this process's ``sys.argv``).
        **fields: The fields of :class:`CollectOptions` as keywords instead of ``options``
            (``data_spec=``, ``batch_size=``, ...).

    Returns:
        The finished run (process 0), or None on other torchrun processes.

    Raises:
        ModelError: Outputs that break the multi-exit contract, or NaN/inf logits.
        DataError: Malformed items or labels outside ``[0, C)``.
        RunError: ``out`` exists without ``overwrite``, another process writes it, the
            folder cannot be written, or the partial run does not match (``resume``).
    """
    opts = options_from(CollectOptions, options, fields, "collect")
    ctx = DistributedContext.from_env()
    out = Path(out)
    check_out(out, overwrite=opts.overwrite)
    if ctx.active and not dist.is_initialized():
        cuda = opts.device.startswith("cuda")
        if cuda:  # each process owns one GPU; NCCL's collectives use the current device
            torch.cuda.set_device(ctx.local_rank)
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    try:
        return _collect(loaded, dataset, out, ctx, opts, progress, image_transform, command)
    finally:
        if ctx.active and dist.is_initialized():
            dist.destroy_process_group()


# --------------------------------------------------------------------------- the loop


def _collect(
    loaded: LoadedModel,
    dataset: Dataset[Any],
    out: Path,
    ctx: DistributedContext,
    s: CollectOptions,
    progress: ProgressFn | None,
    image_transform: dict[str, Any] | None,
    command: str | None,
) -> Run | None:
    n_total = len(dataset)  # type: ignore[arg-type]
    n = n_total if s.limit is None else min(s.limit, n_total)
    if n == 0:
        raise DataError(f"the data set '{s.data_spec}' is empty; nothing to collect")
    dev = resolve_device(f"cuda:{ctx.local_rank}" if ctx.active and s.device == "cuda" else s.device)
    try:
        item0 = dataset[0]
    except Exception as e:  # noqa: BLE001 - anything the user's data set raises
        raise DataError(
            f"could not load item 0 of the data set '{s.data_spec}': {type(e).__name__}: {first_line(e)}"
        ) from e
    sample = item_signature(item0, 0)
    input_shape, input_dtype = (sample.inputs[0].shape, sample.inputs[0].dtype) if sample.single else (None, None)
    collate_fn = resolve_collate(s.collate, loaded.model_path) if s.collate or not sample.single else None
    model = loaded.module.to(dev)
    if not loaded.spec.endswith(".pt2"):  # exported programs have no train/eval switch
        model.eval()
    start, stop = block = ctx.block(n)
    spec: dict[str, Any] = {
        "model": loaded.spec,
        "weights_sha256": loaded.weights_sha256,
        "data": s.data_spec,
        "dataset_len": n_total,
        "limit": s.limit,
        "n": n,
        "batch_size": s.batch_size,
        "device": s.device,
        "world_size": ctx.world_size,
        "input_shape": None if input_shape is None else list(input_shape),
        "input_dtype": input_dtype or sample.describe(),
        "image_transform": image_transform,
    }
    if s.collate is not None:
        spec["collate"] = s.collate
    writer, resumed = _open_writer(out, n, ctx, s)
    partial = out.with_name(out.name + PARTIAL_SUFFIX)
    try:
        done, saved_kc, error = resume_point(partial, ctx.rank, spec, block) if resumed else (start, None, None)
        if error is None and resumed and ctx.rank == 0:
            log.info("resuming '%s' at row %d of %d", partial, done, stop)
        _gather(ctx, error)  # every process stops on any process's error

        # Re-run the last saved batch (compared, not written) so a changed model or data
        # set shows up before anything new is written.
        first_row = start if done == start else start + ((done - start - 1) // s.batch_size) * s.batch_size
        loader = DataLoader(
            Subset(dataset, range(first_row, stop)),
            batch_size=s.batch_size,
            shuffle=False,
            num_workers=s.workers,
            pin_memory=dev.type == "cuda",
            collate_fn=collate_fn,
        )
        batches = iter(loader)
        proc = _ProcessCollect(model, dev, ctx, s, spec, block)
        t0 = time.perf_counter()
        with torch.inference_mode():
            first, (k, c) = _first_batch(proc, batches, first_row, saved_kc)
            writer = _arrays(writer, out, n, k, c, ctx, resumed)
            if not resumed:
                write_progress(partial, ctx.rank, spec, k, c, block, start)
            try:
                row = _write_rows(proc, writer, batches, first, k, c, first_row, done, t0, progress)
                if row != stop:
                    raise DataError(
                        f"the data set gave {row - start} rows of the {stop - start} expected; is its length right?"
                    )
            except DyncalError as e:
                error = str(e)
        seconds = time.perf_counter() - t0
        if ctx.rank != 0:
            writer.close()  # flushed before process 0 publishes
        _gather(ctx, error)  # every process stops on any process's error
        signatures = _gather(ctx, None if sample.single or proc.signature is None else proc.signature.to_dict())
        if ctx.rank != 0:
            return None
        writer.finish(_provenance(loaded, proc, command, (input_shape, input_dtype), seconds, signatures))
        log.info("collected %d samples in %.1f s", n, seconds)
        return load_run(out)
    except BaseException as e:
        # A user error in a fresh collect leaves nothing; an interruption, or any failure
        # of a resumed one, keeps the partial run (and its progress) for --resume.
        if writer is not None:
            writer.abort(keep_partial=resumed or not isinstance(e, DyncalError))
        raise


def _open_writer(out: Path, n: int, ctx: DistributedContext, s: CollectOptions) -> tuple[RunWriter | None, bool]:
    """Process 0 takes the lock and makes (or keeps) the partial run; the others wait.

    Returns:
        The writer (process 0's; None on the others) and whether it continues an interrupted collect.
    """
    writer: RunWriter | None = None
    setup: Any = None
    if ctx.rank == 0:
        try:
            writer = RunWriter(out, n, overwrite=s.overwrite, keep_partial=s.resume)
            if writer.resumed and read_progress(writer.partial, 0) is None:
                log.info("'%s' holds no saved progress; collecting from the start", writer.partial)
                writer.restart()
            setup = writer.resumed
        except DyncalError as e:
            setup = str(e)
    return writer, bool(_gather(ctx, setup)[0])  # process 0's answer: whether it resumes


def _first_batch(
    proc: _ProcessCollect, batches: Any, first_row: int, saved_kc: tuple[int, int] | None
) -> tuple[tuple[Any, Any, Any] | None, tuple[int, int]]:
    """This process's first batch through the model (None: an empty share), and the (K, C) every process agrees on."""
    first: tuple[Any, Any, Any] | None = None
    shape_or_error: Any = None
    try:
        first = proc.run_next(batches, 0, first_row)
        if first is not None:  # else an empty share (more processes than rows)
            x, y, outs = first
            shape_or_error = check_exit_outputs(outs, batch_size(x), static_ok=True)
            first = (None, y, outs)  # the inputs are not needed again: not held while every batch is written
    except DyncalError as e:
        shape_or_error = str(e)
    kc = {tuple(v) for v in _gather(proc.ctx, shape_or_error) if v is not None}
    if saved_kc is not None:
        kc.add(saved_kc)
    if len(kc) != 1:
        what = "the model and the interrupted collect" if saved_kc is not None else "processes"
        raise ModelError(f"{what} disagree on (K, C): {sorted(kc)}")
    k, c = kc.pop()
    return first, (k, c)


def _arrays(
    writer: RunWriter | None, out: Path, n: int, k: int, c: int, ctx: DistributedContext, resumed: bool
) -> RunWriter:
    """Process 0 allocates (or reopens) the arrays; then the other processes attach to them."""
    if writer is not None:
        if resumed:
            writer.open_existing(k, c)
        else:
            writer.allocate(k, c)
    _gather(ctx, None)  # the arrays exist now (under torchrun every process waits for process 0 here)
    return writer if writer is not None else RunWriter.attach(out, n, k, c)


def _provenance(
    loaded: LoadedModel,
    proc: _ProcessCollect,
    command: str | None,
    sample: tuple[Any, str | None],
    seconds: float,
    signatures: list[Any],
) -> Provenance:
    """What the finished run records of how it was collected.

    A multi-input run records the inputs' signature over every process's batches (``signatures``)
    instead of the first item's shape and dtype (``sample``).
    """
    s, ctx = proc.options, proc.ctx
    seen = [InputSignature.from_dict(d) for d in signatures if d is not None]
    input_shape, input_dtype = sample
    first_item = {"input_shape": None if input_shape is None else list(input_shape), "input_dtype": input_dtype}
    extra = {
        "weights": loaded.weights,
        "model_path": loaded.model_path,
        **({} if seen else first_item),
        "batch_size": s.batch_size,
        "workers": s.workers,
        "limit": s.limit,
        "world_size": ctx.world_size,
        "collect_seconds": round(seconds, 3),
        "image_transform": proc.spec["image_transform"],
    }
    if seen:
        extra["inputs"] = functools.reduce(InputSignature.merge, seen).to_dict()
    if s.collate is not None:
        extra["collate"] = s.collate
    return Provenance.here(
        model=loaded.spec,
        data=s.data_spec,
        device=str(proc.dev) if not ctx.active else f"{proc.dev.type} x{ctx.world_size}",
        weights_sha256=loaded.weights_sha256,
        command=command,
        extra=extra,
    )


def _write_rows(
    proc: _ProcessCollect,
    writer: RunWriter,
    batches: Any,
    first: tuple[Any, Any, Any] | None,
    k: int,
    c: int,
    row: int,
    done: int,
    t0: float,
    progress: ProgressFn | None,
) -> int:
    """Write every batch from ``row`` on (rows before ``done`` are compared, not written); returns the end row."""
    start, stop = proc.block
    first_row = row
    last_saved = time.monotonic()
    batch_index = 0
    current = first
    while current is not None:
        _, y, outs = current
        if batch_index > 0 and (
            not isinstance(outs, (list, tuple)) or len(outs) != k or any(o.shape != (outs[0].shape[0], c) for o in outs)
        ):
            check_exit_outputs(outs, int(outs[0].shape[0]), static_ok=True)
            raise ModelError(f"batch {batch_index}: the model returned a different number of exits than K={k}")
        logits = torch.stack([o.float() for o in outs], dim=1).cpu().numpy()
        _check_finite(logits, batch_index, row)
        labels = _labels_of(y, batch_index, c)
        b = logits.shape[0]
        indices = np.arange(row, row + b, dtype=np.int64)
        if row < done:
            compare_saved(writer, row, logits, labels, indices)
        else:
            writer.write(row, logits, labels, indices)
        row += b
        batch_index += 1
        if row > done and (row == stop or time.monotonic() - last_saved >= proc.options.checkpoint_s):
            writer.sync()  # the rows are on disk before the progress file names them
            write_progress(writer.partial, proc.ctx.rank, proc.spec, k, c, proc.block, row)
            last_saved = time.monotonic()
        if progress is not None and proc.ctx.rank == 0:
            progress(row - start, stop - start, (row - first_row) / max(time.perf_counter() - t0, 1e-9))
        current = proc.run_next(batches, batch_index, row)
    return row
