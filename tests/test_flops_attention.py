"""MACs of attention: dyncal's rules for fused attention ops against counts worked out by hand."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dyncal.analysis.attention_macs import work_done_elsewhere
from dyncal.analysis.flops import model_macs, stage_macs
from dyncal.analysis.stages import build_stages

E, HEADS, FFN = 16, 4, 24


def attention_by_hand(batch: int, lq: int, lk: int, embed: int) -> int:
    """Q K^T and P V over all heads: each is Lq*Lk*(E/H) per head, H heads."""
    return batch * 2 * lq * lk * embed


def encoder_layer_by_hand(batch: int, length: int, embed: int, ffn: int) -> int:
    """One nn.TransformerEncoderLayer from its sizes (biases, softmax, adds not counted)."""
    tokens = batch * length
    qkv = tokens * embed * 3 * embed
    out = tokens * embed * embed
    feed_forward = tokens * embed * ffn + tokens * ffn * embed
    norms = 2 * 5 * tokens * embed  # fvcore's layer_norm: 5 per element with an affine transform
    return qkv + attention_by_hand(batch, length, length, embed) + out + feed_forward + norms


class Attend(nn.Module):
    """Attention of the input queries over fixed keys and values."""

    def __init__(self, k: torch.Tensor, v: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("k", k)
        self.register_buffer("v", v)

    def forward(self, q: torch.Tensor) -> torch.Tensor:
        return nn.functional.scaled_dot_product_attention(q, self.k, self.v)


@pytest.mark.parametrize(("lq", "lk", "e", "ev"), [(5, 7, 8, 8), (1, 9, 4, 6), (12, 12, 16, 2)])
def test_scaled_dot_product_attention_counts_both_products(lq: int, lk: int, e: int, ev: int) -> None:
    q, k, v = torch.randn(2, 3, lq, e), torch.randn(2, 3, lk, e), torch.randn(2, 3, lk, ev)
    count = model_macs(Attend(k, v), q)
    assert count.macs == 2 * 3 * (lq * lk * e + lq * lk * ev)
    assert count.unsupported == {}


def test_encoder_layer_eager_fast_path_equals_exported_graph_and_hand_count() -> None:
    """Eager eval takes MultiheadAttention's fused op; the export has scaled_dot_product_attention."""
    layer = nn.TransformerEncoderLayer(E, HEADS, FFN, dropout=0.0, batch_first=True).eval()

    class TwoExits(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layer, self.head1, self.head2 = layer, nn.Linear(E, 3), nn.Linear(E, 3)

        def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
            return [self.head1(x.mean(1)), self.head2(self.layer(x).mean(1))]

    model = TwoExits().eval()
    length = 10
    counts = stage_macs(build_stages(model, torch.randn(2, length, E)), torch.randn(1, length, E), model=model)
    expected = encoder_layer_by_hand(1, length, E, FFN) + 2 * E * 3
    assert counts.exit_macs[-1] == counts.graph_macs == counts.model_macs == expected
    assert counts.by_operator[1]["attention"] == attention_by_hand(1, length, length, E)
    assert counts.uncalled_modules == ()  # out_proj's work is inside the attention op, which ran
    assert not [u for u in counts.unsupported_ops if "attention" in u.op]


@pytest.mark.parametrize("need_weights", [False, True])
def test_multihead_attention_paths_agree_with_hand_count(need_weights: bool) -> None:
    """Self-attention (fused fast path without weights) and cross-attention with a mask (baddbmm)."""
    mha = nn.MultiheadAttention(E, HEADS, batch_first=True).eval()

    class Self(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.mha = mha

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.mha(x, x, x, need_weights=need_weights)[0]

    class Cross(Self):
        def forward(self, q: torch.Tensor) -> torch.Tensor:
            kv = keys.expand(q.shape[0], -1, -1)
            mask = torch.zeros(q.shape[1], kv.shape[1], dtype=torch.bool)
            return self.mha(q, kv, kv, need_weights=need_weights, attn_mask=mask)[0]

    b, lq, lk = 2, 5, 7
    keys = torch.randn(1, lk, E)
    projections = b * lq * E * E * 2 + b * lk * E * E * 2  # Q and output from queries; K and V from keys
    cross = model_macs(Cross(), torch.randn(b, lq, E))
    assert cross.macs == projections + attention_by_hand(b, lq, lk, E)
    x = torch.randn(b, lq, E)
    self_count = model_macs(Self(), x)
    assert self_count.macs == 4 * b * lq * E * E + attention_by_hand(b, lq, lq, E)
    assert self_count.uncalled_modules == cross.uncalled_modules == ()


class FusedLayer(nn.TransformerEncoderLayer):
    """A layer that always takes the fused path eager inference takes when no hooks are attached."""

    def forward(self, src: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:  # type: ignore[override]
        a, n1, n2 = self.self_attn, self.norm1, self.norm2
        return torch._transformer_encoder_layer_fwd(
            src, E, HEADS, a.in_proj_weight, a.in_proj_bias, a.out_proj.weight, a.out_proj.bias, False, False,
            n1.eps, n1.weight, n1.bias, n2.weight, n2.bias,
            self.linear1.weight, self.linear1.bias, self.linear2.weight, self.linear2.bias, None, None,
        )  # fmt: skip


def test_fused_encoder_layer_op_counted_and_its_parts_not_reported_uncalled() -> None:
    layer = FusedLayer(E, HEADS, FFN, dropout=0.0, batch_first=True).eval()
    reference = nn.TransformerEncoderLayer(E, HEADS, FFN, dropout=0.0, batch_first=True).eval()
    reference.load_state_dict(layer.state_dict())
    x = torch.randn(3, 6, E)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), reference(x), rtol=1e-4, atol=1e-5)
    count = model_macs(layer, x)
    assert count.macs == encoder_layer_by_hand(3, 6, E, FFN)
    assert count.uncalled_modules == ()


def test_attention_modules_that_never_ran_are_still_reported() -> None:
    """Only work an attention op did is excused: an attention module the forward skips is listed."""

    class SkipsAttention(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.used = nn.Linear(E, E)
            self.unused = nn.MultiheadAttention(E, HEADS, batch_first=True)
            self.layer = nn.TransformerEncoderLayer(E, HEADS, FFN, batch_first=True)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.used(x)

    count = model_macs(SkipsAttention().eval(), torch.randn(1, 4, E))
    assert "unused" in count.uncalled_modules and "unused.out_proj" in count.uncalled_modules
    assert "layer" in count.uncalled_modules and "layer.linear1" in count.uncalled_modules
    mha = nn.MultiheadAttention(E, HEADS)
    assert work_done_elsewhere(mha, ["out_proj", "other"]) == {"out_proj"}
    assert work_done_elsewhere(mha, [""]) == set()
