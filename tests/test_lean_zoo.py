"""Lean stage calls on every zoo model build_stages takes: the module's outputs, bit for bit and dtype."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import models_zoo as zoo
import pytest
import torch
from torch import nn

from dyncal.analysis.lean import caller, lean_function
from dyncal.analysis.stages import Stages, build_stages, verify_stages
from dyncal.errors import ProfileError

pytestmark = pytest.mark.integration

ZOO: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "linear_stack": (zoo.linear_stack, (8,)),
    "conv_stack": (zoo.conv_stack, (3, 8, 8)),
    "branchy": (lambda: zoo.BranchyNet().eval(), (2, 8, 8)),
    "perceiver": (zoo.perceiver_like, (3, 8, 8)),
    "attention": (lambda: zoo.AttentionExits().eval(), (5, 16)),
    "sequence_first": (lambda: zoo.SequenceFirst().eval(), (5, 16)),
    "flattened_carry": (zoo.flattened_carry, (5, 16)),
}
# Left out: ResNet50Exits (exporting it alone takes longer than this whole module may) and InputExit
# (build_stages rejects it: its first exit is the input itself, not computed by the graph).


def _same(a: Any, b: Any) -> bool:
    a, b = list(a), list(b)
    return len(a) == len(b) and all(
        type(p) is type(q) and (not isinstance(p, torch.Tensor) or (p.dtype == q.dtype and torch.equal(p, q)))
        for p, q in zip(a, b, strict=True)
    )


def _module_chain(stages: Stages, x: torch.Tensor) -> list[Any]:
    """Every stage's whole output, each module called itself on the carry the one before returned.

    Outputs are recorded as copies: a later stage may change its carry in place.
    """
    carry: tuple[Any, ...] = stages.flat_inputs(x.clone())
    outs = []
    for module in stages.modules:
        out = module(*carry)
        outs.append([v.clone() if isinstance(v, torch.Tensor) else v for v in out])
        carry = tuple(out[1:])
    return outs


@pytest.fixture(scope="module", params=sorted(ZOO))
def zoo_stages(request: pytest.FixtureRequest) -> tuple[str, Stages]:
    factory, shape = ZOO[request.param]
    torch.manual_seed(0)
    return request.param, build_stages(factory(), torch.randn(2, *shape))


@pytest.mark.parametrize("b", (1, 3, 5))
def test_every_zoo_stage_runs_lean_and_gives_its_modules_outputs_exactly(
    zoo_stages: tuple[str, Stages], b: int
) -> None:
    name, stages = zoo_stages
    assert all(c is not m for c, m in zip(stages.callers, stages.modules, strict=True)), name  # lean code runs
    x = torch.randn(b, *ZOO[name][1], generator=torch.Generator().manual_seed(b))
    with torch.inference_mode():
        want = _module_chain(stages, x)
        run = stages.start(x.clone())
        for i, (fast, out) in enumerate(zip(stages.callers, want, strict=True)):
            got = fast(*run.carry)
            assert _same(got, out), f"{name} stage {i + 1}"
            assert torch.equal(run.step(), out[0]) and _same(run.carry, out[1:])  # the runner's own path
    assert run.done


def test_a_model_moved_to_float64_after_its_lean_callers_were_made_gives_float64() -> None:
    stages = build_stages(zoo.conv_stack(), torch.zeros(2, 3, 8, 8))
    callers = stages.callers
    assert all(c is not m for c, m in zip(callers, stages.modules, strict=True))
    for m in stages.modules:
        m.double()
    x = torch.randn(3, 3, 8, 8, dtype=torch.float64)
    with torch.inference_mode():
        want = _module_chain(stages, x)
        carry: tuple[Any, ...] = (x.clone(),)
        for fast, out in zip(callers, want, strict=True):
            got = fast(*carry)
            assert got[0].dtype == torch.float64 and _same(got, out)
            carry = tuple(got[1:])


class InPlace(nn.Module):
    """In-place ops on intermediates and on a copy of the input (``relu_``, ``x += y``, ``add_``, ``torch.relu_``)."""

    def __init__(self, through_view: bool = False) -> None:
        super().__init__()
        self.through_view = through_view
        self.l1, self.l2 = nn.Linear(8, 8), nn.Linear(8, 8)
        self.h1, self.h2 = nn.Linear(8, 3), nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        y = self.l1(x)
        y.relu_()
        if self.through_view:
            y[:, :4].mul_(2.0)  # changes y, but no node reading y depends on it in the graph
        else:
            y.mul_(2.0)
        x2 = x.clone()
        x2 += y
        z = self.l2(x2)
        z.add_(y)
        torch.relu_(z)
        return [self.h1(y), self.h2(z)]


@pytest.mark.parametrize("through_view", [False, True])
def test_a_model_with_in_place_ops_runs_lean_exactly_as_its_stage_modules(through_view: bool) -> None:
    torch.manual_seed(0)
    stages = build_stages(InPlace(through_view).eval(), torch.zeros(2, 8))
    assert all(c is not m for c, m in zip(stages.callers, stages.modules, strict=True))
    for b in (1, 3):
        x = torch.randn(b, 8, generator=torch.Generator().manual_seed(b))
        with torch.inference_mode():
            want = _module_chain(stages, x)
            carry: tuple[Any, ...] = (x.clone(),)
            for fast, out in zip(stages.callers, want, strict=True):
                got = fast(*carry)
                assert _same(got, out)
                carry = tuple(got[1:])


@pytest.mark.parametrize("through_view", [False, True])
def test_stages_of_a_model_with_in_place_ops_give_the_models_own_exits(through_view: bool) -> None:
    torch.manual_seed(0)
    model = InPlace(through_view).eval()
    stages = build_stages(model, torch.zeros(2, 8))
    for b in (1, 3):
        x = torch.randn(b, 8, generator=torch.Generator().manual_seed(b))
        with torch.inference_mode():
            assert _same(stages.run(x.clone()), model(x.clone()))


class WriteAfterRead(nn.Module):
    """Exit 2 reads ``y`` before an in-place write that exit 1 needs: the read must stay first."""

    def __init__(self) -> None:
        super().__init__()
        self.l1, self.h1, self.h2 = nn.Linear(8, 8), nn.Linear(8, 3), nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        y = self.l1(x)
        z = y * 3.0  # only exit 2 needs z, but it must see y before the write below
        y[:, 2:].add_(1.0)
        return [self.h1(y), self.h2(z)]


def test_an_in_place_write_stays_after_the_reads_before_it_and_before_the_reads_after_it() -> None:
    torch.manual_seed(0)
    model = WriteAfterRead().eval()
    stages = build_stages(model, torch.zeros(2, 8))
    x = torch.randn(3, 8)
    with torch.inference_mode():
        assert _same(stages.run(x.clone()), model(x.clone()))
    verify_stages(model, stages, torch.randn(4, 8))


def test_stages_that_do_not_reproduce_the_model_are_refused_by_the_check_the_verbs_run() -> None:
    torch.manual_seed(0)
    stages = build_stages(InPlace(through_view=True).eval(), torch.zeros(2, 8))
    other = InPlace(through_view=True).eval()  # same layers, other weights
    with pytest.raises(ProfileError, match="does not reproduce exit 1 of the model"):
        verify_stages(other, stages, torch.randn(4, 8))


class _Tricky(nn.Module):
    """Ops fx records as call_method / call_module / Python operators, a buffer, a constant tensor attribute."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.register_buffer("shift", torch.arange(4.0))
        self.scale = torch.tensor(0.5)

    def forward(self, x: torch.Tensor) -> dict[str, Any]:
        y = self.lin(x).relu_() + self.shift
        y.mul_(self.scale)
        parts = torch.split(y, [1, 3], dim=1)
        return {"a": parts[0], "b": (parts[1].sum(dim=1, keepdim=True), x.shape[0] * 2)}


