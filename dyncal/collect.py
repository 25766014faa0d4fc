"""Run a multi-exit model over a data set and stream every exit's logits to a run directory.

One process, or several under ``torchrun``: each process takes a contiguous block of
the data set, process 0 allocates the on-disk arrays once the first batches tell K and
C, every process writes its rows in place, and process 0 publishes the run. Rows stay in
data set order and nothing is merged or copied afterwards.

Memory stays flat as N grows: rows go straight to disk (see :class:`dyncal.run.RunWriter`).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from dyncal.data import check_item
from dyncal.errors import DataError, DyncalError, ModelError
from dyncal.models import LoadedModel, check_exit_outputs, resolve_device
from dyncal.run import Provenance, Run, RunWriter, check_out, load_run

__all__ = ["collect_run", "DistributedContext"]

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
    """Every process's ``value`` (just ``[value]`` without torchrun)."""
    if not ctx.active:
        return [value]
    import torch.distributed as dist

    out: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, value)
    return out


def _raise_first_error(results: list[Any]) -> None:
    for r in results:
        if isinstance(r, str):
            raise DyncalError(r)


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


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [""])[0][:300]


def _next_batch(batches: Any, batch_index: int, first_row: int, batch_size: int) -> tuple[Any, Any] | None:
    """The next ``(inputs, labels)`` batch, or None at the end; loading errors become one line."""
    try:
        batch = next(batches)
    except StopIteration:
        return None
    except Exception as e:  # noqa: BLE001 - anything the user's data set or collate raises
        raise DataError(
            f"could not load batch {batch_index} (rows {first_row}..{first_row + batch_size - 1}): "
            f"{type(e).__name__}: {_first_line(e)}; every item must be an (input, label) pair of the same shape"
        ) from e
    if not isinstance(batch, (list, tuple)) or len(batch) != 2:
        raise DataError(f"batch {batch_index} is not (inputs, labels); every item must be an (input, label) pair")
    return batch[0], batch[1]


def _forward(model: Any, x: Any, dev: torch.device, batch_index: int) -> Any:
    """``model(x)`` on ``dev``; a failing forward becomes one line naming the batch and input."""
    if not isinstance(x, torch.Tensor):
        raise DataError(f"batch {batch_index}: inputs collated to {type(x).__name__}, expected a tensor")
    try:
        out = model(x.to(dev, non_blocking=True))
    except Exception as e:  # noqa: BLE001 - the user's model may raise anything
        raise ModelError(
            f"the model failed on batch {batch_index} (inputs {tuple(x.shape)} {str(x.dtype).replace('torch.', '')}): "
            f"{type(e).__name__}: {_first_line(e)}; check that --data gives the inputs the model expects"
        ) from e
    return [out] if isinstance(out, torch.Tensor) else out  # a static model: one exit (K = 1)


def _check_finite(logits: np.ndarray, batch_index: int, first_row: int) -> None:
    finite = np.isfinite(logits)
    if not finite.all():
        rows, exits = np.nonzero(~finite.all(axis=2))
        raise ModelError(
            f"exit {int(exits[0]) + 1} produced NaN or inf logits in batch {batch_index} "
            f"(row {first_row + int(rows[0])}); check the model and its weights (no run was written)"
        )


def collect_run(
    loaded: LoadedModel,
    dataset: Dataset[Any],
    out: str | os.PathLike[str],
    *,
    data_spec: str,
    batch_size: int = 64,
    workers: int = 0,
    limit: int | None = None,
    device: str = "cpu",
    overwrite: bool = False,
    progress: ProgressFn | None = None,
    image_transform: dict[str, Any] | None = None,
    command: str | None = None,
) -> Run | None:
    """Collect per-exit logits of ``loaded`` over ``dataset`` into the run ``out``.

    Args:
        loaded: The model (see :func:`dyncal.models.load_model`).
        dataset: Map-style data set of ``(input, label)`` items, read in order.
        out: Run directory to create.
        data_spec: The data spec, for provenance.
        batch_size: Samples per forward.
        workers: DataLoader worker processes.
        limit: Use only the first ``limit`` samples.
        device: ``cpu``, ``cuda`` or ``cuda:N``; under torchrun ``cuda`` means this
            process's ``LOCAL_RANK`` device.
        overwrite: Replace an existing run once the new one is complete.
        progress: Called as ``progress(done, total, items_per_s)`` after each batch
            (process 0 only; counts are this process's share).
        image_transform: The ``imagefolder:`` transform settings, for provenance (so
            verify can read the same inputs).
        command: The command line to record (default: this process's ``sys.argv``).

    Returns:
        The finished run (process 0), or None on other torchrun processes.

    Raises:
        ModelError: Outputs that break the multi-exit contract, or NaN/inf logits.
        DataError: Malformed items or labels outside ``[0, C)``.
        RunError: ``out`` exists without ``overwrite``.
    """
    ctx = DistributedContext.from_env()
    out = Path(out)
    check_out(out, overwrite=overwrite)
    if ctx.active:
        _init_distributed(ctx, device)
    try:
        return _collect(
            loaded,
            dataset,
            out,
            ctx,
            data_spec,
            batch_size,
            workers,
            limit,
            device,
            overwrite,
            progress,
            image_transform,
            command,
        )
    finally:
        if ctx.active:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


