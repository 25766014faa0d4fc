"""Text classifiers with exits, a generated text data set and a quick trainer.

Importable as ``text_encoders:<name>`` with ``--model-path tests`` (the tests and
``benchmarks/text_exits.py`` do so):

- ``text_encoder``: a small transformer encoder (token and position embeddings, four
  ``nn.TransformerEncoderLayer``s with ``batch_first=True``, masked mean pooling) with exits
  after layers 1, 2 and 4; ``forward(input_ids, attention_mask)`` returns three ``(B, 3)``
  logits tensors;
- ``bert_exits``: a BERT-style encoder built from a ``transformers.BertConfig`` (no download)
  with exits on the hidden states of layers 1, 2 and 3 (needs the ``nlp`` extra);
- ``text_data`` / ``text_data_dict`` / ``text_data_train``: sentences of 4 to 32 tokens,
  ``((input_ids, attention_mask), label)`` or ``({"input_ids": ..., "attention_mask": ...},
  label)``, unpadded (``--collate dyncal.inputs:pad_collate`` pads each batch to its longest
  row with 0, which is ``PAD``; the mask's padding is 0);
- ``train(model, ...)``: a few seconds on a CPU make every exit clearly better than chance,
  the last exit best.

**The task.** Tokens ``1..3`` are markers of classes 0..2 and token ``4`` is "not": a marker
right after "not" does not count. The label is the class whose marker counts most. Half
of the rows are easy (the winner leads by three or more, nothing negated); the others are
hard (the winner leads by one after negation, and a bag of words that ignores "not" picks
another class), so early exits get the easy rows right and need depth for the hard ones.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from dyncal.inputs import pad_collate

PAD, NOT, FIRST_FILLER, VOCAB = 0, 4, 5, 32
MARKERS = (1, 2, 3)
N_CLASSES = len(MARKERS)
MIN_LEN, MAX_LEN = 4, 32
MAX_POSITIONS = 64


# ---------------------------------------------------------------------------- the data


def _row(rng: np.random.Generator) -> tuple[list[int], int]:
    """One sentence and its label (see the module docs)."""
    label = int(rng.integers(N_CLASSES))
    others = [c for c in range(N_CLASSES) if c != label]
    if rng.random() < 0.5:  # easy: a clear winner, nothing negated
        counts = {label: int(rng.integers(3, 7))}
        for c in others:
            counts[c] = int(rng.integers(0, counts[label] - 2))
        negated = {c: 0 for c in range(N_CLASSES)}
    else:  # hard: the winner leads by one, a rival would win if "not" were ignored
        rival = int(rng.choice(others))
        counts = {label: int(rng.integers(2, 5))}
        counts[rival] = counts[label] - 1
        counts[[c for c in others if c != rival][0]] = int(rng.integers(0, counts[label] - 1))
        negated = {c: 0 for c in range(N_CLASSES)}
        negated[rival] = int(rng.integers(2, 4))
    pieces: list[list[int]] = []
    for c in range(N_CLASSES):
        pieces += [[MARKERS[c]]] * counts[c] + [[NOT, MARKERS[c]]] * negated[c]
    used = sum(len(p) for p in pieces)
    length = int(rng.integers(max(MIN_LEN, used), MAX_LEN + 1))
    pieces += [[int(t)] for t in rng.integers(FIRST_FILLER, VOCAB, length - used)]
    order = rng.permutation(len(pieces))
    tokens = [t for i in order for t in pieces[i]]
    return tokens, label


class TextMarkers(Dataset[Any]):
    """``n`` generated sentences (4 to 32 tokens, unpadded) with labels, fixed by ``seed``.

    Args:
        n: Number of rows.
        seed: Seed of the generator (the same seed gives the same rows).
        as_dict: Yield ``({"input_ids": ..., "attention_mask": ...}, label)`` instead of
            ``((input_ids, attention_mask), label)``.
    """

    def __init__(self, n: int, seed: int, *, as_dict: bool = False) -> None:
        rng = np.random.default_rng(seed)
        rows = [_row(rng) for _ in range(n)]
        self.tokens = [torch.tensor(t, dtype=torch.int64) for t, _ in rows]
        self.labels = [y for _, y in rows]
        self.as_dict = as_dict

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        ids = self.tokens[i]
        mask = torch.ones_like(ids)
        inputs: Any = {"input_ids": ids, "attention_mask": mask} if self.as_dict else (ids, mask)
        return inputs, self.labels[i]


def text_data() -> TextMarkers:
    """600 validation rows as ``((input_ids, attention_mask), label)``."""
    return TextMarkers(600, seed=1)


def text_data_dict() -> TextMarkers:
    """The same 600 validation rows as ``({"input_ids": ..., "attention_mask": ...}, label)``."""
    return TextMarkers(600, seed=1, as_dict=True)


def text_data_train() -> TextMarkers:
    """3000 training rows (another seed than the validation rows)."""
    return TextMarkers(3000, seed=0)


# ---------------------------------------------------------------------------- the models


def masked_mean(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``h (B, L, D)`` over the positions where ``mask (B, L)`` is 1."""
    m = mask.unsqueeze(-1).to(h.dtype)
    return (h * m).sum(1) / m.sum(1).clamp(min=1.0)


