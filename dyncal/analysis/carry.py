"""Rows of a stage's carry: find the batch dimension of each value, cut, join, pad and slice rows.

A stage receives a tuple of values (:mod:`dyncal.analysis.stages`): the input for stage 1,
the previous stage's carry after that. Each value has a batch dimension or none (weights
computed once, constants). The helpers here treat such a tuple as ``n`` rows, whatever
dimension the rows live on, so the early exit (:mod:`dyncal.analysis.early_exit`), the
re-batching throughput mode (:mod:`dyncal.analysis.rebatch`) and the bucketed CUDA graphs
(:mod:`dyncal.analysis.graphs`) move rows the same way.

Example:
    >>> import torch
    >>> a, b = (torch.arange(6).reshape(3, 2), torch.ones(2)), (torch.zeros(1, 2), torch.ones(2))
    >>> joined = cat_rows([a, b], (0, None))
    >>> tuple(joined[0].shape), tuple(joined[1].shape)   # the batch-less value is shared
    ((4, 2), (2,))
    >>> leave_idx, stay_idx = split_rows(torch.tensor([True, False, True, False]), 2)
    >>> leave_idx.tolist(), stay_idx.tolist()
    ([0, 2], [1, 3])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from dyncal.analysis.stages import Stages
from dyncal.errors import ProfileError

__all__ = [
    "BatchDims",
    "input_batch_dims",
    "output_batch_dims",
    "row_count",
    "take_rows",
    "narrow_rows",
    "cat_rows",
    "split_rows",
    "check_stage_output",
]

BatchDims = tuple[int | None, ...]
"""The batch dimension of each value of a carry (None: the value has no rows)."""


def _batch_major(values: Sequence[Any]) -> BatchDims:
    return tuple(0 if isinstance(v, torch.Tensor) and v.ndim > 0 else None for v in values)


def input_batch_dims(stages: Stages, k: int, values: Sequence[Any]) -> BatchDims:
    """The batch dimension of each value stage ``k`` (0-based) receives.

    Stage 0 receives the inputs (rows on dimension 0 of each); later stages receive the carry, whose
    dimensions the exported graph records (:attr:`Stages.batch_dims`); hand-declared stages
    carry batch-major tensors.

    Example:
        >>> from dyncal.analysis.stages import build_stages
        >>> from dyncal.demo import DigitsExitNet
        >>> stages = build_stages(DigitsExitNet().eval(), torch.zeros(2, 1, 8, 8))
        >>> input_batch_dims(stages, 1, stages.start(torch.zeros(2, 1, 8, 8)).carry)
        (0,)
    """
    if k == 0 or stages.batch_dims is None:  # the inputs, or hand-declared stages: each batch-major
        return _batch_major(values)
    dims = stages.batch_dims[k - 1]
    if len(dims) != len(values):
        raise ProfileError(f"stage {k + 1} receives {len(values)} values but its stages record {len(dims)} batch dims")
    return dims


def output_batch_dims(stages: Stages, k: int, out: Sequence[Any]) -> BatchDims:
    """The batch dimension of each value stage ``k`` returns: its logits' (0), then its carry's."""
    if k == stages.k - 1:
        return (0,) + (None,) * (len(out) - 1)
    return (0,) + input_batch_dims(stages, k + 1, out[1:])


def row_count(values: Sequence[Any], dims: BatchDims) -> int:
    """The number of rows of a carry (from its first value that has a batch dimension).

    Raises:
        ProfileError: No value has a batch dimension.
    """
    for v, d in zip(values, dims, strict=True):
        if d is not None:
            return int(v.shape[d])
    raise ProfileError("a stage receives no value with a batch dimension, so its rows cannot be counted")


def take_rows(values: Sequence[Any], dims: BatchDims, rows: torch.Tensor) -> tuple[Any, ...]:
    """The carry cut to ``rows`` (indices or a bool mask) along each value's batch dimension."""
    return tuple(v if d is None else v[(slice(None),) * d + (rows,)] for v, d in zip(values, dims, strict=True))


def narrow_rows(values: Sequence[Any], dims: BatchDims, start: int, length: int) -> tuple[Any, ...]:
    """Rows ``start .. start + length - 1`` of the carry (views, no copy)."""
    return tuple(v if d is None else v.narrow(d, start, length) for v, d in zip(values, dims, strict=True))


def cat_rows(parts: Sequence[Sequence[Any]], dims: BatchDims) -> tuple[Any, ...]:
    """Carries joined row-wise, in order; a value without rows is taken from the first part.

    A value without a batch dimension is the same for every batch (weights computed once,
    constants), so one copy serves the joined rows.
    """
    if len(parts) == 1:
        return tuple(parts[0])
    return tuple(parts[0][j] if d is None else torch.cat([p[j] for p in parts], dim=d) for j, d in enumerate(dims))


def split_rows(leave: torch.Tensor, n_leave: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of the rows that leave and of those that stay, each in row order.

    ``n_leave`` (``leave.sum()``, already read by the exit decision) lets the split run on
    the device without another host synchronisation: a stable sort puts the staying rows
    first, and the count says where the leaving ones start (``nonzero`` would wait for the
    device twice more).
    """
    order = torch.sort(leave.to(torch.uint8), stable=True).indices
    n_stay = int(leave.shape[0]) - n_leave
    return order[n_stay:], order[:n_stay]


def check_stage_output(out: Any, k: int) -> tuple[Any, ...]:
    """A stage's output as a tuple ``(logits, *carry)``; anything else is an error naming the stage."""
    if not isinstance(out, (tuple, list)) or not out:
        raise ProfileError(f"stage {k + 1} returned {type(out).__name__}; a stage must return a tuple (logits, *carry)")
    return tuple(out)