def _init_distributed(ctx: DistributedContext, device: str) -> None:
    import torch.distributed as dist

    if not dist.is_initialized():
        if device.startswith("cuda"):
            # Each process owns one GPU; NCCL's collectives use the current device.
            torch.cuda.set_device(ctx.local_rank)
            dist.init_process_group(backend="nccl")
        else:
            dist.init_process_group(backend="gloo")


def _collect(
    loaded: LoadedModel,
    dataset: Dataset[Any],
    out: Path,
    ctx: DistributedContext,
    data_spec: str,
    batch_size: int,
    workers: int,
    limit: int | None,
    device: str,
    overwrite: bool,
    progress: ProgressFn | None,
    image_transform: dict[str, Any] | None,
    command: str | None,
) -> Run | None:
    n_total = len(dataset)  # type: ignore[arg-type]
    n = n_total if limit is None else min(limit, n_total)
    if n == 0:
        raise DataError(f"--data '{data_spec}' is empty; nothing to collect")
    dev = resolve_device(f"cuda:{ctx.local_rank}" if ctx.active and device == "cuda" else device)
    try:
        item0 = dataset[0]
    except Exception as e:  # noqa: BLE001 - anything the user's data set raises
        raise DataError(f"could not load item 0 of --data '{data_spec}': {type(e).__name__}: {_first_line(e)}") from e
    input_shape, input_dtype = check_item(item0, 0)
    model = loaded.module.to(dev)
    if not loaded.spec.endswith(".pt2"):  # exported programs have no train/eval switch
        model.eval()
    start, stop = ctx.block(n)
    loader = DataLoader(
        Subset(dataset, range(start, stop)),
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        pin_memory=dev.type == "cuda",
    )

    writer: RunWriter | None = None
    setup_error = None
    if ctx.rank == 0:
        try:
            writer = RunWriter(out, n, overwrite=overwrite)
        except DyncalError as e:
            setup_error = str(e)
    # Others wait until process 0 has made the partial directory (or failed to).
    _raise_first_error(_gather(ctx, setup_error))
    try:
        batches = iter(loader)
        t0 = time.perf_counter()
        first: tuple[Any, Any] | None = None
        shape_or_error: Any = None
        with torch.inference_mode():
            try:
                first_batch = _next_batch(batches, 0, start, batch_size)
                if first_batch is not None:  # else an empty share (more processes than rows)
                    x, y = first_batch
                    outs = _forward(model, x, dev, 0)
                    shape_or_error = check_exit_outputs(outs, int(x.shape[0]), static_ok=True)
                    first = (y, outs)
            except DyncalError as e:
                shape_or_error = str(e)
            shapes = _gather(ctx, shape_or_error)
            _raise_first_error(shapes)
            kc = {tuple(s) for s in shapes if s is not None}
            if len(kc) != 1:
                raise ModelError(f"processes disagree on (K, C): {sorted(kc)}")
            k, c = kc.pop()
            if writer is not None:
                writer.allocate(k, c)
            if ctx.active:
                _gather(ctx, None)  # arrays exist now
                if writer is None:
                    writer = RunWriter.attach(out, n, k, c)
            assert writer is not None
            error = None
            try:
                row = start
                batch_index = 0
                current = first
                while current is not None:
                    y, outs = current
                    if batch_index > 0 and (
                        not isinstance(outs, (list, tuple))
                        or len(outs) != k
                        or any(o.shape != (outs[0].shape[0], c) for o in outs)
                    ):
                        check_exit_outputs(outs, int(outs[0].shape[0]), static_ok=True)
                        raise ModelError(
                            f"batch {batch_index}: the model returned a different number of exits than K={k}"
                        )
                    logits = torch.stack([o.float() for o in outs], dim=1).cpu().numpy()
                    _check_finite(logits, batch_index, row)
                    labels = _labels_of(y, batch_index, c)
                    b = logits.shape[0]
                    writer.write(row, logits, labels, np.arange(row, row + b, dtype=np.int64))
                    row += b
                    batch_index += 1
                    if progress is not None and ctx.rank == 0:
                        progress(row - start, stop - start, (row - start) / max(time.perf_counter() - t0, 1e-9))
                    batch = _next_batch(batches, batch_index, row, batch_size)
                    current = None if batch is None else (batch[1], _forward(model, batch[0], dev, batch_index))
            except DyncalError as e:
                error = str(e)
        seconds = time.perf_counter() - t0
        if ctx.rank != 0:
            writer.close()  # flushed before process 0 publishes
        _raise_first_error(_gather(ctx, error))
        if writer is None or ctx.rank != 0:
            return None
        provenance = Provenance.here(
            model=loaded.spec,
            data=data_spec,
            device=str(dev) if not ctx.active else f"{dev.type} x{ctx.world_size}",
            weights_sha256=loaded.weights_sha256,
            command=command,
            extra={
                "weights": loaded.weights,
                "model_path": loaded.model_path,
                "input_shape": list(input_shape),
                "input_dtype": input_dtype,
                "batch_size": batch_size,
                "workers": workers,
                "limit": limit,
                "world_size": ctx.world_size,
                "collect_seconds": round(seconds, 3),
                "image_transform": image_transform,
            },
        )
        writer.finish(provenance)
        log.info("collected %d samples in %.1f s", n, seconds)
        return load_run(out)
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
