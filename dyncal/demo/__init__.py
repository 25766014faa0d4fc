"""The embedded default: a small real multi-exit CNN on scikit-learn's handwritten digits.

Nothing is downloaded: the data set ships with scikit-learn and the trained weights
(``digits_exitnet.pt``, made by ``python -m dyncal.demo.train``) ship with dyncal.

* ``dyncal.demo:pretrained`` — the trained :class:`DigitsExitNet` (4 exits);
* ``dyncal.demo:validation`` — the 797 digits held out of training;
* ``dyncal.demo:training`` — the 1,000 digits it was trained on.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import TensorDataset

__all__ = ["DigitsExitNet", "pretrained", "validation", "training", "WEIGHTS", "N_TRAIN"]

WEIGHTS = Path(__file__).with_name("digits_exitnet.pt")
N_TRAIN = 1000
_SPLIT_SEED = 0


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class _Head(nn.Sequential):
    def __init__(self, c_in: int, n_classes: int) -> None:
        super().__init__(nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(4 * c_in, n_classes))


class DigitsExitNet(nn.Module):
    """A 4-exit CNN for 1x8x8 digit images; each exit reads a deeper feature map.

    ``forward(x)`` returns a list of four ``(B, 10)`` logits tensors, exit 1 first.

    Example:
        >>> net = DigitsExitNet().eval()
        >>> [tuple(o.shape) for o in net(torch.zeros(2, 1, 8, 8))]
        [(2, 10), (2, 10), (2, 10), (2, 10)]
    """

    def __init__(self, n_classes: int = 10) -> None:
        super().__init__()
        self.stage1 = _block(1, 8)  # 8x8
        self.stage2 = _block(8, 32)  # 8x8
        self.stage3 = nn.Sequential(nn.MaxPool2d(2), _block(32, 96), _block(96, 96))  # 4x4
        self.stage4 = nn.Sequential(_block(96, 192), _block(192, 192))  # 4x4
        self.head1 = _Head(8, n_classes)
        self.head2 = _Head(32, n_classes)
        self.head3 = _Head(96, n_classes)
        self.head4 = _Head(192, n_classes)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Logits of the four exits, cheapest first."""
        f1 = self.stage1(x)
        f2 = self.stage2(f1)
        f3 = self.stage3(f2)
        f4 = self.stage4(f3)
        return [self.head1(f1), self.head2(f2), self.head3(f3), self.head4(f4)]


def pretrained() -> DigitsExitNet:
    """The trained demo model in eval mode (weights shipped with dyncal)."""
    net = DigitsExitNet()
    net.load_state_dict(torch.load(WEIGHTS, map_location="cpu", weights_only=True))
    return net.eval()


def _digits(train: bool) -> TensorDataset:
    """The training or the held-out digits as ``(image (1, 8, 8), label)`` items."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images.astype(np.float32) / 16.0 - 0.5) / 0.5
    y = digits.target.astype(np.int64)
    order = np.random.default_rng(_SPLIT_SEED).permutation(len(y))
    rows = order[:N_TRAIN] if train else order[N_TRAIN:]
    return TensorDataset(torch.from_numpy(x[rows, None]), torch.from_numpy(y[rows]))


def training() -> TensorDataset:
    """The 1,000 training digits as ``(image (1, 8, 8), label)`` items."""
    return _digits(train=True)


def validation() -> TensorDataset:
    """The 797 held-out digits as ``(image (1, 8, 8), label)`` items."""
    return _digits(train=False)
