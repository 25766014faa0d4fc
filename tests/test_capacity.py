"""What it saves: the capacity arithmetic on a worked example, the queue against theory (no clock)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dyncal.analysis.capacity import (
    SCENARIOS,
    parse_rate,
    provisioned_core_hours,
    server_p99_ms,
    servers_needed,
    what_it_saves,
)
from dyncal.artifacts.requests import RequestTimings
from dyncal.errors import DyncalError


def _constant(key: str, n_rows: int, batch: int, ee_ms: float, plain_ms: float) -> RequestTimings:
    units = math.ceil(n_rows / batch)
    rows = np.arange(n_rows)
    return RequestTimings(
        key, batch, rows, rows % 2, np.full((units, 3), ee_ms), np.full((units, 3), plain_ms), n_exits=2
    )


# b1: early exit 2 ms (500/s), plain 5 ms (200/s); b8: 8 ms and 20 ms per batch of 8 (1000/s and 400/s)
B1 = _constant("cpu/b1", 64, 1, 2.0, 5.0)
B8 = _constant("cpu/b8", 64, 8, 8.0, 20.0)


def test_the_worked_example():
    """1000 requests/s, servers of 2 cores at most 80% busy.

    Offline takes batch 8 for both: plain needs ceil(1000 / (400 x 0.8)) = 4 servers (8 cores),
    the early exit ceil(1000 / (1000 x 0.8)) = 2 (4 cores): 50% saved. A million requests at
    1000/s last 1000 s: 8 x 1000 / 3600 = 2.22 core-hours against 1.11; the work alone is
    2 x 10^6 / 400 / 3600 = 1.39 against 0.56.
    """
    s = what_it_saves([B1, B8], 1000.0, cores_per_server=2, utilisation=0.8)
    plain, early = s.offline["plain"], s.offline["early_exit"]
    assert (plain.batch_size, plain.figure, plain.servers, plain.cores) == (8, 400.0, 4, 8)
    assert (early.batch_size, early.figure, early.servers, early.cores) == (8, 1000.0, 2, 4)
    assert s.offline_saving == 0.5
    assert plain.core_hours_per_million == pytest.approx(8 * 1000 / 3600)
    assert early.core_hours_per_million == pytest.approx(4 * 1000 / 3600)
    assert plain.busy_core_hours_per_million == pytest.approx(2e6 / 400 / 3600)
    assert early.busy_core_hours_per_million == pytest.approx(2e6 / 1000 / 3600)
    assert s.single_stream == {"plain": {"p90_ms": 5.0, "p99_ms": 5.0}, "early_exit": {"p90_ms": 2.0, "p99_ms": 2.0}}
    assert s.unit == "cores" and s.to_dict()["scenarios"] == SCENARIOS
    assert "Offline: queueing not modelled" in s.assumption and "M/G/c" in s.assumption


def test_the_server_scenario_provisions_the_fewest_servers_that_meet_the_p99_bound():
    s = what_it_saves([B1], 1000.0, p99_bound_ms=8.0)
    for name, service in (("plain", 5.0), ("early_exit", 2.0)):
        plan = s.server[name]
        assert plan.figure <= 8.0 and plan.batch_size == 1
        assert plan.servers >= servers_needed(1000.0, service, 1.0)
        assert server_p99_ms(1000.0, plan.servers - 1, np.array([service])) > 8.0  # one fewer misses the bound
    assert s.server["early_exit"].servers < s.server["plain"].servers and 0 < s.server_saving < 1
    assert "within 8 ms" in s.assumption


def test_without_a_bound_the_server_scenario_is_provisioned_by_the_cap():
    s = what_it_saves([B1], 200.0, utilisation=0.5)
    assert s.server["plain"].servers == servers_needed(200.0, 5.0, 0.5) == 2
    assert s.server["early_exit"].servers == 1 and s.server_saving == 0.5
    assert s.offline["plain"].batch_size == 1  # only batch 1 was timed


def test_an_m_m_1_queue_meets_its_theoretical_p99():
    """Exponential service of mean 1 ms at 500/s: the response time is exponential at rate 1000 - 500 per second."""
    service = np.random.default_rng(1).exponential(1.0, 50_000)
    assert server_p99_ms(500.0, 1, service, n_requests=200_000) == pytest.approx(1000 * math.log(100) / 500, rel=0.03)
    assert server_p99_ms(1000.0, 1, np.array([1.0])) == math.inf  # utilisation 1: the queue grows without end
    assert server_p99_ms(500.0, 2, service) < server_p99_ms(500.0, 1, service)


def test_arithmetic_at_the_rounding_edge():
    assert servers_needed(200.0, 4.0, 0.8) == 1  # 0.8 / 0.8 is 1.0000000000000002 in floating point
    assert servers_needed(200.0, 4.1, 0.8) == 2
    assert servers_needed(1e-3, 1.0) == 1
    assert provisioned_core_hours(4, 2, 1000.0) == pytest.approx(8000 / 3600)
    with pytest.raises(DyncalError, match=r"`utilisation` must lie in \(0, 1\]"):
        servers_needed(1.0, 1.0, 1.5)


def test_a_gpu_counts_devices():
    gpu = _constant("cuda:0/b1", 16, 1, 1.0, 2.0)
    s = what_it_saves([gpu], 100.0, cores_per_server=8)
    assert (s.unit, s.cores_per_server, s.offline["plain"].cores) == ("devices", 1, 1)
    with pytest.raises(DyncalError, match="one device at a time"):
        what_it_saves([gpu, B1], 100.0)
    with pytest.raises(DyncalError, match="run dyncal verify first"):
        what_it_saves([], 100.0)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("200/s", 200.0),
        ("200", 200.0),
        (" 12k / min ", 200.0),
        ("3.6e6/h", 1e3),
        ("1M/hour", 1e6 / 3600),
        (50, 50.0),
    ],
)
def test_rates_are_read_per_second(text, expected):
    assert parse_rate(text) == pytest.approx(expected)


@pytest.mark.parametrize("text", ["fast", "0/s", "-5", "200/day", "1e999", "nan", "2m/s"])
def test_a_bad_rate_says_what_a_rate_looks_like(text):
    with pytest.raises(DyncalError, match="`rate` must be a positive request rate like 200/s"):
        parse_rate(text)
