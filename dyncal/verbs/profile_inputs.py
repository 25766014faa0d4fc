"""What ``dyncal profile`` feeds a model of several inputs: the run's own rows, and sequence-length buckets.

A text model's cost depends on the sequence length, and its token ids are not random
numbers. So for a run that records several inputs (:mod:`dyncal.inputs`):

- every timed or counted batch is made of **real rows of the run's data set**, collated as
  collect collated them (:class:`RunBatches`);
- the **MACs stored in the cost table are averaged over the data's length distribution**:
  the sequence length of up to :data:`LENGTH_ROWS` rows spread over the run is read; one
  row of each length is counted alone (as a batch-1 server sees it) and the counts are
  averaged with the share of rows of that length as weights (:func:`averaged_macs`). A
  model's MACs depend on the length, not on the token values, so this is the data's exact
  mean (up to :data:`MAC_LENGTHS` distinct lengths; beyond, rows are grouped by quantile
  and each group counted at its median length). A budget in MACs (``solve --budget``) is therefore a budget on
  the *expected* cost per request over the data; the cost table's ``model.macs_basis``
  says so and the report prints it;
- ``profile --seq-len 32,128`` also gives MACs and latency **per sequence-length bucket**
  (the same rows padded or cut to each length: :func:`fit_length`), shown and returned,
  not used by solve.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from dyncal.artifacts.run import Run
from dyncal.data import dataset_for_run, run_rows
from dyncal.errors import DyncalError, ProfileError
from dyncal.inputs import Inputs, InputSignature, to_device

__all__ = [
    "LENGTH_ROWS",
    "MAC_LENGTHS",
    "RunBatches",
    "fit_length",
    "averaged_macs",
    "length_groups",
    "macs_basis",
    "LengthBucket",
    "MultiInputProfile",
]

log = logging.getLogger(__name__)

LENGTH_ROWS = 4096
"""Rows of the run whose sequence length is read (spread evenly over the run; all of a smaller run)."""
MAC_LENGTHS = 48
"""Most distinct lengths counted one by one (more are grouped by quantile)."""


class RunBatches:
    """Batches of real rows of a run's data set, collated as collect collated them.

    ``batches(b, device)`` gives ``b`` rows chosen reproducibly from the run (with
    repetition when ``b`` exceeds the run), checked against the run's signature.

    Args:
        run: The run.
        signature: Its inputs (:func:`dyncal.run_model.run_inputs`).
        data: Data spec overriding the run's.
        search_path: Folder of the data factory and collate (``model_path``).
        seed: Which rows.
    """

    def __init__(
        self, run: Run, signature: InputSignature, *, data: str | None, search_path: str | None, seed: int = 0
    ) -> None:
        self.run, self.signature, self.seed, self.search_path = run, signature, seed, search_path
        try:
            self.dataset = dataset_for_run(run, data=data, search_path=search_path)
        except DyncalError as e:
            raise ProfileError(
                f"a model of several inputs is profiled on the run's own rows, but its data set cannot be opened ({e})"
            ) from e

    def rows(self, positions: Sequence[int], device: torch.device | str = "cpu") -> Inputs:
        """The run's rows at ``positions`` (0-based in the run), as one batch on ``device``."""
        x, _ = run_rows(
            self.run, np.asarray(positions, dtype=np.int64), search_path=self.search_path, dataset=self.dataset
        )
        self.signature.check(x, what="the run's data")
        return to_device(x, device)

    def __call__(self, batch_size: int, device: torch.device) -> Inputs:
        """``batch_size`` rows of the run on ``device``."""
        rng = np.random.default_rng(self.seed + batch_size)
        picked = rng.choice(self.run.n, size=batch_size, replace=batch_size > self.run.n)
        return self.rows(picked.tolist(), device)


def fit_length(x: Inputs, signature: InputSignature, length: int) -> Inputs:
    """``x`` with every dynamic dimension padded with 0 or cut to ``length`` (a sequence-length bucket).

    Example:
        >>> sig = InputSignature.of({"ids": torch.ones(1, 3, dtype=torch.int64)}).with_dynamic("ids", [0])
        >>> fit_length({"ids": torch.tensor([[4, 5, 6]])}, sig, 5)["ids"].tolist()
        [[4, 5, 6, 0, 0]]
        >>> fit_length({"ids": torch.tensor([[4, 5, 6]])}, sig, 2)["ids"].tolist()
        [[4, 5]]
    """
    out = []
    for spec, t in zip(signature.inputs, signature.flatten(x), strict=True):
        for d in spec.dynamic:
            dim = d + 1
            if t.shape[dim] < length:
                t = torch.cat([t, t.new_zeros(*t.shape[:dim], length - t.shape[dim], *t.shape[dim + 1 :])], dim=dim)
            t = t.narrow(dim, 0, length)
        out.append(t)
    return signature.unflatten(out)


