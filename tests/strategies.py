"""Hypothesis strategies shared by the property tests."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from hypothesis import strategies as st


class ExitCase(NamedTuple):
    """Fit samples of a threshold problem and budgets to solve it at."""

    scores: np.ndarray  # (N, K), few distinct levels when drawn so: many ties
    correct: np.ndarray  # (N, K) bool
    costs: np.ndarray  # (K,) cumulative, increasing
    budgets: list[float]  # ascending, from exit 1's cost to the last exit's


SHAPES = ("monotone", "noise", "nonmonotone")


@st.composite
def exit_problems(draw: st.DrawFn, max_n: int = 300, max_k: int = 5, shapes: tuple[str, ...] = SHAPES) -> ExitCase:
    """Scores of K = 2..``max_k`` exits, N = 4..``max_n`` samples, correctness, costs and sorted budgets.

    Scores are rounded to 3, 10 or 1000 levels, so ties and near-empty cuts are common; the
    exits' accuracies follow one of ``shapes``:

    * ``monotone``: informative scores, later exits more confident and more often right, as
      well-trained early-exit models are;
    * ``noise``: scores that say nothing, per-exit accuracies in any order;
    * ``nonmonotone``: informative scores and errors shared across exits (a hard sample is
      hard everywhere), with per-exit accuracies drawn in any order: the first exit may be
      the best, a middle or the last one the worst (issue 17's models).
    """
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    n = draw(st.integers(4, max_n))
    k = draw(st.integers(2, max_k))
    levels = draw(st.sampled_from([3, 10, 1000]))
    shape = draw(st.sampled_from(shapes))
    if shape == "monotone":
        skill = rng.uniform(0, 1, (n, 1)) + np.linspace(0, 1, k)[None, :]
        correct = rng.uniform(0, 2, (n, k)) < skill
        raw = 0.3 * skill + rng.normal(0, 0.2, (n, k)) + 0.2 * correct
    elif shape == "noise":
        correct = rng.uniform(size=(n, k)) < rng.uniform(0.3, 0.95, size=k)
        raw = rng.uniform(size=(n, k))
    else:
        accuracy = rng.uniform(0.3, 0.95, size=k)  # in any order
        shared = rng.uniform(0.5, 0.95)
        ease = shared * rng.normal(size=(n, 1)) + np.sqrt(1 - shared**2) * rng.normal(size=(n, k))
        correct = ease > np.array([np.quantile(ease[:, j], 1 - accuracy[j]) for j in range(k)])[None, :]
        raw = 0.15 * ease + rng.normal(0, 0.15, (n, k)) + 0.5
    scores = np.floor(np.clip(raw, 0.0, 0.999) * levels) / levels
    costs = np.cumsum(rng.uniform(0.1, 2.0, size=k))
    fractions = sorted(draw(st.lists(st.floats(0.0, 1.0), min_size=1, max_size=5)))
    return ExitCase(scores, correct, costs, [float(costs[0] + f * (costs[-1] - costs[0])) for f in fractions])
