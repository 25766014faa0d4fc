"""Data factories for the integrity tests, importable as ``trust_data:<factory>`` (``--model-path tests``).

All yield the same 53 items (4 features, labels in [0, 3), for ``toy_models:two_exit``);
they differ in what happens on the way, which makes concurrency and crashes deterministic:

- ``killing`` SIGKILLs its own process when it reaches item ``$DYNCAL_TEST_KILL_AT``;
- ``gated`` stops at item ``GATE_AT`` until the file ``$DYNCAL_TEST_GATE/go`` exists, after
  writing ``$DYNCAL_TEST_GATE/ready``: a writer caught in the middle of a run;
- ``$DYNCAL_TEST_SHIFT`` shifts every input (the "same" data set, changed).
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import torch

N = 53
GATE_AT = 12


class _Items(torch.utils.data.Dataset):
    def __init__(self, hook: Callable[[int], None] | None = None) -> None:
        g = torch.Generator().manual_seed(7)
        self.x = torch.randn(N, 4, generator=g) + float(os.environ.get("DYNCAL_TEST_SHIFT", "0"))
        self.y = torch.randint(0, 3, (N,), generator=g)
        self.hook = hook

    def __len__(self) -> int:
        return N

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        if self.hook is not None:
            self.hook(i)
        return self.x[i], int(self.y[i])


def plain() -> torch.utils.data.Dataset:
    return _Items()


def _kill_at(i: int) -> None:
    if i == int(os.environ.get("DYNCAL_TEST_KILL_AT", "-1")):
        os.kill(os.getpid(), signal.SIGKILL)


def killing() -> torch.utils.data.Dataset:
    return _Items(_kill_at)


def _wait_at_gate(i: int) -> None:
    gate = os.environ.get("DYNCAL_TEST_GATE")
    if gate is None or i != GATE_AT:
        return
    Path(gate, "ready").touch()
    deadline = time.monotonic() + 120
    while not Path(gate, "go").exists():
        if time.monotonic() > deadline:
            raise RuntimeError("the test never opened the gate")
        time.sleep(0.02)


def gated() -> torch.utils.data.Dataset:
    return _Items(_wait_at_gate)
