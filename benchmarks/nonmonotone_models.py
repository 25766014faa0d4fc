"""Train multi-exit models whose exits are *not* monotone in accuracy, and cache their logits.

dyncal issue 17: on a ResNet-18 with two heads whose exits score 70.3 / 68.3 / 67.6 % (the
first exit best, as with undertrained deep exits), ``dyncal solve`` chose thresholds that
lose to exit 1 alone. These models reproduce that shape on offline data, for
``heldout_comparison.py``:

``fmnist_early_best`` (Fashion-MNIST, 3 exits, exit 1 best)
    A well-trained first stage and head; the deeper stages read its features through a
    4-channel 1x1 bottleneck and are *undertrained*: the first stage is frozen after its
    own training and the deep stages get a short run of their own (``DEEP_STEPS`` steps).
``fmnist_v`` (Fashion-MNIST, 4 exits, V-shaped: a weak exit 2)
    A backbone trained jointly on all exits, but exit 2's head reads its stage through a
    1-channel bottleneck with heavy dropout (far below exit 1), and stage 3 is frozen
    random convolutions (its head and the stage after it are trained).
``fmnist_weak_last`` (Fashion-MNIST, 4 exits, the last exit weak)
    The 4-exit CNN of ``fashion_mnist_model.py``, its first three stages and heads trained
    jointly, then frozen while the last stage and head get a short run of their own
    (``LAST_STEPS`` steps, undertrained): exit 4 costs the most and is worse than exit 3.
``digits_early_best`` (scikit-learn digits, 3 exits, exit 1 best)
    A small CNN whose first stage and head are trained; the later stages are frozen random
    convolutions behind a 1-channel bottleneck (their batch-norm statistics adapt), only
    their heads are trained. Logits for all
    1,797 digits are out-of-fold (5 folds, each fold scored by a model trained on the others).

Deterministic (fixed seeds, one thread, deterministic algorithms); each model trains in
one to two minutes of CPU on one core (about 4 for all four). Fashion-MNIST comes from Debian's ``dataset-fashion-mnist``
(``/usr/share/datasets/fashion-mnist``), digits from scikit-learn; nothing is downloaded.
Writes ``benchmarks/<name>_logits.npz`` with ``logits`` (N, K, 10) float32, ``labels`` (N,)
and ``macs`` (K,) cumulative multiply-accumulates per exit (fvcore, earlier heads included).

Usage: python benchmarks/nonmonotone_models.py [--only NAME]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from fashion_mnist_model import DATA, read_idx
from torch import nn

HERE = Path(__file__).parent
DEEP_STEPS = 150
LAST_STEPS = 60


def first_eval(mods: tuple[nn.Module, ...]) -> Callable[[], None]:
    """Puts frozen modules back in eval mode after ``net.train()`` (their batch-norm statistics stay)."""

    def put() -> None:
        for m in mods:
            m.eval()

    return put


def block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU())


def head(c_in: int, dropout: float = 0.0) -> nn.Sequential:
    return nn.Sequential(nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Dropout(dropout), nn.Linear(4 * c_in, 10))


def bottleneck(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU())


class StagedExits(nn.Module):
    """Exits on a chain of stages: exit k reads stage k's output through head k."""

    def __init__(self, stages: list[nn.Module], heads: list[nn.Module]) -> None:
        super().__init__()
        self.stages = nn.ModuleList(stages)
        self.heads = nn.ModuleList(heads)

    def forward(self, x: torch.Tensor, upto: int | None = None) -> list[torch.Tensor]:
        outs = []
        for stage, h in list(zip(self.stages, self.heads, strict=True))[: upto or len(self.stages)]:
            x = stage(x)
            outs.append(h(x))
        return outs


class _Upto(nn.Module):
    def __init__(self, net: StagedExits, k: int) -> None:
        super().__init__()
        self.net, self.k = net, k

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.net(x, upto=self.k)


def cumulative_macs(net: StagedExits, shape: tuple[int, ...]) -> list[float]:
    from fvcore.nn import FlopCountAnalysis

    x = torch.zeros(1, *shape)
    out = []
    for k in range(1, len(net.stages) + 1):
        fca = FlopCountAnalysis(_Upto(net.eval(), k), x)
        fca.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        out.append(float(fca.total()))
    return out


