"""Tiny multi-exit models used by the tests, importable as ``toy_models:<factory>``
(the tests pass ``--model-path tests``)."""

from __future__ import annotations

import torch
from torch import nn


class TwoExitMLP(nn.Module):
    """Input (B, 4) -> two exits with 3 classes. Deterministic weights from a seed."""

    def __init__(self, in_features: int = 4, n_classes: int = 3) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body1 = nn.Linear(in_features, 8)
        self.head1 = nn.Linear(8, n_classes)
        self.body2 = nn.Linear(8, 8)
        self.head2 = nn.Linear(8, n_classes)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        h1 = torch.relu(self.body1(x.flatten(1)))
        h2 = torch.relu(self.body2(h1))
        return [self.head1(h1), self.head2(h2)]


class TinyConvNet(nn.Module):
    """Input (B, 3, 16, 16) -> three exits with 2 classes (for ImageFolder data)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.c1 = nn.Conv2d(3, 4, 3, padding=1)
        self.c2 = nn.Conv2d(4, 4, 3, padding=1)
        self.c3 = nn.Conv2d(4, 4, 3, padding=1)
        self.heads = nn.ModuleList(nn.Linear(4, 2) for _ in range(3))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outs = []
        for conv, head in zip((self.c1, self.c2, self.c3), self.heads, strict=False):
            x = torch.relu(conv(x))
            outs.append(head(x.mean(dim=(2, 3))))
        return tuple(outs)


def two_exit() -> nn.Module:
    return TwoExitMLP()


def tiny_conv() -> nn.Module:
    return TinyConvNet()


class _Single(TwoExitMLP):
    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return super().forward(x)[1]


def single_output() -> nn.Module:
    return _Single()


class _MixedC(TwoExitMLP):
    def __init__(self) -> None:
        super().__init__()
        self.head2 = nn.Linear(8, 5)


def mixed_classes() -> nn.Module:
    return _MixedC()


class _NaNSecondBatch(TwoExitMLP):
    """Exit 2 returns NaN for every batch after the first."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = super().forward(x)
        self.calls += 1
        if self.calls > 1:
            outs[1] = outs[1] * float("nan")
        return outs


def nan_logits() -> nn.Module:
    return _NaNSecondBatch()


class _Slow(TwoExitMLP):
    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        import time

        time.sleep(0.2)
        return super().forward(x)


def slow() -> nn.Module:
    return _Slow()


def broken_factory() -> nn.Module:
    raise RuntimeError("cannot build")


# ------------------------------------------------------------------ data factories


def toy_dataset() -> torch.utils.data.Dataset:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(23, 4, generator=g)
    y = torch.randint(0, 3, (23,), generator=g)
    return torch.utils.data.TensorDataset(x, y)


def unlabelled_dataset() -> list[torch.Tensor]:
    return [torch.zeros(4) for _ in range(5)]


def out_of_range_dataset() -> torch.utils.data.Dataset:
    x = torch.randn(10, 4)
    y = torch.arange(10) % 6  # labels up to 5, the model has C=3
    return torch.utils.data.TensorDataset(x, y)


def ragged_dataset() -> list[tuple[torch.Tensor, int]]:
    """Item 9 has a different shape: collate fails in the second batch."""
    return [(torch.zeros(4 if i != 9 else 5), 0) for i in range(12)]


def wide_inputs_dataset() -> torch.utils.data.Dataset:
    """Inputs of 7 features for a model that takes 4."""
    return torch.utils.data.TensorDataset(torch.randn(6, 7), torch.zeros(6, dtype=torch.long))
