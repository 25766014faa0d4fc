"""The plain deployment: what would be deployed without early exit, for a fair comparison.

Without early exit a multi-exit model is deployed as its backbone and its last head: no
intermediate head runs, no exit is decided. That is the baseline an early exit must beat,
so it must be timed as it would run: :func:`plain_deployment` builds it as one stage
(``K = 1``, :mod:`dyncal.analysis.stages`'s protocol: ``stage(x) -> (logits,)``), so the
runtime that runs the early exit (eager, or bucketed CUDA graphs, :mod:`dyncal.analysis.graphs`)
runs it the same way; :func:`plain_runner` wraps it in the runner the early exit uses.

Where it comes from, first match wins:

1. exported stages: their unsplit graph (:attr:`Stages.whole`) cut down to the ancestors
   of the last exit's output, so every op of an intermediate head (and anything else only
   an earlier exit needs) is gone;
2. a model method ``dyncal_plain()`` (:data:`PLAIN_METHOD`) returning a module
   ``x -> logits of the last exit``, for models whose stages are declared by hand;
3. the model exported with :func:`torch.export.export` on ``example`` and cut the same way.

Example:
    >>> import torch
    >>> from dyncal.analysis.stages import build_stages
    >>> from dyncal.demo import DigitsExitNet
    >>> net = DigitsExitNet().eval()
    >>> plain = plain_deployment(build_stages(net, torch.zeros(2, 1, 8, 8)))
    >>> plain.k, plain.source
    (1, 'plain')
    >>> x = torch.randn(3, 1, 8, 8)
    >>> bool(torch.allclose(plain.run(x)[0], net(x)[-1], atol=1e-5))
    True
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
from torch import fx, nn

from dyncal.analysis.early_exit import EarlyExitRunner
from dyncal.analysis.stages import Stages
from dyncal.errors import ProfileError, describe, user_call

__all__ = ["PLAIN_METHOD", "plain_deployment", "plain_runner", "last_exit_graph", "cut_outputs"]

log = logging.getLogger(__name__)

PLAIN_METHOD = "dyncal_plain"
"""Name of the optional model method returning its plain deployment (``x -> last exit's logits``)."""


class _AsStage(nn.Module):
    """A module ``x -> logits`` as a one-stage model: ``x -> (logits,)``."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.plain = module

    def forward(self, *x: torch.Tensor) -> tuple[torch.Tensor]:
        out = self.plain(*x)
        if isinstance(out, (tuple, list)) and len(out) == 1:
            out = out[0]
        if not isinstance(out, torch.Tensor):
            raise ProfileError(
                f"{PLAIN_METHOD}() must return a module giving the last exit's logits (B, C); it gave "
                f"{type(out).__name__}"
            )
        return (out,)


def last_exit_graph(gm: fx.GraphModule) -> fx.GraphModule:
    """``gm`` cut down to what its last output needs, returning ``(last_output,)``.

    Every op that is not an ancestor of the last output (an earlier exit's head, export's
    input checks) is left out; placeholders stay, so the signature does not change.

    Raises:
        ProfileError: The graph has no output.
    """
    return cut_outputs(gm, [-1], "PlainDeployment")


def cut_outputs(gm: fx.GraphModule, keep: Sequence[int], name: str = "CutGraph") -> fx.GraphModule:
    """``gm`` returning only its (flat) outputs ``keep``, as a tuple, every op they do not need left out.

    Placeholders stay, so the signature does not change. A package's stage cut to its carry
    (``keep`` = 1, 2, ...) computes no head (:meth:`dyncal.analysis.package_runner.PackageRunner.plain_model`).

    Raises:
        ProfileError: An output asked for is missing or not computed from the inputs.
    """
    out_node = next((n for n in gm.graph.nodes if n.op == "output"), None)
    flat = [] if out_node is None else out_node.args[0]
    flat = list(flat) if isinstance(flat, (tuple, list)) else [flat]
    try:
        picked = [flat[i] for i in keep]
    except IndexError:
        picked = []
    if not picked or not all(isinstance(n, fx.Node) for n in picked):
        raise ProfileError("the model's graph has no output computed from its input; it has no last exit to deploy")
    needed: set[fx.Node] = set()
    todo = list(picked)
    while todo:
        n = todo.pop()
        if n not in needed:
            needed.add(n)
            todo.extend(n.all_input_nodes)
    g = fx.Graph()
    env: dict[fx.Node, Any] = {}
    for n in gm.graph.nodes:
        if n.op == "placeholder" or n in needed:
            env[n] = g.node_copy(n, env.__getitem__)
    g.output(tuple(env[n] for n in picked))
    g.lint()
    cut = fx.GraphModule(gm, g, class_name=name)
    cut.eval()
    return cut


def _exported_graph(model: nn.Module, example: torch.Tensor) -> fx.GraphModule:
    """The model's graph from ``torch.export`` (batch dynamic when the model allows)."""
    from torch.export import Dim

    try:
        program = torch.export.export(model, (example,), dynamic_shapes=({0: Dim.AUTO},), strict=False)
    except Exception as e:  # noqa: BLE001 - export raises many types for unsupported models
        log.debug("torch.export failed", exc_info=True)
        raise ProfileError(
            f"the plain deployment needs the model's graph, but torch.export cannot capture "
            f"{type(model).__name__} ({describe(e)}); give the model a '{PLAIN_METHOD}()' method returning "
            "a module x -> logits of the last exit"
        ) from e
    return program.module()


def plain_deployment(
    stages: Stages | None = None, *, model: nn.Module | None = None, example: torch.Tensor | None = None
) -> Stages:
    """The plain deployment (backbone and last head only) as one stage.

    Args:
        stages: The model's stages; exported ones carry the graph the plain deployment is
            cut from.
        model: The multi-exit model, for stages declared by hand: its ``dyncal_plain()``
            method, or else its exported graph, gives the plain deployment.
        example: An input batch ``(B, ...)`` to export ``model`` on (B >= 2 keeps the batch
            dynamic); needed only when the model is exported here.

    Returns:
        :class:`Stages` with one stage ``x -> (logits of the last exit,)``, ``source="plain"``.

    Raises:
        ProfileError: Nothing to build it from (hand-declared stages and no model, or a model
            that export cannot capture and that has no ``dyncal_plain()``).
    """
    if stages is not None and stages.whole is not None and isinstance(stages.whole, fx.GraphModule):
        module: nn.Module = last_exit_graph(stages.whole)
    elif model is not None and callable(getattr(model, PLAIN_METHOD, None)):
        name = f"{type(model).__name__}.{PLAIN_METHOD}()"
        got: Any = user_call(getattr(model, PLAIN_METHOD), f"{name} failed", ProfileError)
        if not isinstance(got, nn.Module):
            raise ProfileError(
                f"{name} must return an nn.Module (x -> logits of the last exit); got {type(got).__name__}"
            )
        module = _AsStage(got.eval())
    elif model is not None and example is not None:
        module = last_exit_graph(_exported_graph(model, example))
    else:
        raise ProfileError(
            "the plain deployment is cut from the model's exported graph, and the stages were declared by hand; "
            f"pass the model (with an example batch), or give it a '{PLAIN_METHOD}()' method"
        )
    dynamic = True if stages is None else stages.dynamic_batch
    return Stages(
        [module],
        batch_dims=[()],
        source="plain",
        dynamic_batch=dynamic,
        example_batch_size=None if stages is None else stages.example_batch_size,
        inputs=None if stages is None else stages.inputs,
    )


def plain_runner(plain: Stages, score: str = "maxprob") -> EarlyExitRunner:
    """The runner of a plain deployment: ``runner(x) -> (exits, predictions)``, every exit 0.

    It is the early exit's own runner on one stage (nobody leaves early, no exit decision),
    so both are called, timed and wrapped by a runtime the same way.

    Example:
        >>> from dyncal.analysis.stages import build_stages
        >>> from dyncal.demo import DigitsExitNet
        >>> plain = plain_deployment(build_stages(DigitsExitNet().eval(), torch.zeros(2, 1, 8, 8)))
        >>> exits, preds = plain_runner(plain)(torch.zeros(3, 1, 8, 8))
        >>> exits.tolist(), tuple(preds.shape)
        ([0, 0, 0], (3,))
    """
    if plain.k != 1:
        raise ProfileError(f"a plain deployment has one stage; these stages have K={plain.k} (use plain_deployment)")
    return EarlyExitRunner(plain, [None], [1.0], score)
