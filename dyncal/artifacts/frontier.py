"""frontier.csv: the table ``dyncal frontier`` writes (:func:`dyncal.calibrate.frontier.compute_frontier`).

This module alone names its columns and writes it; :mod:`dyncal.artifacts.outputs`
recognises a file it wrote by its header.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

from dyncal.artifacts.atomic import atomic_write_text

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["frontier_columns", "write_frontier_csv"]


def frontier_columns(k: int, latency_keys: Sequence[str]) -> list[str]:
    """The frontier table's columns, in order.

    Example:
        >>> frontier_columns(2, ["cpu/b1"])[-3:]
        ['ms:cpu/b1', 'share_1', 'share_2']
    """
    return [
        "method",
        "exit",
        "budget_fraction",
        "budget_macs",
        "thresholds",
        "fitted_accuracy",
        "holdout_accuracy",
        "holdout_ci_low",
        "holdout_ci_high",
        "expected_macs",
        "expected_fraction",
        *[f"ms:{key}" for key in latency_keys],
        *[f"share_{j + 1}" for j in range(k)],
    ]


def write_frontier_csv(df: pd.DataFrame, path: str | os.PathLike[str]) -> None:
    """Write a frontier table as CSV, atomically.

    Example:
        >>> import tempfile, pathlib
        >>> import pandas as pd
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "f.csv"
        >>> write_frontier_csv(pd.DataFrame({"method": ["optimal"]}), p)
        >>> p.read_text().splitlines()[0]
        'method'
    """
    atomic_write_text(path, df.to_csv(index=False))
