"""Per-request cost of dyncal's runners on the demo at batch 1: the lean stage calls against the old ones.

Run (prints a table; writes nothing):
    PYTHONPATH=. .venv/bin/python benchmarks/stage_call_overhead.py [--rows 300] [--rounds 7]

In one process, on the demo's first ``--rows`` rows (real digits, so the exits are the
solved ones): the early exit and the plain deployment written by hand (as in
latency_distribution.py), dyncal's runners over ``build_stages`` (what ``dyncal verify``
runs) and over an exported package (``load_early_exit``), each as it runs now (lean stage
calls, :mod:`dyncal.analysis.lean`) and as it ran before (every stage called as its module;
the package stages counting through ``nn.Module.__setattr__``, as before issue 21's fix).
Each callable is timed per pass over the rows, the callables alternated, fastest of
``--rounds`` passes; µs per request.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import torch  # noqa: E402
from latency_distribution import blocks_and_heads, hand_early_exit, hand_plain  # noqa: E402
from torch import nn  # noqa: E402

import dyncal  # noqa: E402
from dyncal.analysis.early_exit import EarlyExitRunner  # noqa: E402
from dyncal.analysis.plain import plain_deployment, plain_runner  # noqa: E402
from dyncal.analysis.stages import Stages, build_stages  # noqa: E402


class OldStageProgram(nn.Module):
    """The package stage as it was: counters through nn.Module attributes, the graph called as a module."""

    def __init__(self, new: Any) -> None:
        super().__init__()
        self._where, self._slots, self.graph = new._where, new._slots, new.graph
        self.calls = 0
        self.rows = 0

    def forward(self, *args: Any) -> Any:
        self.calls += 1
        if self._where is not None:
            i, d = self._where
            self.rows += int(args[i].shape[d])
        it = iter(args)
        return self.graph(*[next(it) if t is None else t for t in self._slots])


def old_stages(stages: Stages, package: bool) -> Stages:
    """The same stages, each called as its module (``callers`` pinned to the modules)."""
    from dyncal.analysis.package_runner import _Chain

    mods = list(stages.modules)
    if package:
        mods = [
            _Chain([OldStageProgram(p) for p in m.parts]) if isinstance(m, _Chain) else OldStageProgram(m) for m in mods
        ]
    old = Stages(mods, **stages.layout())
    old.__dict__["callers"] = tuple(mods)  # what StageRun.step called before
    return old


def time_all(fns: dict[str, Callable[[torch.Tensor], Any]], xs: list[torch.Tensor], rounds: int) -> dict[str, float]:
    best = dict.fromkeys(fns, float("inf"))
    with torch.inference_mode():
        for f in fns.values():
            for x in xs[:20]:
                f(x)
        for r in range(rounds):
            for name in list(fns) if r % 2 == 0 else reversed(list(fns)):
                f = fns[name]
                t0 = time.perf_counter_ns()
                for x in xs:
                    f(x)
                best[name] = min(best[name], (time.perf_counter_ns() - t0) / len(xs) / 1e3)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--rows", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    torch.set_num_threads(1)
    sys.path.insert(0, str(HERE.parent / "tests"))
    from conftest import solved_demo  # the tests' demo pipeline: collect, profile, solve 0.5x, export

    from dyncal.data import load_dataset
    from dyncal.demo import pretrained
    from dyncal.verbs.demo import DEMO_DATA

    with tempfile.TemporaryDirectory() as tmp:
        _, th = solved_demo(Path(tmp), export=True)
        pkg = dyncal.load_early_exit(Path(tmp) / "pkg")
    ds = load_dataset(DEMO_DATA)
    xs = [ds[i][0].unsqueeze(0) for i in range(args.rows)]
    net = pretrained().eval()
    parts = blocks_and_heads(net)
    example = torch.cat(xs[:2])
    stages = build_stages(net, example)
    plain = plain_deployment(stages, model=net, example=example)
    pkg_plain = pkg.plain_runner()
    old_package = copy.copy(pkg)  # the package runner (its input checks too) over the old stage calls
    old_package.stages = old_stages(pkg.stages, True)
    fns: dict[str, Callable[[torch.Tensor], Any]] = {
        "hand early exit": hand_early_exit(parts, list(th.thresholds), list(th.temperatures)),
        "verify runner, lean": EarlyExitRunner(stages, th.thresholds, th.temperatures, th.score),
        "verify runner, old": EarlyExitRunner(old_stages(stages, False), th.thresholds, th.temperatures, th.score),
        "package runner, lean": pkg,
        "package runner, old": old_package,
        "hand plain": hand_plain(parts),
        "verify plain, lean": plain_runner(plain, th.score),
        "verify plain, old": plain_runner(old_stages(plain, False), th.score),
        "package plain, lean": pkg_plain,
        "package plain, old": plain_runner(old_stages(pkg_plain.stages, True), th.score),
    }
    load = os.getloadavg()[0]
    best = time_all(fns, xs, args.rounds)
    hand = {"early": best["hand early exit"], "plain": best["hand plain"]}
    print(f"demo, batch 1, {args.rows} rows, 1 thread, fastest of {args.rounds} passes; load average {load:.2f}")
    print(f"{'':24s} {'µs/request':>10s} {'/ hand':>7s}")
    for name, us in best.items():
        ref = hand["plain"] if "plain" in name else hand["early"]
        print(f"{name:24s} {us:10.1f} {us / ref:7.2f}")


if __name__ == "__main__":
    main()
