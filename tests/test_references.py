"""dyncal's statistics against independent reference implementations on shared seeded inputs.

References: torchmetrics (ECE), MAPIE's Learn-then-Test Hoeffding-Bentkus p-value, exact
binomial sums in integers, an NLL minimised by scipy on torch's cross-entropy (temperature
scaling), and the torch scores the real early exit computes (against the numpy scores the
solver uses).
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import torch

from dyncal.analysis.calibration import expected_calibration_error
from dyncal.calibrate.risk import binomial_pvalue, hoeffding_bentkus_pvalue
from dyncal.calibrate.scores import exit_scores
from dyncal.calibrate.temperature import TemperatureScaler
from dyncal.choices import Score


def _logits(seed: int, n: int = 2000, k: int = 3, c: int = 7) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, c, n)
    z = rng.normal(0, 1.5, (n, k, c))
    z[np.arange(n), :, labels] += rng.uniform(0, 4, (n, 1))
    return z.astype(np.float32), labels


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ece_matches_torchmetrics(seed):
    from torchmetrics.functional.classification import multiclass_calibration_error

    z, y = _logits(seed)
    probs = torch.softmax(torch.from_numpy(z[:, 1]), dim=1)
    conf, pred = probs.max(dim=1)
    ours = expected_calibration_error(conf.numpy(), (pred.numpy() == y), n_bins=15)
    ref = multiclass_calibration_error(probs, torch.from_numpy(y), num_classes=7, n_bins=15, norm="l1")
    assert ours == pytest.approx(float(ref), abs=1e-6)


def test_binomial_pvalue_matches_an_exact_sum():
    def exact(losses: int, n: int, rate: Fraction) -> float:
        return float(sum(math.comb(n, i) * rate**i * (1 - rate) ** (n - i) for i in range(losses + 1)))

    for losses, n, rate in [(0, 100, Fraction(1, 20)), (3, 500, Fraction(1, 100)), (40, 300, Fraction(1, 10))]:
        assert binomial_pvalue(losses, n, float(rate)) == pytest.approx(exact(losses, n, rate), rel=1e-9)


def test_hoeffding_bentkus_matches_mapie_learn_then_test():
    from mapie.risk_control.methods import compute_hoeffding_bentkus_p_value

    for n in (50, 200, 1000):
        # n * mean away from whole numbers: there MAPIE's ceil(n * mean) sees float rounding
        # (7/200 * 200 = 7.000000000000001), where dyncal counts 7 losses, as it should
        means = np.concatenate([[0.0], (np.arange(0, int(0.2 * n)) + 0.5) / n])
        for alpha in (0.01, 0.05, 0.1):
            ref = compute_hoeffding_bentkus_p_value(means, n, alpha)[:, 0]
            ours = [hoeffding_bentkus_pvalue(float(m), n, alpha) for m in means]
            np.testing.assert_allclose(ours, np.minimum(ref, 1.0), rtol=1e-9, atol=1e-15)


@pytest.mark.parametrize("seed", [0, 1])
def test_temperature_matches_nll_minimised_on_torch_cross_entropy(seed):
    from scipy.optimize import minimize_scalar

    z, y = _logits(seed, n=1500)
    z[:, 0] *= 3.0  # an over-confident exit
    fitted = TemperatureScaler().fit(z, y).temperatures_
    target = torch.from_numpy(y)
    for exit_ in range(z.shape[1]):
        logits = torch.from_numpy(z[:, exit_]).double()

        def nll(log_t: float, logits: torch.Tensor = logits) -> float:
            return float(torch.nn.functional.cross_entropy(logits / math.exp(log_t), target))

        ref = math.exp(minimize_scalar(nll, bounds=(math.log(0.05), math.log(20.0)), method="bounded").x)
        assert fitted[exit_] == pytest.approx(ref, rel=2e-3)


@pytest.fixture(scope="module")
def demo_stages():
    """The demo model's stages, exported once for every score (the runners only read them)."""
    from dyncal.analysis.stages import build_stages
    from dyncal.demo import pretrained

    return build_stages(pretrained(), torch.zeros(2, 1, 8, 8))


@pytest.mark.parametrize("score", list(Score))
def test_runtime_scores_in_torch_equal_the_solver_scores_in_numpy(score, demo_stages):
    """The real early exit (torch, float32) and the simulation (numpy) must score alike."""
    from dyncal.analysis.early_exit import EarlyExitRunner

    temps = [0.7, 1.0, 1.6, 2.5]
    runner = EarlyExitRunner(demo_stages, [0.5, 0.5, 0.5, None], temps, score)
    rng = np.random.default_rng(3)
    z = rng.normal(0, 3, (500, 4, 10)).astype(np.float32)
    ours, _ = exit_scores(z, score, temps)
    for k in range(4):
        torch_scores = runner._score(torch.from_numpy(z[:, k]), k).double().numpy()
        np.testing.assert_allclose(torch_scores, ours[:, k], rtol=1e-5, atol=1e-6)
