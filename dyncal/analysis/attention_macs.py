"""MACs of the attention operators fvcore has no rule for.

fvcore counts ``aten::linear``, ``aten::matmul``, ``aten::bmm`` and a few others; an attention
layer written with those is counted already. Modern code calls one fused operator instead,
and fvcore would leave its work out of every total. This module adds a rule for each such
operator, in fvcore's unit (one multiply-add is one MAC):

- ``aten::scaled_dot_product_attention`` (what ``torch.export`` produces for
  ``nn.MultiheadAttention`` and what Hugging Face's ``sdpa`` attention calls) and its
  backend variants: for ``q`` of shape ``(..., Lq, E)``, ``k`` of ``(..., Lk, E)`` and ``v``
  of ``(..., Lk, Ev)``, ``Lq*Lk*E`` for ``Q @ K^T`` plus ``Lq*Lk*Ev`` for ``P @ V``, times
  the product of ``q``'s leading (batch and head) dimensions;
- ``aten::_native_multi_head_attention`` (``nn.MultiheadAttention``'s inference fast path in
  eager mode): the input projections (``Nq*E*E`` for queries, ``Nk*E*E`` each for keys and
  values, ``N`` tokens), the attention above summed over heads (``2*B*Lq*Lk*E``) and the
  output projection (``Nq*E*E``), exactly what the unfused graph counts with ``linear``;
- ``aten::_transformer_encoder_layer_fwd`` (``nn.TransformerEncoderLayer``'s fused path):
  self-attention as above, the feed-forward block (``2*N*E*F``) and both layer norms at
  fvcore's 5 per element, again equal to the unfused count;
- ``aten::baddbmm`` (``nn.MultiheadAttention``'s unfused path with a mask): the batched
  product, as fvcore counts ``aten::bmm``.

Not counted, as fvcore does not count them elsewhere: the softmax, the ``1/sqrt(E)``
scaling, adding or applying a mask, dropout and biases. A causal or masked attention is
charged the full ``Lq*Lk`` product (kernels that skip masked blocks do less work).

Example:
    >>> import torch
    >>> from fvcore.nn import FlopCountAnalysis
    >>> class Attend(torch.nn.Module):
    ...     def forward(self, q, k, v):
    ...         return torch.nn.functional.scaled_dot_product_attention(q, k, v)
    >>> q = torch.zeros(1, 2, 5, 8)  # batch 1, 2 heads, 5 queries of 8 features
    >>> kv = torch.zeros(1, 2, 7, 8)  # 7 keys and values
    >>> fca = FlopCountAnalysis(Attend(), (q, kv, kv)).set_op_handle(**ATTENTION_HANDLES)
    >>> int(fca.unsupported_ops_warnings(False).total()) == 2 * (5 * 7 * 8 + 5 * 7 * 8)
    True
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from torch import nn

__all__ = ["ATTENTION_HANDLES", "work_done_elsewhere"]

Handle = Callable[[list[Any], list[Any]], Counter[str]]

# fvcore's layer_norm rule charges 5 per element when the norm has an affine transform.
_LAYER_NORM_PER_ELEMENT = 5


def _shape(value: Any) -> list[int]:
    """Sizes of a traced tensor value (every op handled here has complete shapes when traced)."""
    return [int(s) for s in value.type().sizes()]  # a TorchScript trace records concrete shapes


def _attention(q: Sequence[int], k: Sequence[int], v: Sequence[int]) -> int:
    """``Q @ K^T`` and ``P @ V`` for ``q (..., Lq, E)``, ``k (..., Lk, E)``, ``v (..., Lk, Ev)``."""
    heads = math.prod(q[:-2])
    lq, e = q[-2], q[-1]
    lk, ev = k[-2], v[-1]
    return heads * (lq * lk * e + lq * lk * ev)


def _sdpa(inputs: list[Any], outputs: list[Any]) -> Counter[str]:
    q, k, v = (_shape(x) for x in inputs[:3])
    return Counter({"attention": _attention(q, k, v)})


def _self_attention(query: list[int], key: list[int], embed: int) -> Counter[str]:
    """Projections and attention of one multi-head attention on ``(B, L, E)`` or ``(L, E)`` tensors."""
    batch = query[0] if len(query) == 3 else 1
    tokens_q, tokens_k = math.prod(query[:-1]), math.prod(key[:-1])
    projections = tokens_q * embed * embed + 2 * tokens_k * embed * embed + tokens_q * embed * embed
    return Counter({"linear": projections, "attention": batch * 2 * query[-2] * key[-2] * embed})


def _baddbmm(inputs: list[Any], outputs: list[Any]) -> Counter[str]:
    batch, n, m = _shape(inputs[1])
    return Counter({"bmm": batch * n * m * _shape(inputs[2])[-1]})


def _native_mha(inputs: list[Any], outputs: list[Any]) -> Counter[str]:
    query, key = _shape(inputs[0]), _shape(inputs[1])
    return _self_attention(query, key, query[-1])


def _encoder_layer(inputs: list[Any], outputs: list[Any]) -> Counter[str]:
    src = _shape(inputs[0])
    embed, tokens = src[-1], math.prod(src[:-1])
    ffn = _shape(inputs[14])[0]  # ffn_weight_1 is (F, E)
    counts = _self_attention(src, src, embed)
    counts["linear"] += 2 * tokens * embed * ffn
    counts["layer_norm"] += 2 * _LAYER_NORM_PER_ELEMENT * tokens * embed
    return counts


ATTENTION_HANDLES: dict[str, Handle] = {
    "aten::scaled_dot_product_attention": _sdpa,
    "aten::_scaled_dot_product_flash_attention": _sdpa,
    "aten::_scaled_dot_product_flash_attention_for_cpu": _sdpa,
    "aten::_scaled_dot_product_efficient_attention": _sdpa,
    "aten::_scaled_dot_product_cudnn_attention": _sdpa,
    "aten::_native_multi_head_attention": _native_mha,
    "aten::_transformer_encoder_layer_fwd": _encoder_layer,
    "aten::baddbmm": _baddbmm,
}
"""fvcore op handles (``FlopCountAnalysis.set_op_handle(**ATTENTION_HANDLES)``) for fused attention."""


def work_done_elsewhere(module: nn.Module, uncalled: Sequence[str]) -> set[str]:
    """The modules among fvcore's ``uncalled`` whose work an attention module that ran did itself.

    ``nn.MultiheadAttention`` never calls its ``out_proj`` submodule: it hands the weights to
    a functional or fused operator, whose work is counted (or listed as uncounted) under
    that operator. An ``nn.TransformerEncoderLayer`` that ran while none of its submodules
    did took the fused ``aten::_transformer_encoder_layer_fwd`` path (its unfused path calls
    them all), which did their work. Neither is a module that never ran.

    Args:
        module: The module fvcore counted.
        uncalled: fvcore's ``uncalled_modules()`` names, relative to ``module``.

    Returns:
        The names to drop from ``uncalled``.

    Example:
        >>> mha = nn.MultiheadAttention(8, 2, batch_first=True)
        >>> sorted(work_done_elsewhere(mha, ["out_proj"]))
        ['out_proj']
    """
    missing = set(uncalled)
    covered: set[str] = set()
    for name, sub in module.named_modules():
        if name in missing:
            continue
        prefix = f"{name}." if name else ""
        if isinstance(sub, nn.MultiheadAttention):
            covered.add(f"{prefix}out_proj")
        elif isinstance(sub, nn.TransformerEncoderLayer):
            parts = {f"{prefix}{child}" for child, _ in sub.named_modules() if child}
            if parts <= missing:
                covered |= parts
    return covered & missing
