"""Names the doctests in dyncal/ share, so each docstring shows its point rather than its setup."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest


@pytest.fixture(autouse=True, scope="session")
def _doctest_names(doctest_namespace: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> None:
    """``toy_run()``: a fresh run of 300 samples, K = 2 exits, C = 3 classes, 1 and 4 MMAC."""
    doctest_namespace["toy_run"] = _toy_run(tmp_path_factory)


def _toy_run(tmp_path_factory: pytest.TempPathFactory) -> Callable[[], Any]:
    def toy_run() -> Any:
        from dyncal.artifacts.run_import import import_arrays

        rng = np.random.default_rng(0)
        y = rng.integers(0, 3, 300)
        z = np.eye(3)[y][:, None, :] * [[1.0], [3.0]] + rng.normal(0, 1, (300, 2, 3))
        return import_arrays(z, y, tmp_path_factory.mktemp("toy_run") / "run", macs=[1e6, 4e6])

    return toy_run
