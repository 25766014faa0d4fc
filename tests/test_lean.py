"""Lean stage calls (dyncal.analysis.lean): the same outputs, bit for bit, as calling the module; hooks still run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import fx

import dyncal
from dyncal.analysis.lean import caller, lean_function, plain_call
from dyncal.analysis.stages import build_stages
from dyncal.demo import pretrained

pytestmark = pytest.mark.integration

SIZES = (1, 3, 17)


@pytest.fixture(scope="module")
def demo_stages() -> Any:
    """The demo's stages from build_stages (what dyncal verify runs), read only."""
    return build_stages(pretrained().eval(), torch.zeros(2, 1, 8, 8))


def _equal(a: Any, b: Any) -> bool:
    a, b = list(a), list(b)
    return len(a) == len(b) and all(torch.equal(p, q) and p.dtype == q.dtype for p, q in zip(a, b, strict=True))


@pytest.mark.parametrize("b", SIZES)
def test_package_stages_give_exactly_what_their_programs_module_gives(demo_package: dict[str, Any], b: int) -> None:
    runner = dyncal.load_early_exit(demo_package["pkg"])
    carry: tuple[Any, ...] = (torch.randn(b, 1, 8, 8, generator=torch.Generator().manual_seed(b)),)
    with torch.inference_mode():
        for stage, program in zip(runner.stages.modules, runner._programs, strict=True):
            assert stage._lean is not None  # the fast path is what runs
            got = stage(*carry)
            assert _equal(got, program.module()(*carry))
            carry = tuple(got[1:])
        plain = runner.plain_model(carry_input := torch.randn(b, 1, 8, 8))
        assert torch.equal(plain, runner.full_model(carry_input)[-1])
    assert runner.stage_calls == [2] * 4 and runner.stage_rows == [2 * b] * 4  # the fast path counts too


@pytest.mark.parametrize("b", SIZES)
def test_graph_stages_give_exactly_what_their_modules_give(demo_stages: Any, b: int) -> None:
    stages = demo_stages
    assert all(c is not m for c, m in zip(stages.callers, stages.modules, strict=True))  # every stage runs lean
    carry: tuple[Any, ...] = (torch.randn(b, 1, 8, 8),)
    with torch.inference_mode():
        for fast, module in zip(stages.callers, stages.modules, strict=True):
            got = fast(*carry)
            assert _equal(got, module(*carry))
            carry = tuple(got[1:])


@pytest.mark.parametrize("kind", ["dict", "tuple"])
def test_text_stages_of_two_inputs_give_exactly_what_their_modules_give(kind: str) -> None:
    import text_models

    from dyncal.inputs import InputSignature, pad_collate

    data = text_models.TextData(kind)
    a, _ = pad_collate([data[i] for i in range(4)])
    stages = build_stages(text_models.model(), a, signature=InputSignature.of(a))
    for b in (1, 5):
        x, _ = pad_collate([data[i] for i in range(4, 4 + b)])
        carry = stages.flat_inputs(x)
        with torch.inference_mode():
            for fast, module in zip(stages.callers, stages.modules, strict=True):
                assert fast is not module
                got = fast(*carry)
                assert _equal(got, module(*carry))
                carry = tuple(got[1:])


def test_a_hook_on_a_stage_still_runs_and_counts_stay_exact(demo_package: dict[str, Any], demo_stages: Any) -> None:
    runner = dyncal.load_early_exit(demo_package["pkg"])
    stages = demo_stages
    seen: list[str] = []
    x = torch.randn(4, 1, 8, 8)
    with torch.inference_mode():
        want = stages.run(x)
        handles = [
            runner.stages.modules[0].register_forward_hook(lambda *_: seen.append("package")),
            stages.modules[0].register_forward_pre_hook(lambda *_: seen.append("graph")),
        ]
        assert not plain_call(runner.stages.modules[0]) and not plain_call(stages.modules[0])
        runner.full_model(x)
        assert _equal(stages.run(x), want)
        for h in handles:
            h.remove()
        runner.full_model(x)
    assert seen == ["package", "graph"]
    assert runner.stage_calls == [2] * 4 and runner.stage_rows == [8] * 4
    runner.reset_counts()
    assert runner.stage_calls == [0] * 4 and runner.stage_rows == [0] * 4


def test_a_graph_recompiled_after_the_lean_code_was_made_runs_as_changed() -> None:
    stages = build_stages(pretrained().eval(), torch.zeros(2, 1, 8, 8))
    fast = caller(stages.modules[0])
    gm = stages.modules[0]
    assert isinstance(gm, fx.GraphModule)
    out = next(n for n in gm.graph.nodes if n.op == "output")
    logits = out.args[0][0]
    with gm.graph.inserting_before(out):
        doubled = gm.graph.call_function(torch.ops.aten.mul.Tensor, (logits, 2.0))
    out.args = ((doubled, *out.args[0][1:]),)
    gm.recompile()
    x = torch.randn(2, 1, 8, 8)
    with torch.inference_mode():
        assert _equal(fast(x), gm(x))


def test_graphs_it_cannot_reproduce_run_as_their_module(demo_pt2: Path) -> None:
    module = torch.export.load(str(demo_pt2)).module()  # pytree-flattening codegen: not reproduced
    assert lean_function(module) is None
    assert caller(module) is module
    assert lean_function(torch.nn.Linear(2, 2)) is None
