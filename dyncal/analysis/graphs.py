"""The latency mode on a GPU: every stage replayed from CUDA graphs captured at bucketed batch sizes.

A small stage on a GPU costs its kernel launches more than its arithmetic, and an early exit
hands each stage a batch of whatever size is left. :func:`graph_stages` wraps a model's
stages so that each stage runs from a CUDA graph captured at a *bucket* batch size: powers of
two up to the largest batch measured, and that size itself (:func:`bucket_sizes`). A batch of
``n`` rows is copied into the static input of the smallest bucket that holds it, the graph is
replayed, and the outputs are sliced back to ``n`` rows (and copied out, so a later replay
cannot overwrite what a caller still holds). The rows past ``n`` hold earlier rows (those the
graph was captured with, or a previous call's); a stage whose rows are independent of each
other (which :func:`~dyncal.analysis.stages.verify_stages` checks: ``can_drop_rows``) gives
its real rows the same values whatever they are. A batch larger than every bucket runs eagerly.

The wrapped stages follow the stage protocol, so :class:`~dyncal.analysis.early_exit.EarlyExitRunner`,
its throughput mode (:mod:`dyncal.analysis.rebatch`) and the plain deployment
(:mod:`dyncal.analysis.plain`) run on them unchanged, with one host synchronisation per exit
decision. :func:`with_runtime` applies a runtime by name to a runner (``eager`` or ``graphs``;
:func:`default_runtime` picks per device).

Capture happens lazily, the first time a stage sees a bucket and input signature, or for all
buckets at once with :meth:`BucketedStages.capture` (at load). :attr:`BucketedStages.info`
states what was captured and the device memory it holds (``torch.cuda.memory_allocated``
before and after, static buffers included).

``backend="eager"`` keeps everything but the graph: the same static buffers, padding and
slicing, with the stage called eagerly on the padded buffers instead of a replay. It is how the
padding is tested on a CPU, and a way to see what padding alone costs.

Example:
    >>> bucket_sizes(32)
    (1, 2, 4, 8, 16, 32)
    >>> bucket_sizes(48), bucket_for(20, bucket_sizes(48)), bucket_for(49, bucket_sizes(48))
    ((1, 2, 4, 8, 16, 32, 48), 32, None)
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import torch
from torch import nn

from dyncal.analysis.carry import BatchDims, check_stage_output, input_batch_dims, output_batch_dims, row_count
from dyncal.analysis.cuda_timing import autotuned
from dyncal.analysis.stages import Stages
from dyncal.artifacts.fields import JsonFields
from dyncal.errors import DyncalError, ProfileError, describe, param

__all__ = [
    "RUNTIMES",
    "refuse_verify_only_runtime",
    "Backend",
    "BucketedStage",
    "BucketedStages",
    "CaptureInfo",
    "bucket_sizes",
    "bucket_for",
    "default_runtime",
    "graph_stages",
    "select_runtime",
    "with_runtime",
]

log = logging.getLogger(__name__)

RUNTIMES = {
    "eager": "stages called as modules",
    "frozen": "stages traced, frozen and optimised for inference (torch.jit.freeze + optimize_for_inference)",
    "compiled": "stages compiled by torch.compile (dynamic shapes)",
    "graphs": "CUDA graphs at bucketed batch sizes",
}
"""How stages run, and what each runtime does (recorded in verify.json): ``eager`` and ``graphs`` here
(:func:`with_runtime`), ``frozen`` and ``compiled`` too by :func:`dyncal.analysis.runtime.apply_runtime`."""

Backend = Literal["cuda", "eager"]
"""What replays a bucket: a captured CUDA graph, or (a CPU stand-in) the stage called on the padded buffers."""

_WARMUP_CALLS = 3  # eager calls on a side stream before a capture (lazy init, cuDNN autotuning)

R = TypeVar("R")


def bucket_sizes(max_batch_size: int) -> tuple[int, ...]:
    """The batch sizes stages are captured at: powers of two below ``max_batch_size``, then it.

    Raises:
        DyncalError: ``max_batch_size`` is not a positive integer.

    Example:
        >>> bucket_sizes(1), bucket_sizes(8), bucket_sizes(100)
        ((1,), (1, 2, 4, 8), (1, 2, 4, 8, 16, 32, 64, 100))
    """
    if isinstance(max_batch_size, bool) or not isinstance(max_batch_size, int) or max_batch_size < 1:
        raise DyncalError(f"{param('max_batch_size')} must be a positive integer, got {max_batch_size!r}")
    return (*(1 << i for i in range((max_batch_size - 1).bit_length())), max_batch_size)  # powers of two below it


def bucket_for(n: int, buckets: Sequence[int]) -> int | None:
    """The smallest bucket holding ``n`` rows, or None when ``n`` is 0 or above every bucket.

    Example:
        >>> bucket_for(5, (1, 2, 4, 8)), bucket_for(8, (1, 2, 4, 8)), bucket_for(0, (1, 2))
        (8, 8, None)
    """
    if n < 1:
        return None
    return next((b for b in sorted(buckets) if b >= n), None)


def default_runtime(device: torch.device | str) -> str:
    """The runtime used when none is asked for: ``graphs`` on CUDA, ``eager`` elsewhere.

    Example:
        >>> default_runtime("cpu"), default_runtime("cuda:0")
        ('eager', 'graphs')
    """
    return "graphs" if torch.device(device).type == "cuda" else "eager"


def select_runtime(runtime: str | None, device: torch.device | str) -> str:
    """The runtime to run on ``device``: ``runtime`` when given, else :func:`default_runtime`.

    ``graphs`` replays CUDA graphs, so it is refused on any other device, and on a machine
    without CUDA, in one line that says what to do.

    Raises:
        DyncalError: Unknown ``runtime``, or ``graphs`` without CUDA.

    Example:
        >>> select_runtime(None, "cpu"), select_runtime("eager", "cuda")
        ('eager', 'eager')
        >>> select_runtime("graphs", "cpu")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        dyncal.errors.DyncalError: `runtime` graphs needs CUDA (it replays per-stage CUDA graphs), but `device` is ...
    """
    if runtime is not None and runtime not in RUNTIMES:
        raise DyncalError(f"{param('runtime')} must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
    dev = torch.device(device)
    if runtime is None:
        return default_runtime(dev)
    if runtime == "graphs" and dev.type != "cuda":
        raise DyncalError(
            f"{param('runtime')} graphs needs CUDA (it replays per-stage CUDA graphs), but {param('device')} is "
            f"{dev}; use {param('device')} cuda on a machine with a GPU, or {param('runtime')} eager"
        )
    if runtime == "graphs" and not torch.cuda.is_available():
        raise DyncalError(
            f"{param('runtime')} graphs needs CUDA (it replays per-stage CUDA graphs), and this machine has no "
            f"CUDA device; use {param('runtime')} eager"
        )
    return runtime


def refuse_verify_only_runtime(runtime: str | None, verb: str) -> None:
    """Refuse ``frozen`` and ``compiled`` (they rebuild the runners of ``dyncal verify``) for ``verb``.

    Raises:
        DyncalError: ``runtime`` is ``frozen`` or ``compiled``.
    """
    if runtime in ("frozen", "compiled"):
        raise DyncalError(
            f"{param('runtime')} {runtime} applies to verify (it rebuilds the early exit and the plain deployment "
            f"alike); {verb} takes eager or graphs"
        )


@dataclass(frozen=True)
class CaptureInfo(JsonFields):
    """What the graphs of some stages hold.

    Attributes:
        backend: ``cuda`` or ``eager`` (the CPU stand-in: no graph, same buffers).
        buckets: Batch sizes captured at (each stage, lazily or at once).
        graphs: Graphs captured so far (one per stage, bucket and input signature).
        memory_bytes: Device memory allocated over the captures (``torch.cuda.memory_allocated``
            growth: static inputs and outputs, live blocks of the graphs' pool); 0 on the CPU.
        reserved_bytes: Growth of ``torch.cuda.memory_reserved`` over the captures: also the
            memory the graphs' private pool keeps for their intermediate values.
        capture_s: Seconds spent capturing (warm-up included).
        eager_calls: Calls that ran eagerly (more rows than the largest bucket).
    """

    backend: str
    buckets: tuple[int, ...]
    graphs: int
    memory_bytes: int
    reserved_bytes: int
    capture_s: float
    eager_calls: int


def _signature(values: Sequence[Any], dims: BatchDims) -> tuple[Any, ...]:
    """What a graph is specific to besides the bucket: every value's shape off the batch, dtype, device."""
    sig: list[Any] = []
    for v, d in zip(values, dims, strict=True):
        if isinstance(v, torch.Tensor):
            shape = tuple(-1 if i == d else s for i, s in enumerate(v.shape))
            sig.append(("t", shape, v.dtype, v.device, d))
        elif isinstance(v, (int, float, bool, str, type(None))):
            sig.append(("v", v))
        else:
            sig.append(("id", id(v)))
    return tuple(sig)


def repeat_rows(v: Any, d: int | None, n: int, bucket: int) -> Any:
    """A static buffer for value ``v``: its ``n`` rows repeated to ``bucket`` rows (a copy)."""
    if not isinstance(v, torch.Tensor):
        return v
    if d is None:
        return v.clone()
    idx = torch.arange(bucket, device=v.device) % n
    return v.index_select(d, idx).contiguous()


class _Slot:
    """One bucket of one stage: static inputs, outputs, and what refreshes the outputs."""

    def __init__(self, inputs: tuple[Any, ...], dims: BatchDims) -> None:
        self.inputs = inputs
        self.dims = dims
        self.outputs: tuple[Any, ...] = ()
        self.replay: Callable[[], None] = lambda: None

    def load(self, values: Sequence[Any], n: int) -> None:
        """Copy a call's values into the static inputs (rows ``0..n-1``; the others keep what they hold)."""
        for buf, v, d in zip(self.inputs, values, self.dims, strict=True):
            if not isinstance(buf, torch.Tensor) or buf is v:
                continue
            (buf if d is None else buf.narrow(d, 0, n)).copy_(v)


class BucketedStage(nn.Module):
    """One stage run from static buffers at bucketed batch sizes (see the module docs).

    Args:
        stages: The stages this one belongs to (for the carry's batch dimensions).
        k: Its index, 0-based.
        buckets: Batch sizes to capture at.
        backend: ``cuda`` (CUDA graphs) or ``eager`` (the stage called on the padded buffers).
        pool: A CUDA graph memory pool the stages share (``torch.cuda.graph_pool_handle()``).
        clone_outputs: Copy the sliced outputs out of the static buffers (a later replay
            overwrites them); only a caller that uses each output before the stage runs
            again may turn it off.

    Attributes:
        calls: Calls so far; rows: real rows computed; padded_rows: rows computed in all
        (buckets); eager_calls: calls above the largest bucket, run eagerly.
    """

    def __init__(
        self,
        stages: Stages,
        k: int,
        buckets: Sequence[int],
        backend: Backend,
        pool: Any = None,
        *,
        clone_outputs: bool = True,
    ) -> None:
        super().__init__()
        self.stage = stages.modules[k]
        self._stages = stages
        self.k = k
        self.buckets = tuple(sorted(buckets))
        self.backend = backend
        self._pool = pool
        self.clone_outputs = clone_outputs
        self._slots: dict[tuple[Any, ...], _Slot] = {}
        self.calls = self.rows = self.padded_rows = self.eager_calls = 0
        self.memory_bytes = self.reserved_bytes = 0
        self.capture_s = 0.0

    @property
    def graphs(self) -> int:
        """Buckets (with their input signatures) captured so far."""
        return len(self._slots)

    def forward(self, *values: Any) -> tuple[Any, ...]:
        """Run the stage on ``values`` (``n`` rows): pad to the bucket, replay, slice back to ``n`` rows."""
        dims = input_batch_dims(self._stages, self.k, values)
        n = row_count(values, dims)
        bucket = bucket_for(n, self.buckets)
        self.calls += 1
        self.rows += n
        if bucket is None:
            self.eager_calls += 1
            self.padded_rows += n
            return check_stage_output(self.stage(*values), self.k)
        self.padded_rows += bucket
        key = (bucket, _signature(values, dims))
        slot = self._slots.get(key)
        if slot is None:
            slot = self._capture(values, dims, n, bucket)
            self._slots[key] = slot
        else:
            slot.load(values, n)
        slot.replay()
        out = slot.outputs
        out_dims = output_batch_dims(self._stages, self.k, out)
        return tuple(self._sliced(o, d, n) for o, d in zip(out, out_dims, strict=True))

    def _sliced(self, o: Any, d: int | None, n: int) -> Any:
        if not isinstance(o, torch.Tensor):
            return o
        part = o if d is None else o.narrow(d, 0, n)
        return part.clone() if self.clone_outputs else part

    def _capture(self, values: Sequence[Any], dims: BatchDims, n: int, bucket: int) -> _Slot:
        """Static buffers for ``bucket`` holding ``values``' rows (repeated), and the graph replaying the stage."""
        cuda = self.backend == "cuda"
        if cuda:
            dev = next((v.device for v in values if isinstance(v, torch.Tensor)), torch.device("cpu"))
            if dev.type != "cuda":
                raise ProfileError(
                    f"CUDA graphs need the stages on a CUDA device, but stage {self.k + 1} gets its input on {dev}; "
                    "use `runtime` eager there"
                )
            torch.cuda.synchronize(dev)
            mem0, res0 = torch.cuda.memory_allocated(dev), torch.cuda.memory_reserved(dev)
        t0 = time.perf_counter()
        slot = _Slot(tuple(repeat_rows(v, d, n, bucket) for v, d in zip(values, dims, strict=True)), dims)
        if cuda:
            try:
                slot.outputs, slot.replay = self._cuda_graph(slot.inputs)
            except DyncalError:
                raise
            except Exception as e:  # noqa: BLE001 - capture fails in many ways (host syncs, dynamic shapes)
                raise ProfileError(
                    f"stage {self.k + 1} cannot be captured in a CUDA graph at batch size {bucket} ({describe(e)}); "
                    "use `runtime` eager"
                ) from e
            torch.cuda.synchronize(dev)
            self.memory_bytes += torch.cuda.memory_allocated(dev) - mem0
            self.reserved_bytes += torch.cuda.memory_reserved(dev) - res0
        else:
            slot.outputs = check_stage_output(self.stage(*slot.inputs), self.k)

            def replay() -> None:  # the CPU stand-in: the stage on the padded buffers, into static outputs
                fresh = check_stage_output(self.stage(*slot.inputs), self.k)
                for static, value in zip(slot.outputs, fresh, strict=True):
                    if isinstance(static, torch.Tensor):
                        static.copy_(value)

            slot.replay = replay
        self.capture_s += time.perf_counter() - t0
        log.debug("stage %d captured at batch %d (%s)", self.k + 1, bucket, self.backend)
        return slot

    def _cuda_graph(self, inputs: tuple[Any, ...]) -> tuple[tuple[Any, ...], Callable[[], None]]:
        """Warm up on a side stream (kernels chosen, lazy state built), then capture one call."""
        side = torch.cuda.Stream()  # type: ignore[no-untyped-call]
        side.wait_stream(torch.cuda.current_stream())
        with autotuned(), torch.cuda.stream(side):
            for _ in range(_WARMUP_CALLS):
                self.stage(*inputs)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with autotuned(), torch.cuda.graph(graph, pool=self._pool):
            outputs = check_stage_output(self.stage(*inputs), self.k)
        return outputs, graph.replay


class BucketedStages(Stages):
    """A model's stages, each run from bucketed static buffers (CUDA graphs on a GPU).

    Built by :func:`graph_stages`; a drop-in :class:`~dyncal.analysis.stages.Stages` (the
    carry's batch dimensions, source and row-dropping verdict are the original's).
    """

    def __init__(
        self, stages: Stages, max_batch_size: int, *, backend: Backend = "cuda", clone_outputs: bool = True
    ) -> None:
        if backend not in ("cuda", "eager"):
            raise DyncalError(f"{param('backend')} must be 'cuda' or 'eager', got {backend!r}")
        if not stages.can_drop_rows:
            raise ProfileError(
                f"stages run at bucketed batch sizes pad a batch with other rows, but this model's rows depend on "
                f"each other: {stages.drop_rows_reason}; use `runtime` eager"
            )
        if backend == "cuda" and not torch.cuda.is_available():
            raise ProfileError("`runtime` graphs needs a CUDA device and none is available; use `runtime` eager")
        buckets = bucket_sizes(max_batch_size)
        pool = torch.cuda.graph_pool_handle() if backend == "cuda" else None
        self.buckets = buckets
        self.backend = backend
        modules = [
            BucketedStage(stages, k, buckets, backend, pool, clone_outputs=clone_outputs) for k in range(stages.k)
        ]
        super().__init__(modules, **stages.layout())

    @property
    def bucketed(self) -> list[BucketedStage]:
        """The stage wrappers, ``K``."""
        return [m for m in self.modules if isinstance(m, BucketedStage)]

    def capture(self, example: torch.Tensor) -> CaptureInfo:
        """Capture every stage at every bucket now (at load), from the rows of ``example`` ``(B, ...)``.

        Each bucket's batch is ``example``'s rows repeated to its size, run through every
        stage with no row leaving, so each stage is captured on the carry it will receive.
        Largest buckets first, so the smaller ones reuse the shared memory pool.
        """
        if example.ndim == 0 or example.shape[0] < 1:
            raise DyncalError(f"{param('example')} must hold at least one row, got shape {tuple(example.shape)}")
        with torch.inference_mode():
            for b in sorted(self.buckets, reverse=True):
                x = repeat_rows(example, 0, int(example.shape[0]), b)
                self.run(x)
        return self.info

    @property
    def info(self) -> CaptureInfo:
        """What has been captured so far and the memory it holds."""
        stages = self.bucketed
        return CaptureInfo(
            self.backend,
            self.buckets,
            graphs=sum(m.graphs for m in stages),
            memory_bytes=sum(m.memory_bytes for m in stages),
            reserved_bytes=sum(m.reserved_bytes for m in stages),
            capture_s=sum(m.capture_s for m in stages),
            eager_calls=sum(m.eager_calls for m in stages),
        )


def graph_stages(
    stages: Stages,
    max_batch_size: int,
    *,
    backend: Backend = "cuda",
    example: torch.Tensor | None = None,
    clone_outputs: bool = True,
) -> BucketedStages:
    """``stages`` run from CUDA graphs at bucketed batch sizes up to ``max_batch_size``.

    Args:
        stages: The model's stages (on the device they will run on).
        max_batch_size: The largest batch size that will be run (larger ones run eagerly).
        backend: ``cuda``, or ``eager`` for the CPU stand-in (same buffers, no graph).
        example: When given, capture every bucket now from its rows; else each bucket is
            captured the first time it is needed.
        clone_outputs: See :class:`BucketedStage`.

    Returns:
        The wrapped stages (:attr:`BucketedStages.info` states what they hold).

    Raises:
        ProfileError: The stages cannot drop rows (padding would change real rows), or
            ``backend`` is ``cuda`` without a CUDA device.

    Example:
        >>> from dyncal.analysis.stages import build_stages
        >>> from dyncal.demo import DigitsExitNet
        >>> net = DigitsExitNet().eval()
        >>> stages = build_stages(net, torch.zeros(2, 1, 8, 8))
        >>> padded = graph_stages(stages, 8, backend="eager")
        >>> x = torch.randn(3, 1, 8, 8)
        >>> bool(torch.allclose(padded.run(x)[-1], stages.run(x)[-1], atol=1e-5))
        True
        >>> padded.bucketed[0].padded_rows, padded.bucketed[0].rows    # 3 rows ran as a batch of 4
        (4, 3)
    """
    wrapped = BucketedStages(stages, max_batch_size, backend=backend, clone_outputs=clone_outputs)
    if example is not None:
        wrapped.capture(example)
    return wrapped


def with_runtime(
    runner: R,
    runtime: str,
    *,
    max_batch_size: int,
    example: torch.Tensor | None = None,
    backend: Backend = "cuda",
) -> R:
    """``runner`` under a runtime: itself for ``eager``, a copy on graph-captured stages for ``graphs``.

    Works for any runner holding its stages in ``runner.stages`` (the early exit, the plain
    deployment's runner, a package's runner after it was moved to its device).

    Args:
        runner: The runner.
        runtime: ``eager`` or ``graphs`` (:data:`RUNTIMES`).
        max_batch_size: The largest batch size that will be run.
        example: When given, every bucket is captured now (at load).
        backend: What replays a bucket under ``graphs``: ``cuda``, or ``eager`` (the CPU
            stand-in that ``benchmarks/rebatch_throughput.py --dry`` runs: the same padding
            without a graph).

    Raises:
        DyncalError: Unknown ``runtime``.
        ProfileError: ``graphs`` without a CUDA device or with stages that cannot drop rows.
    """
    if runtime not in ("eager", "graphs"):
        raise DyncalError(f"{param('runtime')} must be one of eager, graphs, got {runtime!r}")
    if runtime == "eager":
        return runner
    return with_stages(
        runner, "graphs", lambda stages: graph_stages(stages, max_batch_size, example=example, backend=backend)
    )


def with_stages(runner: R, runtime: str, build: Callable[[Stages], Stages]) -> R:
    """A copy of ``runner`` (anything holding its stages in ``runner.stages``) on ``build(runner.stages)``.

    Raises:
        DyncalError: ``runner`` holds no stages.
    """
    stages = getattr(runner, "stages", None)
    if not isinstance(stages, Stages):
        raise DyncalError(f"{type(runner).__name__} has no stages to run under `runtime` {runtime}")
    copied = copy.copy(runner)
    copied.stages = build(stages)  # type: ignore[attr-defined]
    return copied