def train(
    net: StagedExits,
    x: torch.Tensor,
    y: torch.Tensor,
    params: list[nn.Parameter],
    weights: list[float],
    steps: int,
    lr: float,
    seed: int,
    batch: int = 128,
    train_modules: Callable[[], None] | None = None,
) -> None:
    """SGD with a one-cycle schedule on ``sum_k weights[k] * CE(exit k)`` over ``params`` only."""
    opt = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=5e-4, nesterov=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    gen = torch.Generator().manual_seed(seed)
    n = len(y)
    order = torch.randperm(n, generator=gen)
    pos = 0
    for _ in range(steps):
        if pos + batch > n:
            order, pos = torch.randperm(n, generator=gen), 0
        idx = order[pos : pos + batch]
        pos += batch
        net.train()
        if train_modules is not None:
            train_modules()
        outs = net(x[idx], upto=max(k + 1 for k, w in enumerate(weights) if w))
        loss = sum(w * nn.functional.cross_entropy(o, y[idx]) for w, o in zip(weights, outs, strict=False) if w)
        opt.zero_grad()
        loss.backward()  # type: ignore[union-attr]
        opt.step()
        sched.step()


def _freeze(m: nn.Module) -> list[nn.Parameter]:
    for p in m.parameters():
        p.requires_grad_(False)
    return []


def _params(*mods: nn.Module) -> list[nn.Parameter]:
    return [p for m in mods for p in m.parameters() if p.requires_grad]


@torch.no_grad()
def logits_of(net: StagedExits, x: torch.Tensor) -> np.ndarray:
    net.eval()
    return torch.cat([torch.stack(net(x[i : i + 1000]), 1) for i in range(0, len(x), 1000)]).numpy()


def fashion() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, np.ndarray]:
    xtr = read_idx(DATA / "train-images-idx3-ubyte.gz").astype(np.float32) / 255.0
    ytr = read_idx(DATA / "train-labels-idx1-ubyte.gz").astype(np.int64)
    xte = read_idx(DATA / "t10k-images-idx3-ubyte.gz").astype(np.float32) / 255.0
    yte = read_idx(DATA / "t10k-labels-idx1-ubyte.gz").astype(np.int64)
    mean, std = 0.286, 0.353
    return (
        torch.from_numpy((xtr - mean) / std)[:, None],
        torch.from_numpy(ytr),
        torch.from_numpy((xte - mean) / std)[:, None],
        yte,
    )


def fmnist_early_best() -> tuple[np.ndarray, np.ndarray, list[float]]:
    torch.manual_seed(0)
    xtr, ytr, xte, yte = fashion()
    s1 = nn.Sequential(block(1, 16), nn.MaxPool2d(2), block(16, 32), nn.MaxPool2d(2))  # 7x7
    s2 = nn.Sequential(bottleneck(32, 4), block(4, 48), block(48, 48))
    s3 = nn.Sequential(block(48, 64), block(64, 64), nn.MaxPool2d(2))
    net = StagedExits([s1, s2, s3], [head(32), head(48), head(64)])
    train(net, xtr, ytr, _params(s1, net.heads[0]), [1.0], steps=900, lr=0.1, seed=0)
    _freeze(s1)
    deep = _params(s2, s3, net.heads[1], net.heads[2])
    train(net, xtr, ytr, deep, [0.0, 1.0, 1.0], steps=DEEP_STEPS, lr=0.05, seed=1, train_modules=lambda: s1.eval())
    return logits_of(net, xte), yte, cumulative_macs(net, (1, 28, 28))


def fmnist_v() -> tuple[np.ndarray, np.ndarray, list[float]]:
    torch.manual_seed(0)
    xtr, ytr, xte, yte = fashion()
    s1 = nn.Sequential(block(1, 8), nn.MaxPool2d(2))  # 14x14
    s2 = nn.Sequential(block(8, 16), nn.MaxPool2d(2))  # 7x7
    s3 = nn.Sequential(block(16, 32), block(32, 32))  # 7x7, frozen random
    s4 = nn.Sequential(block(32, 64), block(64, 64), nn.MaxPool2d(2))
    h2 = nn.Sequential(bottleneck(16, 1), head(1, dropout=0.5))
    net = StagedExits([s1, s2, s3, s4], [head(8), h2, head(32), head(64)])
    _freeze(s3)
    train(
        net,
        xtr,
        ytr,
        _params(net),
        [1.0, 1.0, 1.0, 1.0],
        steps=1400,
        lr=0.1,
        seed=0,
    )
    return logits_of(net, xte), yte, cumulative_macs(net, (1, 28, 28))


