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


class CpuHeavyExits(nn.Module):
    """A 5-exit CNN on 3x32x32 inputs whose stages are compute-bound on a CPU (107 MMAC per sample).

    Stages widen and (after the second) halve the resolution, as ResNet-style backbones do;
    each exit is a pooled linear head over 10 classes. Deterministic weights from a seed
    (untrained: the benchmarks time it, the exit rule still spreads samples over the exits).
    """

    def __init__(self, n_classes: int = 10) -> None:
        super().__init__()
        torch.manual_seed(0)
        chans = [3, 24, 48, 64, 96, 128]
        strides = [1, 1, 2, 1, 2]
        self.stages = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(a, b, 3, stride=s, padding=1, bias=False),
                nn.BatchNorm2d(b),
                nn.ReLU(),
                nn.Conv2d(b, b, 3, padding=1, bias=False),
                nn.BatchNorm2d(b),
                nn.ReLU(),
            )
            for a, b, s in zip(chans[:-1], chans[1:], strides, strict=True)
        )
        self.heads = nn.ModuleList(nn.Linear(b, n_classes) for b in chans[1:])

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        for stage, head in zip(self.stages, self.heads, strict=True):
            x = stage(x)
            outs.append(head(x.mean(dim=(2, 3))))
        return outs


def cpu_heavy() -> nn.Module:
    return CpuHeavyExits().eval()


class SyntheticImages(torch.utils.data.Dataset):
    """N = $DYNCAL_BENCH_N (default 512) random 3x32x32 images, generated per item; label i % 10."""

    def __init__(self) -> None:
        self.n = int(os.environ.get("DYNCAL_BENCH_N", "512"))

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        g = torch.Generator().manual_seed(i)
        # a per-image scale so that confidence varies between samples and exits differ
        return torch.randn(3, 32, 32, generator=g) * (0.25 + 2.0 * (i % 7) / 6), i % 10


def synthetic_images() -> torch.utils.data.Dataset:
    return SyntheticImages()


# ---------------------------------------------------------------- the pipeline the latency benchmarks share

HERE = os.path.dirname(os.path.abspath(__file__))

PIPELINES = {
    # name: (model spec, weights, data spec, model path)
    "demo": ("dyncal.demo:DigitsExitNet", "WEIGHTS", "dyncal.demo:validation", None),
    "cpu_heavy": ("bench_models:cpu_heavy", None, "bench_models:synthetic_images", HERE),
}


def prepare_pipeline(
    name: str,
    workdir: str,
    *,
    threads: int | None = 1,
    profile_repeats: int = 25,
    budget: str = "0.5x",
    batch_sizes: tuple[int, ...] = (1, 32),
) -> tuple[str, object]:
    """collect -> profile -> solve for one of :data:`PIPELINES`; returns ``(run dir, thresholds)``."""
    from dyncal.artifacts.run import load_run
    from dyncal.calibrate.solvers import solve_run
    from dyncal.data import load_dataset
    from dyncal.demo import WEIGHTS
    from dyncal.models import load_model
    from dyncal.verbs.collect import collect_run
    from dyncal.verbs.profile import ProfileOptions, profile_run

    spec, weights, data, model_path = PIPELINES[name]
    weights = str(WEIGHTS) if weights == "WEIGHTS" else weights
    run_dir = os.path.join(workdir, name)
    loaded = load_model(spec, weights=weights, model_path=model_path)
    collect_run(loaded, load_dataset(data, search_path=model_path), run_dir, data_spec=data, batch_size=64)
    profile_run(
        run_dir,
        options=ProfileOptions(
            batch_sizes=batch_sizes, threads=threads, repeats=profile_repeats, warmup=3 if profile_repeats < 10 else 5
        ),
    )
    return run_dir, solve_run(load_run(run_dir), budget)
