"""Train the demo model deterministically and save ``digits_exitnet.pt``.

Run ``python -m dyncal.demo.train`` (about 20 s on 2 cores). All exits are trained jointly
with the sum of their cross-entropies, as multi-exit networks usually are.
"""

from __future__ import annotations

import sys

import torch
from torch import nn
from torch.utils.data import DataLoader

from dyncal.demo import WEIGHTS, DigitsExitNet, training, validation


def train(epochs: int = 30, seed: int = 0) -> DigitsExitNet:
    """Train a fresh :class:`DigitsExitNet` on the training split."""
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    net = DigitsExitNet()
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    loader = DataLoader(training(), batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(seed))
    loss_fn = nn.CrossEntropyLoss()
    for _ in range(epochs):
        net.train()
        for x, y in loader:
            # Random 1-pixel shifts: a little augmentation keeps the deep exits from overfitting.
            dx, dy = torch.randint(-1, 2, (2,)).tolist()
            x = torch.roll(x, shifts=(dx, dy), dims=(2, 3))
            loss = sum(loss_fn(out, y) for out in net(x))
            opt.zero_grad()
            loss.backward()
            opt.step()
        sched.step()
    return net.eval()


def main() -> None:
    """Train, report per-exit validation accuracy, save the weights."""
    net = train()
    x, y = validation().tensors
    with torch.inference_mode():
        accs = [float((o.argmax(1) == y).float().mean()) for o in net(x)]
    print("validation accuracy per exit:", [f"{a:.3f}" for a in accs], file=sys.stderr)
    torch.save(net.state_dict(), WEIGHTS)
    print(f"saved {WEIGHTS}", file=sys.stderr)


if __name__ == "__main__":
    main()
