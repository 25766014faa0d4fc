"""Train a small 4-exit CNN on Fashion-MNIST and cache its test-set logits.

Deterministic (fixed seeds, one thread, deterministic algorithms); a few minutes of CPU.
Reads the IDX files of Debian's ``dataset-fashion-mnist`` package
(``/usr/share/datasets/fashion-mnist``). Writes ``benchmarks/fashion_mnist_logits.npz``
with ``logits`` (10000, 4, 10) float32, ``labels`` (10000,) and ``macs`` (4,)
cumulative multiply-accumulates per exit (fvcore, heads of earlier exits included).

Usage: python benchmarks/fashion_mnist_model.py [--epochs 4]
"""

from __future__ import annotations

import argparse
import gzip
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

DATA = Path("/usr/share/datasets/fashion-mnist")
OUT = Path(__file__).with_name("fashion_mnist_logits.npz")


def read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as fh:
        raw = fh.read()
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU())


def head(c_in: int) -> nn.Sequential:
    return nn.Sequential(nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(4 * c_in, 10))


class FashionExitNet(nn.Module):
    """Four exits on increasingly deep features of a 1x28x28 image."""

    def __init__(self) -> None:
        super().__init__()
        self.s1 = nn.Sequential(block(1, 8), nn.MaxPool2d(2))  # 14x14
        self.s2 = nn.Sequential(block(8, 16), nn.MaxPool2d(2))  # 7x7
        self.s3 = nn.Sequential(block(16, 32), block(32, 32))  # 7x7
        self.s4 = nn.Sequential(block(32, 64), block(64, 64), nn.MaxPool2d(2))  # 3x3
        self.h = nn.ModuleList([head(8), head(16), head(32), head(64)])

    def forward(self, x: torch.Tensor, upto: int = 4) -> list[torch.Tensor]:
        outs = []
        for i, stage in enumerate((self.s1, self.s2, self.s3, self.s4)[:upto]):
            x = stage(x)
            outs.append(self.h[i](x))
        return outs


class _Upto(nn.Module):
    def __init__(self, net: FashionExitNet, k: int) -> None:
        super().__init__()
        self.net, self.k = net, k

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.net(x, upto=self.k)


def cumulative_macs(net: FashionExitNet) -> list[float]:
    from fvcore.nn import FlopCountAnalysis

    x = torch.zeros(1, 1, 28, 28)
    out = []
    for k in range(1, 5):
        fca = FlopCountAnalysis(_Upto(net, k), x)
        fca.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        out.append(float(fca.total()))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=4)
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    xtr = read_idx(DATA / "train-images-idx3-ubyte.gz").astype(np.float32) / 255.0
    ytr = read_idx(DATA / "train-labels-idx1-ubyte.gz").astype(np.int64)
    xte = read_idx(DATA / "t10k-images-idx3-ubyte.gz").astype(np.float32) / 255.0
    yte = read_idx(DATA / "t10k-labels-idx1-ubyte.gz").astype(np.int64)
    mean, std = 0.286, 0.353
    xtr_t = torch.from_numpy((xtr - mean) / std)[:, None]
    xte_t = torch.from_numpy((xte - mean) / std)[:, None]
    ytr_t = torch.from_numpy(ytr)
    net = FashionExitNet()
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4, nesterov=True)
    steps = args.epochs * (len(ytr) // 128)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=steps)
    gen = torch.Generator().manual_seed(0)
    t0 = time.perf_counter()
    net.train()
    for epoch in range(args.epochs):
        order = torch.randperm(len(ytr), generator=gen)
        for b in range(len(ytr) // 128):
            idx = order[b * 128 : (b + 1) * 128]
            outs = net(xtr_t[idx])
            loss = sum(nn.functional.cross_entropy(o, ytr_t[idx]) for o in outs)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        print(
            f"epoch {epoch + 1}: loss {loss.item():.3f} ({time.perf_counter() - t0:.0f}s)",
            flush=True,
        )
    net.eval()
    with torch.no_grad():
        logits = torch.stack([torch.stack(net(xte_t[i : i + 1000]), 1) for i in range(0, 10000, 1000)])
    logits = logits.reshape(10000, 4, 10).numpy()
    acc = (logits.argmax(-1) == yte[:, None]).mean(0)
    macs = cumulative_macs(net)
    print("per-exit test accuracy:", np.round(acc, 4).tolist(), "cumulative MACs:", macs)
    np.savez_compressed(OUT, logits=logits.astype(np.float32), labels=yte, macs=np.array(macs))
    print(f"wrote {OUT} ({OUT.stat().st_size / 1e6:.2f} MB) in {time.perf_counter() - t0:.0f}s")


if __name__ == "__main__":
    main()
