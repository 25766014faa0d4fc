"""Models and data sets for the benchmarks (importable with --model-path benchmarks)."""

from __future__ import annotations

import os

import torch
from torch import nn


class ImageNetSizedExits(nn.Module):
    """Cheap body, five 1000-class exits: logits the size of an ImageNet run, little compute."""

    def __init__(self, k: int = 5, c: int = 1000) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.ModuleList(nn.Linear(32, 32) for _ in range(k))
        self.heads = nn.ModuleList(nn.Linear(32, c) for _ in range(k))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        for body, head in zip(self.body, self.heads, strict=False):
            x = torch.relu(body(x))
            outs.append(head(x))
        return outs


def imagenet_sized() -> nn.Module:
    return ImageNetSizedExits()


class SyntheticVectors(torch.utils.data.Dataset):
    """N = $DYNCAL_BENCH_N random 32-d inputs, generated per item (no data held in memory)."""

    def __init__(self) -> None:
        self.n = int(os.environ.get("DYNCAL_BENCH_N", "1000"))

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        g = torch.Generator().manual_seed(i)
        return torch.randn(32, generator=g), i % 1000


def synthetic() -> torch.utils.data.Dataset:
    return SyntheticVectors()


class ConvExits(nn.Module):
    """A 4-exit CNN on 3x32x32 inputs with enough compute for overhead to be measurable."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        chans = [3, 32, 64, 128, 128]
        self.stages = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(a, b, 3, padding=1), nn.BatchNorm2d(b), nn.ReLU(), nn.Conv2d(b, b, 3, padding=1), nn.ReLU()
            )
            for a, b in zip(chans, chans[1:], strict=False)
        )
        self.heads = nn.ModuleList(nn.Linear(b, 100) for b in chans[1:])

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        for stage, head in zip(self.stages, self.heads, strict=False):
            x = stage(x)
            outs.append(head(x.mean(dim=(2, 3))))
        return outs


def conv_exits() -> nn.Module:
    return ConvExits().eval()