class TextExitEncoder(nn.Module):
    """Embeddings, ``layers`` encoder layers, an exit (masked mean + linear) after each of ``exits``.

    Args:
        dim: Model width.
        heads: Attention heads.
        ffn: Feed-forward width.
        layers: Encoder layers.
        exits: 1-based layers after which an exit reads the hidden states (the last layer last).
    """

    def __init__(
        self, dim: int = 32, heads: int = 4, ffn: int = 64, layers: int = 4, exits: tuple[int, ...] = (1, 2, 4)
    ) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.exits = exits
        self.tokens = nn.Embedding(VOCAB, dim, padding_idx=PAD)
        self.positions = nn.Parameter(0.02 * torch.randn(MAX_POSITIONS, dim))  # sliced by length, as BERT's
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(dim, heads, ffn, dropout=0.0, batch_first=True) for _ in range(layers)
        )
        self.heads = nn.ModuleList(nn.Linear(dim, N_CLASSES) for _ in exits)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> list[torch.Tensor]:
        length = input_ids.shape[1]
        h = self.tokens(input_ids) + self.positions[:length]
        padding = attention_mask == 0
        out = []
        for i, layer in enumerate(self.layers, start=1):
            h = layer(h, src_key_padding_mask=padding)
            if i in self.exits:
                out.append(self.heads[len(out)](masked_mean(h, attention_mask)))
        return out


def text_encoder() -> nn.Module:
    """The small encoder with exits after layers 1, 2 and 4 (seeded weights; train with :func:`train`)."""
    return TextExitEncoder()


class BertExits(nn.Module):
    """A BERT encoder from a config with an exit (masked mean + linear) on the hidden states of each of ``exits``."""

    def __init__(self, config: Any, exits: tuple[int, ...] = (1, 2, 3)) -> None:
        super().__init__()
        from transformers import BertModel

        torch.manual_seed(0)
        self.bert = BertModel(config, add_pooling_layer=False)
        self.exits = exits
        self.heads = nn.ModuleList(nn.Linear(config.hidden_size, N_CLASSES) for _ in exits)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> list[torch.Tensor]:
        states = self.bert(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True).hidden_states
        return [head(masked_mean(states[k], attention_mask)) for k, head in zip(self.exits, self.heads, strict=True)]


def bert_exits() -> nn.Module:
    """A tiny BERT (3 layers, width 32, 4 heads) from ``BertConfig``, nothing downloaded."""
    from transformers import BertConfig

    config = BertConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=MAX_POSITIONS,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        pad_token_id=PAD,
    )
    return BertExits(config)


# ---------------------------------------------------------------------------- training


TEST_TRAINING: dict[str, Any] = {"steps": 150, "lr": 5e-3, "batch_size": 64}
"""What the tests train with (about 20 s on one loaded core): exits near 57 %, 64 % and 71 %."""


def train(model: nn.Module, *, steps: int = 300, batch_size: int = 64, lr: float = 3e-3, seed: int = 0) -> nn.Module:
    """Train every exit at once (summed cross-entropy) on :func:`text_data_train`; returns the model in eval mode."""
    data = text_data_train()
    gen = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small steps: more threads only wait for each other, the more so on a busy machine
    model.train()
    try:
        for _ in range(steps):
            rows = torch.randint(len(data), (batch_size,), generator=gen).tolist()
            (ids, mask), labels = pad_collate([data[i] for i in rows])
            loss = sum(nn.functional.cross_entropy(logits, labels) for logits in model(ids, mask))
            optimizer.zero_grad()
            loss.backward()  # type: ignore[union-attr]
            optimizer.step()
    finally:
        torch.set_num_threads(threads)
    return model.eval()


def exit_accuracy(model: nn.Module, data: TextMarkers, batch_size: int = 100) -> list[float]:
    """Accuracy of each exit on ``data``."""
    correct: list[int] = []
    with torch.inference_mode():
        for start in range(0, len(data), batch_size):
            (ids, mask), labels = pad_collate([data[i] for i in range(start, min(start + batch_size, len(data)))])
            hits = [int((logits.argmax(1) == labels).sum()) for logits in model.eval()(ids, mask)]
            correct = hits if not correct else [a + b for a, b in zip(correct, hits, strict=True)]
    return [c / len(data) for c in correct]
