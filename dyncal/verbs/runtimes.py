"""The ``--runtime`` of verify, profile and export: which runtime runs the stages, and what it does there.

:func:`~dyncal.analysis.graphs.select_runtime` picks the runtime (``eager``, or ``graphs``
on CUDA only: per-stage CUDA graphs at bucketed batch sizes, :mod:`dyncal.analysis.graphs`)
and refuses ``graphs`` without CUDA in one line. Here the verbs apply it:

* :func:`plain_for` is the plain deployment verify times throughput against;
* :func:`under_runtime` puts verify's early exit and its plain model under the runtime, the
  same for both, and says what each ran under;
* :func:`prove_package_graphs` checks that an exported package replays under graphs on the
  GPU exactly as it runs eagerly (export ``--runtime graphs``).

Example:
    >>> import torch
    >>> from dyncal.analysis.early_exit import EarlyExitRunner
    >>> from dyncal.analysis.stages import build_stages
    >>> from dyncal.demo import pretrained
    >>> runner = EarlyExitRunner(build_stages(pretrained(), torch.zeros(2, 1, 8, 8)), [0.9] * 3 + [None], [1.0] * 4)
    >>> same, plain, said = under_runtime(runner, pretrained(), "eager", max_batch_size=32)
    >>> same is runner, said["plain"]
    (True, 'eager (the whole model, every head)')
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from dyncal.analysis.early_exit import EarlyExitRunner
from dyncal.analysis.graphs import with_runtime
from dyncal.analysis.plain import plain_deployment, plain_runner
from dyncal.analysis.stages import example_input
from dyncal.errors import ProfileError

__all__ = ["plain_for", "under_runtime", "prove_package_graphs", "GRAPHS_CHECK_BATCHES"]

GRAPHS_CHECK_BATCHES = (1, 3, 4)
"""Batch sizes export ``--runtime graphs`` replays the package at (3 is padded to the bucket of 4)."""


def plain_for(
    runner: EarlyExitRunner, model: Callable[[torch.Tensor], Any], example: torch.Tensor | None
) -> tuple[EarlyExitRunner, str, torch.nn.Module | None]:
    """The plain deployment of ``runner``'s model as a runner (eager), what it is, and its module to count MACs.

    Cut from the stages' graph or the model (:func:`~dyncal.analysis.plain.plain_deployment`);
    a package holds its stages only, so there it is every stage with nobody leaving (no
    module to count: its MACs are the last exit's).
    """
    if runner.stages.whole is None and not isinstance(model, torch.nn.Module):
        every = EarlyExitRunner(runner.stages, [float("inf")] * (runner.k - 1) + [None], runner.temperatures)
        return every, "every stage and head, nobody leaving (the package holds no plain deployment)", None
    module = model if isinstance(model, torch.nn.Module) else None
    plain = plain_deployment(runner.stages, model=module, example=example)
    return plain_runner(plain), "plain deployment: backbone and last head", plain.modules[0]


def under_runtime(
    runner: EarlyExitRunner,
    model: Callable[[torch.Tensor], Any],
    runtime: str,
    *,
    max_batch_size: int,
    example: torch.Tensor | None = None,
) -> tuple[EarlyExitRunner, Callable[[torch.Tensor], Any], dict[str, str]]:
    """The early exit and the plain model under ``runtime``, and what each ran under.

    Under ``eager`` both are as given (the plain model is the model itself). Under ``graphs``
    the early exit's stages replay CUDA graphs, and so does the plain deployment
    (:func:`plain_for`): a plain model left eager would make a speed-up over a slower
    baseline than the one a team would deploy.

    Args:
        runner: The early exit (eager).
        model: The plain model verify times it against (the model's module, or a package's
            ``full_model``).
        runtime: ``eager`` or ``graphs`` (as :func:`~dyncal.analysis.graphs.select_runtime` chose).
        max_batch_size: The largest batch size that will run (the largest bucket).
        example: An input batch: the plain deployment is exported on it when it cannot be
            cut from the stages' graph.

    Returns:
        ``(early exit, plain model, {"runtime", "early_exit", "plain"})``.

    Raises:
        ProfileError: ``graphs`` and the stages cannot drop rows or be captured, or no
            plain deployment can be cut from the model.
    """
    if runtime == "eager":
        said = {"runtime": runtime, "early_exit": "eager", "plain": "eager (the whole model, every head)"}
        return runner, model, said
    graphed = with_runtime(runner, runtime, max_batch_size=max_batch_size)
    plain, what, _ = plain_for(runner, model, example)
    plain_graphed = with_runtime(plain, runtime, max_batch_size=max_batch_size)
    return graphed, plain_graphed, {"runtime": runtime, "early_exit": runtime, "plain": f"{runtime} ({what})"}


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
