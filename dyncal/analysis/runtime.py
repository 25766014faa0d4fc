"""How stages run: one place that turns a runtime's name into runnable stages.

``dyncal verify --runtime`` (and anything that times the early exit beside the plain
deployment) applies the same runtime to both, so the comparison is between the same
kind of execution: tuning the plain model is the cheapest alternative a team has to early
exit, and the early exit must beat the tuned plain model too, not only the eager one.

``eager``
    The stages as modules, called from Python (the default on a CPU).
``frozen``
    Each stage traced (:func:`torch.jit.trace`) on the carry it receives from an example
    batch, frozen (:func:`torch.jit.freeze`: weights folded in as constants) and optimised
    for inference (:func:`torch.jit.optimize_for_inference`: conv-batchnorm folding, fused
    ops). A trace runs the ops it saw: a stage whose ops depend on its input's values or
    batch size would be wrong, so the frozen stages are checked against the eager ones at
    batch 1 and at the example's batch size before use.
``compiled``
    Each stage compiled by :func:`torch.compile` with dynamic shapes (inductor; on a CPU it
    needs a C++ compiler), warmed and checked the same way. The first calls at a new shape
    compile, so warm-up must precede timing (verify warms each batch size).
``graphs``
    CUDA graphs at bucketed batch sizes (:func:`dyncal.analysis.graphs.with_runtime`).

Every runtime keeps the stage protocol (:mod:`dyncal.analysis.stages`), the carry's
batch dimensions and the row-dropping verdict, so
:class:`~dyncal.analysis.early_exit.EarlyExitRunner`, the plain deployment's runner and a
package's runner run on them unchanged, and the exits stay those of the eager stages.

Example:
    >>> import torch
    >>> from dyncal.analysis.early_exit import EarlyExitRunner
    >>> from dyncal.analysis.stages import build_stages
    >>> from dyncal.demo import pretrained
    >>> runner = EarlyExitRunner(build_stages(pretrained(), torch.zeros(2, 1, 8, 8)), [0.9, 0.9, 0.9, None], [1.0] * 4)
    >>> x = torch.randn(6, 1, 8, 8)
    >>> frozen = apply_runtime(runner, "frozen", example=x[:3], max_batch_size=6)
    >>> [torch.equal(a, b) for a, b in zip(frozen(x), runner(x))]
    [True, True]
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from typing import Any, TypeVar, cast

import torch
from torch import nn

from dyncal.analysis.flops import stage_inputs
from dyncal.analysis.graphs import RUNTIMES, repeat_rows, with_runtime, with_stages
from dyncal.analysis.stages import Stages
from dyncal.errors import DyncalError, ProfileError, describe, param

__all__ = ["RUNTIMES", "apply_runtime", "runtime_stages"]

log = logging.getLogger(__name__)

_ATOL = _RTOL = 1e-4  # a rebuilt stage may reorder float sums; exits are then checked by verify's agreement

R = TypeVar("R")


def _frozen(module: nn.Module, inputs: tuple[Any, ...]) -> nn.Module:
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings: the check below is what decides
        traced = torch.jit.trace(module.eval(), inputs, check_trace=False, strict=False)  # type: ignore[no-untyped-call]
        return torch.jit.optimize_for_inference(torch.jit.freeze(traced.eval()))


def _compiled(module: nn.Module, inputs: tuple[Any, ...]) -> nn.Module:
    return cast(nn.Module, torch.compile(module, dynamic=True))  # a module compiles to an OptimizedModule


_BUILDERS: dict[str, Callable[[nn.Module, tuple[Any, ...]], nn.Module]] = {"frozen": _frozen, "compiled": _compiled}


def _check(eager: Stages, built: Stages, example: torch.Tensor, runtime: str) -> None:
    """Every exit of ``built`` equals ``eager``'s at batch 1 and at the example's batch size (+1)."""
    for n in sorted({1, int(example.shape[0]), int(example.shape[0]) + 1}):
        x = repeat_rows(example, 0, int(example.shape[0]), n)  # its rows, repeated when it has fewer
        with torch.inference_mode():
            want = eager.run(x)
            try:
                got = built.run(x)
            except Exception as e:  # noqa: BLE001 - whatever the rebuilt stages raise
                raise ProfileError(
                    f"the stages under `runtime` {runtime} fail at batch size {n} ({describe(e)}); use `runtime` eager"
                ) from e
        for k, (a, b) in enumerate(zip(want, got, strict=True)):
            if a.shape != b.shape or not torch.allclose(a.float(), b.float(), atol=_ATOL, rtol=_RTOL):
                raise ProfileError(
                    f"the stages under `runtime` {runtime} do not reproduce exit {k + 1} at batch size {n} (the "
                    "stage's ops depend on its input's size or values); use `runtime` eager"
                )


def runtime_stages(stages: Stages, runtime: str, *, example: torch.Tensor) -> Stages:
    """``stages`` rebuilt under ``frozen`` or ``compiled`` (``eager``: ``stages`` itself), checked on ``example``.

    Args:
        stages: The stages (on the device they will run on).
        runtime: ``eager``, ``frozen`` or ``compiled``.
        example: An input batch ``(B, ...)`` on that device: what is traced, warmed and checked.

    Raises:
        DyncalError: Unknown ``runtime`` (``graphs`` is applied to a runner: :func:`apply_runtime`).
        ProfileError: The stages cannot be built under it, or do not reproduce the eager exits.
    """
    if runtime == "eager":
        return stages
    build = _BUILDERS.get(runtime)
    if build is None:
        raise DyncalError(f"{param('runtime')} must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
    if example.ndim == 0 or example.shape[0] < 1:
        raise DyncalError(f"{param('example')} must hold at least one row, got shape {tuple(example.shape)}")
    try:
        modules = [build(m, c) for m, c in zip(stages.modules, stage_inputs(stages, example), strict=True)]
    except ProfileError:
        raise
    except Exception as e:  # noqa: BLE001 - tracing and compiling raise many types
        log.debug("runtime %s failed", runtime, exc_info=True)
        raise ProfileError(
            f"the stages cannot run under `runtime` {runtime} ({describe(e)}); use `runtime` eager"
        ) from e
    built = Stages(modules, **stages.layout())
    _check(stages, built, example, runtime)
    return built


def apply_runtime(runner: R, runtime: str, *, example: torch.Tensor, max_batch_size: int) -> R:
    """``runner`` under ``runtime``: itself for ``eager``, else a copy on rebuilt stages.

    Works for any runner holding its stages in ``runner.stages`` (the early exit, the plain
    deployment's runner, a package's runner on its device). Apply the same runtime to the
    early exit and to the plain deployment it is compared with.

    Args:
        runner: The runner.
        runtime: One of :data:`RUNTIMES`.
        example: An input batch ``(B, ...)`` on the runner's device (traced, captured, checked).
        max_batch_size: The largest batch size that will be run (``graphs``' buckets).

    Raises:
        DyncalError: Unknown ``runtime``, or a runner without stages.
        ProfileError: The stages cannot run under ``runtime``.
    """
    if runtime not in RUNTIMES:
        raise DyncalError(f"{param('runtime')} must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
    if runtime == "eager":
        return runner
    if runtime == "graphs":
        return with_runtime(runner, "graphs", max_batch_size=max_batch_size, example=example)
    return with_stages(runner, runtime, lambda stages: runtime_stages(stages, runtime, example=example))