def test_symbolically_traced_graphs_of_methods_modules_and_operators_give_the_modules_outputs() -> None:
    torch.manual_seed(0)
    gm = torch.fx.symbolic_trace(_Tricky().eval())
    ops = {n.op for n in gm.graph.nodes}
    assert {"call_method", "call_module", "call_function", "get_attr"} <= ops
    fast = lean_function(gm)
    assert fast is not None
    for b in (1, 3):
        x = torch.randn(b, 4)
        got, want = fast(x.clone()), gm(x.clone())
        assert torch.equal(got["a"], want["a"]) and torch.equal(got["b"][0], want["b"][0])
        assert got["b"][1] == want["b"][1] == 2 * b
    gm.double()  # the buffer and the parameters move; the lean code reads them at call time
    x64 = torch.randn(2, 4, dtype=torch.float64)
    assert torch.equal(fast(x64)["a"], gm(x64)["a"]) and fast(x64)["a"].dtype == torch.float64


def test_an_instance_forward_set_after_the_caller_was_made_is_what_runs() -> None:
    gm = torch.fx.symbolic_trace(_Tricky().eval())
    fast = caller(gm)
    gm.forward = lambda x: {"a": x, "b": (x, 0)}  # type: ignore[method-assign]
    x = torch.randn(2, 4)
    assert fast(x)["a"] is x


def test_a_submodule_replaced_after_the_caller_was_made_is_the_one_read() -> None:
    stages = build_stages(zoo.linear_stack(), torch.zeros(2, 8))
    gm, fast = stages.modules[0], stages.callers[0]
    assert fast is not gm and isinstance(gm.get_submodule("l1"), nn.Module)
    torch.manual_seed(1)
    gm.l1 = nn.Linear(8, 16)  # the graph reads l1.weight / l1.bias: now the new ones
    x = torch.randn(3, 8)
    with torch.inference_mode():
        assert _same(fast(x), gm(x))


def test_a_graph_edited_but_not_recompiled_runs_as_its_module_runs() -> None:
    stages = build_stages(zoo.linear_stack(), torch.zeros(2, 8))
    gm = stages.modules[0]
    assert isinstance(gm, torch.fx.GraphModule) and lean_function(gm) is not None
    out = next(n for n in gm.graph.nodes if n.op == "output")
    with gm.graph.inserting_before(out):
        doubled = gm.graph.call_function(torch.ops.aten.mul.Tensor, (out.args[0][0], 2.0))
    out.args = ((doubled, *out.args[0][1:]),)  # gm still runs the code generated before this edit
    assert lean_function(gm) is None and caller(gm) is gm
    gm.recompile()
    fast = lean_function(gm)
    x = torch.randn(3, 8)
    assert fast is not None and _same(fast(x), gm(x))
