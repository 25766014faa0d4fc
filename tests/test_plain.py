"""The plain deployment computes the backbone and the last head only: no intermediate head runs."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile

from dyncal.analysis.flops import model_macs
from dyncal.analysis.plain import PLAIN_METHOD, last_exit_graph, plain_deployment, plain_runner
from dyncal.analysis.stages import build_stages
from dyncal.demo import DigitsExitNet
from dyncal.errors import ProfileError
from tests.models_zoo import ConvStack, DataDependentStaged, LinearStack

pytestmark = pytest.mark.integration


def _op_calls(fn, x: torch.Tensor, op: str) -> int:
    """How many times the aten op ``op`` ran in ``fn(x)`` (torch's profiler counts every call)."""
    with torch.inference_mode(), profile(activities=[ProfilerActivity.CPU]) as prof:
        fn(x)
    return sum(e.count for e in prof.key_averages() if e.key == op)


def test_plain_deployment_runs_three_layers_and_the_last_head_only():
    """LinearStack: three layers and three heads, all nn.Linear; the plain deployment calls four."""
    model = LinearStack().eval()
    stages = build_stages(model, torch.zeros(2, 8))
    plain = plain_deployment(stages)
    x = torch.randn(5, 8)
    assert _op_calls(model, x, "aten::linear") == 6
    assert _op_calls(stages.run, x, "aten::linear") == 6
    assert _op_calls(plain.run, x, "aten::linear") == 4
    params = {str(n.target) for n in plain.modules[0].graph.nodes if n.op == "get_attr"}
    assert params == {"l1.weight", "l1.bias", "l2.weight", "l2.bias", "l3.weight", "l3.bias", "h3.weight", "h3.bias"}
    with torch.inference_mode():
        assert torch.allclose(plain.run(x)[0], model(x)[-1], atol=1e-6)
    # MACs by hand: layers 128 + 256 + 256, last head 48 (the model's last exit costs 784 with its other heads)
    assert model_macs(plain.modules[0], torch.zeros(1, 8)).macs == 688 == LinearStack.EXIT_MACS[-1] - 2 * 48


def test_conv_model_loses_its_two_pooled_heads():
    model = ConvStack().eval()
    plain = plain_deployment(build_stages(model, torch.zeros(2, 3, 8, 8)))
    x = torch.randn(3, 3, 8, 8)
    assert _op_calls(plain.run, x, "aten::adaptive_avg_pool2d") == 1
    assert _op_calls(model, x, "aten::adaptive_avg_pool2d") == 3
    # convs 6912 + 4608 + 9216, last head: pool 128 + linear 40
    assert model_macs(plain.modules[0], torch.zeros(1, 3, 8, 8)).macs == 20904
    with torch.inference_mode():
        assert torch.allclose(plain.run(x)[0], model(x)[-1], atol=1e-6)


def test_no_op_of_an_intermediate_head_is_left_in_the_demo():
    net = DigitsExitNet().eval()
    plain = plain_deployment(build_stages(net, torch.zeros(2, 1, 8, 8)))
    owners = set()
    for n in plain.modules[0].graph.nodes:
        stack = n.meta.get("nn_module_stack") or {}
        owners.update(path for path, _ in stack.values())
        if n.op == "get_attr":
            owners.add(str(n.target).split(".")[0])
    assert "head4" in owners and not owners & {"head1", "head2", "head3"}
    assert plain.k == 1 and plain.source == "plain" and plain.can_drop_rows
    for b in (1, 7):  # the batch stays dynamic
        x = torch.randn(b, 1, 8, 8)
        with torch.inference_mode():
            assert torch.allclose(plain.run(x)[0], net(x)[-1], atol=1e-5)


class _Declared(LinearStack):
    """LinearStack with hand-declared stages (so its stages carry no graph)."""

    def dyncal_stages(self) -> list[nn.Module]:
        return [_Lin1(self), _Lin2(self), _Lin3(self)]


class _Lin1(nn.Module):
    def __init__(self, m: LinearStack) -> None:
        super().__init__()
        self.m = m

    def forward(self, x):
        a = torch.relu(self.m.l1(x))
        return self.m.h1(a), a


class _Lin2(nn.Module):
    def __init__(self, m: LinearStack) -> None:
        super().__init__()
        self.m = m

    def forward(self, a):
        b = torch.relu(self.m.l2(a))
        return self.m.h2(b), b


class _Lin3(nn.Module):
    def __init__(self, m: LinearStack) -> None:
        super().__init__()
        self.m = m

    def forward(self, b):
        return (self.m.h3(torch.relu(self.m.l3(b))),)


def test_declared_stages_take_the_plain_deployment_from_the_exported_model():
    model = _Declared().eval()
    stages = build_stages(model, torch.zeros(2, 8))
    assert stages.source == "method" and stages.whole is None
    with pytest.raises(ProfileError, match="pass the model .* or give it a 'dyncal_plain\\(\\)' method"):
        plain_deployment(stages)
    plain = plain_deployment(stages, model=model, example=torch.zeros(2, 8))
    x = torch.randn(4, 8)
    assert _op_calls(plain.run, x, "aten::linear") == 4
    with torch.inference_mode():
        assert torch.allclose(plain.run(x)[0], model(x)[-1], atol=1e-6)


class _WithPlain(DataDependentStaged):
    """A model export cannot capture, declaring its stages and its plain deployment by hand."""

    def dyncal_plain(self) -> nn.Module:
        return _DDPlain(self)


class _DDPlain(nn.Module):
    def __init__(self, m: DataDependentStaged) -> None:
        super().__init__()
        self.l1, self.h2 = m.l1, m.h2

    def forward(self, x):
        a = self.l1(x)
        if a.sum() > 0:
            a = a * 2
        return self.h2(torch.relu(a))


def test_a_model_export_cannot_capture_declares_its_plain_deployment():
    model = _WithPlain().eval()
    calls = {"h1": 0}
    model.h1.register_forward_hook(lambda *_: calls.__setitem__("h1", calls["h1"] + 1))
    stages = build_stages(model, torch.zeros(2, 8))
    plain = plain_deployment(stages, model=model, example=torch.zeros(2, 8))
    x = torch.randn(6, 8)
    exits, preds = plain_runner(plain)(x)
    assert calls["h1"] == 0, "the intermediate head ran"
    with torch.inference_mode():
        assert torch.equal(preds, model(x)[-1].argmax(1)) and exits.tolist() == [0] * 6
    assert calls["h1"] == 1  # the model itself does run it: the hook counts


def test_what_cannot_give_a_plain_deployment_is_said_in_one_line():
    stages = build_stages(DataDependentStaged().eval(), torch.zeros(2, 8))
    with pytest.raises(ProfileError, match=f"torch.export cannot capture DataDependentStaged .*'{PLAIN_METHOD}\\(\\)'"):
        plain_deployment(stages, model=DataDependentStaged().eval(), example=torch.zeros(2, 8))

    class NotAModule(_Declared):
        def dyncal_plain(self):
            return lambda x: x

    with pytest.raises(ProfileError, match=r"NotAModule.dyncal_plain\(\) must return an nn.Module .* got function"):
        plain_deployment(model=NotAModule().eval())

    class TwoOutputs(_Declared):
        def dyncal_plain(self):
            return self  # gives every exit, not the last one's logits

    plain = plain_deployment(model=TwoOutputs().eval())
    with pytest.raises(ProfileError, match=r"giving the last exit's logits \(B, C\); it gave list"):
        plain.run(torch.zeros(2, 8))
    with pytest.raises(ProfileError, match="a plain deployment has one stage; these stages have K=3"):
        plain_runner(build_stages(LinearStack().eval(), torch.zeros(2, 8)))


def test_last_exit_graph_keeps_the_signature():
    model = LinearStack().eval()
    whole = build_stages(model, torch.zeros(2, 8)).whole
    assert isinstance(whole, torch.fx.GraphModule)
    cut = last_exit_graph(whole)
    before = [n.name for n in whole.graph.nodes if n.op == "placeholder"]
    assert [n.name for n in cut.graph.nodes if n.op == "placeholder"] == before
    out = cut(torch.zeros(3, 8))
    assert isinstance(out, tuple) and len(out) == 1 and out[0].shape == (3, 3)
