"""A tiny text classifier with three exits taking ``input_ids`` and ``attention_mask``, and its data sets.

Importable as ``text_models:<name>`` (the tests pass ``--model-path tests``). The same model
serves tuple data (``model(ids, mask)``) and dict data (``model(input_ids=..., attention_mask=...)``).
Sequences have 3 to 12 tokens (ids 1..49, 0 is padding) and are padded per batch by
:func:`dyncal.inputs.pad_collate`; labels are the last exit's predictions on the unpadded
sequence, so exit 3 is always right and the earlier exits often.
"""

from __future__ import annotations

import torch
from torch import nn

VOCAB, DIM, CLASSES, N = 50, 16, 3, 96


class TinyTextNet(nn.Module):
    """Embedding, a masked self-attention block and an MLP block; an exit after each of the three parts."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.embed = nn.Embedding(VOCAB, DIM)
        self.qkv = nn.Linear(DIM, 3 * DIM)
        self.mlp = nn.Sequential(nn.Linear(DIM, 2 * DIM), nn.ReLU(), nn.Linear(2 * DIM, DIM))
        self.heads = nn.ModuleList(nn.Linear(DIM, CLASSES) for _ in range(3))

    @staticmethod
    def pool(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Masked mean over the tokens: padding never counts."""
        m = mask.unsqueeze(-1).to(h.dtype)
        return (h * m).sum(1) / m.sum(1).clamp(min=1.0)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> list[torch.Tensor]:
        h = self.embed(input_ids)
        out = [self.heads[0](self.pool(h, attention_mask))]
        q, k, v = self.qkv(h).chunk(3, dim=-1)
        bias = (1.0 - attention_mask.to(h.dtype))[:, None, :] * -1e4
        attn = torch.softmax(q @ k.transpose(1, 2) / DIM**0.5 + bias, dim=-1)
        h = h + attn @ v
        out.append(self.heads[1](self.pool(h, attention_mask)))
        h = h + self.mlp(h)
        out.append(self.heads[2](self.pool(h, attention_mask)))
        return out


def model() -> TinyTextNet:
    """The model, in eval mode."""
    return TinyTextNet().eval()


def _sequences() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(11)
    lengths = torch.randint(3, 13, (N,), generator=g)
    return [torch.randint(1, VOCAB, (int(n),), generator=g) for n in lengths]


def _labels(seqs: list[torch.Tensor]) -> list[int]:
    net = model()
    with torch.inference_mode():
        return [int(net(s[None], torch.ones(1, len(s), dtype=torch.int64))[-1].argmax()) for s in seqs]


class TextData(torch.utils.data.Dataset):  # type: ignore[type-arg]
    """Items ``((ids, mask), label)`` (``kind="tuple"``) or ``({"input_ids", "attention_mask"}, label)``."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.seqs = _sequences()
        self.labels = _labels(self.seqs)

    def __len__(self) -> int:
        return len(self.seqs)

    def __getitem__(self, i: int) -> tuple[object, int]:
        ids = self.seqs[i]
        mask = torch.ones(len(ids), dtype=torch.int64)
        x: object = (ids, mask) if self.kind == "tuple" else {"input_ids": ids, "attention_mask": mask}
        return x, self.labels[i]


def tuple_data() -> TextData:
    """Items ``((input_ids, attention_mask), label)``."""
    return TextData("tuple")


def dict_data() -> TextData:
    """Items ``({"input_ids": ..., "attention_mask": ...}, label)``."""
    return TextData("dict")


def float_mask_data() -> TextData:
    """Dict items whose mask is float32 from item 10 on: the inputs change dtype in the second batch."""

    class FloatMask(TextData):
        def __getitem__(self, i: int) -> tuple[object, int]:
            x, y = super().__getitem__(i)
            if i >= 10:
                x["attention_mask"] = x["attention_mask"].float()  # type: ignore[index]
            return x, y

    return FloatMask("dict")


class _Stage(nn.Module):
    """One part of :class:`TinyTextNet` as a hand-declared stage: ``(*inputs or carry) -> (logits, h, mask)``."""

    def __init__(self, net: TinyTextNet, part: int) -> None:
        super().__init__()
        self.net, self.part = net, part

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
        net = self.net
        if self.part == 0:
            h = net.embed(h)
        elif self.part == 1:
            q, k, v = net.qkv(h).chunk(3, dim=-1)
            bias = (1.0 - mask.to(h.dtype))[:, None, :] * -1e4
            h = h + torch.softmax(q @ k.transpose(1, 2) / DIM**0.5 + bias, dim=-1) @ v
        else:
            h = h + net.mlp(h)
        logits = net.heads[self.part](net.pool(h, mask))
        return (logits,) if self.part == 2 else (logits, h, mask)


def stages(net: TinyTextNet) -> list[nn.Module]:
    """The model's stages declared by hand (``--stages text_models:stages``): stage 1 takes ids and mask."""
    return [_Stage(net, i) for i in range(3)]
