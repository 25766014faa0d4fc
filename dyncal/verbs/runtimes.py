"""export ``--runtime graphs``: the proof that an exported package replays from CUDA graphs as it runs eagerly.

:func:`~dyncal.analysis.graphs.select_runtime` picks the runtime (``eager``, or ``graphs``
on CUDA only: per-stage CUDA graphs at bucketed batch sizes, :mod:`dyncal.analysis.graphs`)
and refuses ``graphs`` without CUDA in one line; verify puts its early exit and the plain
deployment under it with :func:`dyncal.analysis.runtime.apply_runtime`. Here
:func:`prove_package_graphs` checks that an exported package gives the same answers under
graphs on the GPU as eagerly.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from dyncal.analysis.graphs import with_runtime
from dyncal.analysis.stages import example_input
from dyncal.errors import ProfileError

__all__ = ["prove_package_graphs", "GRAPHS_CHECK_BATCHES"]

GRAPHS_CHECK_BATCHES = (1, 3, 4)
"""Batch sizes export ``--runtime graphs`` replays the package at (3 is padded to the bucket of 4)."""


def prove_package_graphs(path: Path, shape: Sequence[int], dtype: torch.dtype) -> dict[str, Any]:
    """Load the package at ``path`` on the GPU and check it gives the same exits and predictions under graphs.

    The package's own thresholds decide who leaves; the eager and the graph-replayed runner
    must answer every row alike at each of :data:`GRAPHS_CHECK_BATCHES` (a padded bucket
    included).

    Raises:
        ProfileError: The stages cannot be captured, or the answers differ.
    """
    from dyncal.analysis.package_runner import open_package

    eager = open_package(path, "cuda")
    graphed = with_runtime(eager, "graphs", max_batch_size=max(GRAPHS_CHECK_BATCHES))
    for b in GRAPHS_CHECK_BATCHES:
        x = example_input(shape, dtype, b, seed=2, device=eager.device)
        e0, p0 = eager(x)
        e1, p1 = graphed(x)
        if not (torch.equal(e0, e1) and torch.equal(p0, p1)):
            raise ProfileError(
                f"the package answers differently under `runtime` graphs at batch size {b} than eagerly; "
                "export with `runtime` eager"
            )
    info = graphed.stages.info.to_dict()  # type: ignore[attr-defined]
    return {"runtime": "graphs", "batch_sizes": list(GRAPHS_CHECK_BATCHES), "capture": info}
