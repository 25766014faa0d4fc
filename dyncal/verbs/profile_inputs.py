"""What ``dyncal profile`` feeds a model of several inputs: the run's own rows, and sequence-length buckets.

A text model's cost depends on the sequence length, and its token ids are not random
numbers. So for a run that records several inputs (:mod:`dyncal.inputs`):

- every timed or counted batch is made of **real rows of the run's data set**, collated as
  collect collated them (:class:`RunBatches`);
- the **MACs stored in the cost table are averaged over the data's length distribution**:
  each of up to :data:`MAC_ROWS` rows spread over the run is counted alone, at its own
  length (as a batch-1 server sees it), and the per-exit counts are averaged
  (:func:`averaged_macs`). A budget in MACs (``solve --budget``) is therefore a budget on
  the *expected* cost per request over the data; the cost table's ``model.macs_basis``
  says so and the report prints it;
- ``profile --seq-len 32,128`` also gives MACs and latency **per sequence-length bucket**
  (the same rows padded or cut to each length: :func:`fit_length`), shown and returned,
  not used by solve.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from dyncal.artifacts.run import Run
from dyncal.errors import DyncalError, ProfileError
from dyncal.inputs import Inputs, InputSignature, to_device

__all__ = [
    "MAC_ROWS",
    "RunBatches",
    "fit_length",
    "averaged_macs",
    "macs_basis",
    "LengthBucket",
    "MultiInputProfile",
]

log = logging.getLogger(__name__)

MAC_ROWS = 16
"""Rows of the run whose MACs are counted one by one and averaged (spread evenly over the run)."""


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
        from dyncal.data import dataset_for_run

        self.run, self.signature, self.seed, self.search_path = run, signature, seed, search_path
        try:
            self.dataset = dataset_for_run(run, data=data, search_path=search_path)
        except DyncalError as e:
            raise ProfileError(
                f"a model of several inputs is profiled on the run's own rows, but its data set cannot be opened ({e})"
            ) from e

    def rows(self, positions: Sequence[int], device: torch.device | str = "cpu") -> Inputs:
        """The run's rows at ``positions`` (0-based in the run), as one batch on ``device``."""
        from dyncal.data import run_rows

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

    def spread(self, count: int) -> list[int]:
        """Up to ``count`` row positions spread evenly over the run."""
        spread = np.unique(np.linspace(0, self.run.n - 1, min(count, self.run.n)).round().astype(np.int64))
        return [int(v) for v in spread]


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
            if t.shape[dim] >= length:
                t = t.narrow(dim, 0, length)
            else:
                pad = list(t.shape)
                pad[dim] = length - t.shape[dim]
                t = torch.cat([t, torch.zeros(pad, dtype=t.dtype, device=t.device)], dim=dim)
        out.append(t)
    return signature.unflatten(out)


def averaged_macs(count: Any, samples: Sequence[Inputs]) -> Any:
    """``count(sample)`` (a :class:`~dyncal.analysis.flops.StageMacs`) over one-row samples, per stage averaged.

    The first sample's count keeps its operators and uncounted ops; its per-stage MACs are
    replaced by the mean over all samples (rounded to whole MACs).
    """
    from dataclasses import replace

    counts = [count(x) for x in samples]
    mean = np.mean([c.stage_macs for c in counts], axis=0)
    return replace(counts[0], stage_macs=tuple(int(round(float(m))) for m in mean), graph_macs=None, model_macs=None)


def macs_basis(lengths: Sequence[int], rows: int) -> str:
    """What a multi-input run's stored MACs are, in words (the report prints it)."""
    if not lengths:
        return f"MACs per sample averaged over {rows} rows of the run's data"
    return (
        f"MACs per sample averaged over the data's sequence lengths ({rows} rows of the run, lengths "
        f"{min(lengths)}..{max(lengths)}, mean {float(np.mean(lengths)):.1f}); a MAC budget is the expected "
        "cost per request"
    )


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
        samples: One-row batches whose MACs are averaged (:func:`averaged_macs`).
        basis: :func:`macs_basis` of those rows.
    """

    batches: RunBatches
    samples: tuple[Inputs, ...]
    basis: str

    @classmethod
    def of_run(
        cls, run: Run, signature: InputSignature, *, data: str | None, search_path: str | None, seed: int = 0
    ) -> MultiInputProfile:
        """Open the run's data set and pick the rows (raises :class:`ProfileError` when it cannot be read)."""
        batches = RunBatches(run, signature, data=data, search_path=search_path, seed=seed)
        try:
            samples = tuple(batches.rows([i]) for i in batches.spread(MAC_ROWS))
        except DyncalError as e:
            raise ProfileError(f"the run's rows cannot be read to profile the model on them ({e})") from e
        lengths = [_length(signature, x) for x in samples]
        known = [n for n in lengths if n is not None]
        return cls(batches, samples, macs_basis(known, len(samples)))

    def bucket_batches(self, length: int) -> tuple[Any, tuple[Inputs, ...]]:
        """The batches and MAC samples of the sequence-length bucket ``length``."""
        sig = self.batches.signature

        def batches(batch_size: int, device: torch.device) -> Inputs:
            return fit_length(self.batches(batch_size, device), sig, length)

        return batches, (fit_length(self.samples[0], sig, length),)


def _length(signature: InputSignature, x: Inputs) -> int | None:
    """The size of the first dynamic dimension of a one-row batch (its sequence length), or None."""
    for spec, t in zip(signature.inputs, signature.flatten(x), strict=True):
        if spec.dynamic:
            return int(t.shape[spec.dynamic[0] + 1])
    return None