def fmnist_weak_last() -> tuple[np.ndarray, np.ndarray, list[float]]:
    torch.manual_seed(0)
    xtr, ytr, xte, yte = fashion()
    s1 = nn.Sequential(block(1, 8), nn.MaxPool2d(2))  # 14x14
    s2 = nn.Sequential(block(8, 16), nn.MaxPool2d(2))  # 7x7
    s3 = nn.Sequential(block(16, 32), block(32, 32))  # 7x7
    s4 = nn.Sequential(block(32, 64), block(64, 64), nn.MaxPool2d(2))
    net = StagedExits([s1, s2, s3, s4], [head(8), head(16), head(32), head(64)])
    first = (s1, s2, s3, *net.heads[:3])
    train(net, xtr, ytr, _params(*first), [1.0, 1.0, 1.0], steps=1400, lr=0.1, seed=0)
    for m in first:
        _freeze(m)
    last = _params(s4, net.heads[3])
    train(net, xtr, ytr, last, [0.0, 0.0, 0.0, 1.0], steps=LAST_STEPS, lr=0.05, seed=1, train_modules=first_eval(first))
    return logits_of(net, xte), yte, cumulative_macs(net, (1, 28, 28))


def digits_early_best() -> tuple[np.ndarray, np.ndarray, list[float]]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.from_numpy(((d.images.astype(np.float32) / 16.0 - 0.5) / 0.5)[:, None])
    y = torch.from_numpy(d.target.astype(np.int64))
    n = len(y)
    folds = np.random.default_rng(0).permutation(n) % 5
    out = np.zeros((n, 3, 10), dtype=np.float32)
    net = None
    for f in range(5):
        torch.manual_seed(f)
        s1 = nn.Sequential(block(1, 4), block(4, 8))  # 8x8
        s2 = nn.Sequential(bottleneck(8, 1), block(1, 48), nn.MaxPool2d(2), block(48, 48))  # frozen random
        s3 = nn.Sequential(block(48, 96), block(96, 96))  # frozen random
        net = StagedExits([s1, s2, s3], [head(8), head(48), head(96)])
        _freeze(s2)
        _freeze(s3)
        tr = torch.from_numpy(np.flatnonzero(folds != f))
        te = torch.from_numpy(np.flatnonzero(folds == f))
        train(net, x[tr], y[tr], _params(s1, net.heads[0]), [1.0], steps=150, lr=0.05, seed=f, batch=64)
        train(
            net,
            x[tr],
            y[tr],
            _params(net.heads[1], net.heads[2]),
            [0.0, 1.0, 1.0],
            steps=200,
            lr=0.05,
            seed=f,
            batch=64,
            train_modules=s1.eval,
        )
        out[te.numpy()] = logits_of(net, x[te])
    assert net is not None
    return out, d.target.astype(np.int64), cumulative_macs(net, (1, 8, 8))


MODELS: dict[str, Callable[[], tuple[np.ndarray, np.ndarray, list[float]]]] = {
    "fmnist_early_best": fmnist_early_best,
    "fmnist_v": fmnist_v,
    "fmnist_weak_last": fmnist_weak_last,
    "digits_early_best": digits_early_best,
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", choices=sorted(MODELS))
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    for name, build in MODELS.items():
        if args.only and name != args.only:
            continue
        t0 = time.perf_counter()
        logits, labels, macs = build()
        acc = (logits.argmax(-1) == labels[:, None]).mean(0)
        out = HERE / f"{name}_logits.npz"
        np.savez_compressed(out, logits=logits.astype(np.float32), labels=labels, macs=np.array(macs))
        print(
            f"{name}: per-exit accuracy {np.round(acc, 4).tolist()}, cumulative MACs {[int(m) for m in macs]}; "
            f"wrote {out.name} ({out.stat().st_size / 1e6:.2f} MB) in {time.perf_counter() - t0:.0f}s",
            flush=True,
        )


if __name__ == "__main__":
    main()