def averaged_macs(count: Any, samples: Sequence[tuple[Inputs, float]]) -> Any:
    """``count(sample)`` (a :class:`~dyncal.analysis.flops.StageMacs`) over weighted one-row samples, per stage.

    The first sample's count keeps its operators and uncounted ops; its per-stage MACs are
    replaced by the weighted mean over all samples (rounded to whole MACs).
    """
    counts = [count(x) for x, _ in samples]
    mean = np.average([c.stage_macs for c in counts], axis=0, weights=[w for _, w in samples])
    return replace(counts[0], stage_macs=tuple(int(round(float(m))) for m in mean), graph_macs=None, model_macs=None)


def macs_basis(lengths: Sequence[int], counted: int) -> str:
    """What a multi-input run's stored MACs are, in words (the report prints it).

    Example:
        >>> macs_basis([4, 4, 10], 2)  # doctest: +ELLIPSIS
        "MACs per sample averaged over the data's sequence lengths (3 rows ..., mean 6.0; counted at 2 ..."
    """
    if not lengths:
        return f"MACs per sample of {counted} row(s) of the run's data (its inputs have no varying length)"
    return (
        f"MACs per sample averaged over the data's sequence lengths ({len(lengths)} rows of the run read, lengths "
        f"{min(lengths)}..{max(lengths)}, mean {float(np.mean(lengths)):.1f}; counted at {counted} lengths, "
        "weighted by their share); a MAC budget is the expected cost per request"
    )


def length_groups(lengths: Sequence[int], most: int = MAC_LENGTHS) -> list[tuple[int, float]]:
    """``(index of the row to count, weight)`` per group of rows of equal (or, past ``most``, similar) length.

    Example:
        >>> length_groups([7, 3, 7, 7])           # one row of each length, weighted by its share
        [(1, 0.25), (2, 0.75)]
        >>> len(length_groups(list(range(100)), most=4))
        4
    """
    order = np.argsort(np.asarray(lengths), kind="stable")
    values = np.asarray(lengths)[order]
    distinct = np.unique(values)
    if len(distinct) <= most:
        groups = [order[values == v] for v in distinct]
    else:  # quantile groups of equal size, each counted at its median row
        groups = [g for g in np.array_split(order, most) if len(g)]
    return [(int(g[len(g) // 2]), len(g) / len(lengths)) for g in groups]


@dataclass(frozen=True)
class LengthBucket:
    """Cost at one sequence length (``profile --seq-len``).

    Attributes:
        length: The sequence length every dynamic dimension was padded or cut to.
        macs: Cumulative MACs per exit, per sample, at that length.
        latency_ms: ``{"<device>/b<batch>": [median ms of each exit path]}``.
    """

    length: int
    macs: tuple[int, ...]
    latency_ms: dict[str, list[float]]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {"length": self.length, "macs": list(self.macs), "latency_ms": dict(self.latency_ms)}


@dataclass(frozen=True)
class MultiInputProfile:
    """How a run of several inputs is profiled: its batches, the rows its MACs average over, and what that means.

    Attributes:
        batches: Real rows of the run (:class:`RunBatches`).
        samples: One-row batches whose MACs are averaged, each with its weight (:func:`averaged_macs`).
        basis: :func:`macs_basis` of those rows.
    """

    batches: RunBatches
    samples: tuple[tuple[Inputs, float], ...]
    basis: str

    @classmethod
    def of_run(
        cls, run: Run, signature: InputSignature, *, data: str | None, search_path: str | None, seed: int = 0
    ) -> MultiInputProfile:
        """Open the run's data set and pick the rows (raises :class:`ProfileError` when it cannot be read)."""
        batches = RunBatches(run, signature, data=data, search_path=search_path, seed=seed)
        count = min(LENGTH_ROWS if signature.has_dynamic else 1, run.n)  # rows spread evenly over the run
        positions = np.unique(np.linspace(0, run.n - 1, count).round().astype(np.int64))
        try:
            rows = [batches.rows([int(i)]) for i in positions]
        except DyncalError as e:
            raise ProfileError(f"the run's rows cannot be read to profile the model on them ({e})") from e
        lengths = [_length(signature, x) for x in rows]
        known = [n for n in lengths if n is not None]
        if len(known) < len(rows):  # no varying length: one row stands for all
            return cls(batches, ((rows[0], 1.0),), macs_basis([], 1))
        groups = length_groups(known)
        return cls(batches, tuple((rows[i], w) for i, w in groups), macs_basis(known, len(groups)))

    def bucket_batches(self, length: int) -> tuple[Any, tuple[Inputs, ...]]:
        """The batches and MAC samples of the sequence-length bucket ``length``."""
        sig = self.batches.signature

        def batches(batch_size: int, device: torch.device) -> Inputs:
            return fit_length(self.batches(batch_size, device), sig, length)

        return batches, ((fit_length(self.samples[0][0], sig, length), 1.0),)


def _length(signature: InputSignature, x: Inputs) -> int | None:
    """The size of the first dynamic dimension of a one-row batch (its sequence length), or None."""
    for spec, t in zip(signature.inputs, signature.flatten(x), strict=True):
        if spec.dynamic:
            return int(t.shape[spec.dynamic[0] + 1])
    return None
