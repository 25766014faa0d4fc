"""Static models (one output) on the demo's digits, importable as ``static_models:<factory>``
(the tests pass ``--model-path tests``): the alternatives ``dyncal report --compare`` judges.

* ``demo_last_exit`` — the demo model's stages and last head only: its exit 4 as a plain
  classifier (the early exit's "just run the whole model" alternative).
* ``small_digits_cnn`` — a much smaller CNN trained here on the demo's training digits,
  deterministically, in about a second.
"""

from __future__ import annotations

import functools

import torch
from torch import nn

# fvcore MACs per 1x8x8 sample, counted by hand (conv: k*k*c_in*c_out*h*w; linear: in*out).
# demo_last_exit: the demo's exit-4 cumulative MACs (9,897,280) less heads 1-3 (8*4*10,
# 32*4*10, 96*4*10), which it no longer runs.
DEMO_LAST_EXIT_MACS = 9_897_280 - (320 + 1280 + 3840)
# small_digits_cnn: conv 3*3*1*4 on 8x8 (2,304) + linear 4*4*4 -> 10 (640).
SMALL_CNN_MACS = 2_304 + 640


class DemoLastExit(nn.Module):
    """The demo's :class:`DigitsExitNet` computing its last exit only."""

    def __init__(self) -> None:
        super().__init__()
        from dyncal.demo import pretrained

        self.net = pretrained()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = self.net
        return n.head4(n.stage4(n.stage3(n.stage2(n.stage1(x)))))


def demo_last_exit() -> nn.Module:
    return DemoLastExit().eval()


class SmallDigitsCNN(nn.Module):
    """Conv(1->4, 3x3) -> ReLU -> AvgPool(2) -> Linear(64 -> 10)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1, bias=False)
        self.pool = nn.AvgPool2d(2)
        self.fc = nn.Linear(4 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(torch.relu(self.conv(x))).flatten(1))


@functools.cache
def _trained_state() -> dict[str, torch.Tensor]:
    """Full-batch Adam on the 1,000 training digits, seeded (one training per process)."""
    from dyncal.demo import training

    ds = training()
    x, y = ds.tensors
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny steps: more threads only wait for each other on a busy machine
    try:
        torch.manual_seed(0)
        net = SmallDigitsCNN()
        opt = torch.optim.Adam(net.parameters(), lr=0.05)
        loss_fn = nn.CrossEntropyLoss()
        for _ in range(60):
            opt.zero_grad()
            loss_fn(net(x), y).backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def small_digits_cnn() -> nn.Module:
    net = SmallDigitsCNN()
    net.load_state_dict(_trained_state())
    return net.eval()
