"""What it saves: cores (or devices) and core-hours for a request rate, plain deployment vs early exit.

Design. The figures come from what verify measured, named as MLPerf Inference names its
scenarios:

* **SingleStream** — one query at a time at batch 1; the figure is the p90 latency per
  query (p99 beside it), from :class:`~dyncal.artifacts.requests.RequestTimings` at batch 1.
* **Offline** — all queries available at once; the figure is throughput, samples per
  second at the best batch size verify timed (:meth:`RequestTimings.throughput_per_s`).
  Capacity for a rate ``λ`` is ``ceil(λ / (throughput × u))`` servers, ``u`` the
  utilisation cap (default 0.8): service time measured here, queueing **not** modelled,
  headroom left by the cap instead. Each server is one process using ``cores_per_server``
  cores (the threads verify timed with; one device on a GPU).
* **Server** — queries arrive one by one, Poisson at rate ``λ``; the figure is the p99
  latency at that rate. Queueing **is** modelled here, and said so: an M/G/c queue, first
  come first served, batch 1, ``c`` servers whose service times are drawn from the
  measured batch-1 request times (:func:`server_p99_ms`, a seeded simulation). The servers
  needed are the fewest whose simulated p99 meets the bound the user gives (or, without
  one, those the utilisation cap asks for).

Core-hours per million requests are *provisioned* ones: ``servers × cores_per_server ×
(10^6 / λ) / 3600`` (what is paid for at that rate), with the busy core-hours (``10^6 ×
cores_per_server / throughput / 3600``, what the work itself takes) beside them. The
saving is ``1 - early exit / plain`` of the provisioned cores, in percent only in text for
people.

Where it is used: ``report --rate`` (:func:`dyncal.reports.tail_evidence.report_savings`, with
verify's per-batch-size :class:`RequestTimings` and its threads per server) draws the "What it
saves" page (:mod:`dyncal.reports.pages.requests`) with ``Savings.assumption`` under the table,
and puts ``Savings.to_dict()`` in ``report --json`` under ``savings``.
"""

from __future__ import annotations

import heapq
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dyncal.artifacts.fields import JsonFields
from dyncal.artifacts.requests import RequestTimings
from dyncal.errors import DyncalError, param

__all__ = [
    "SCENARIOS",
    "UTILISATION",
    "DeploymentPlan",
    "Savings",
    "parse_rate",
    "servers_needed",
    "provisioned_core_hours",
    "server_p99_ms",
    "what_it_saves",
]

SCENARIOS = {
    "SingleStream": "one query at a time at batch 1; p90 latency per query",
    "Offline": "all queries at once; throughput in samples/s at the best batch size",
    "Server": "Poisson arrivals at a query rate; p99 latency",
}
"""The MLPerf Inference scenarios the figures are named after, and what each measures."""
UTILISATION = 0.8
"""Default utilisation cap: servers are provisioned so that they are busy at most this share of the time."""
_SIM_REQUESTS = 50_000
_SEED = 20240101
_EPS = 1e-9
_RATE = re.compile(r"^\s*(?P<n>[0-9.eE+-]+)\s*(?P<k>[kKM]?)\s*(?:/\s*(?P<unit>s|sec|second|min|minute|h|hour))?\s*$")
_PER_S: dict[str | None, float] = {  # a unit and its spellings: rate factor to requests per second
    None: 1.0,
    **dict.fromkeys(("s", "sec", "second"), 1.0),
    **dict.fromkeys(("min", "minute"), 1 / 60),
    **dict.fromkeys(("h", "hour"), 1 / 3600),
}


def parse_rate(text: str | float, name: str = "rate") -> float:
    """A request rate in requests per second: ``200/s``, ``12k/min``, ``1e6/h`` (``k`` thousand, ``M`` million).

    Raises:
        DyncalError: Not a positive rate.

    Example:
        >>> parse_rate("200/s"), parse_rate("12k/min"), parse_rate("3.6e6/h")
        (200.0, 200.0, 1000.0)
    """
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        value = float(text)
    else:
        m = _RATE.match(str(text))
        try:
            value = float(m["n"]) if m else math.nan
        except ValueError:
            value = math.nan
        if m:
            value *= {"": 1.0, "k": 1e3, "K": 1e3, "M": 1e6}[m["k"]] * _PER_S[m["unit"]]
    if not (math.isfinite(value) and value > 0):
        raise DyncalError(f"{param(name)} must be a positive request rate like 200/s, 12k/min or 1e6/h, got {text!r}")
    return value


def servers_needed(rate_per_s: float, service_ms: float, utilisation: float = UTILISATION) -> int:
    """Servers so that ``rate × service time`` keeps each busy at most ``utilisation`` of the time.

    Example:
        >>> servers_needed(200, 10.0), servers_needed(200, 4.0)  # 2.5 and 1.0 busy servers at 0.8
        (3, 1)
    """
    if not 0 < utilisation <= 1:
        raise DyncalError(f"{param('utilisation')} must lie in (0, 1], got {utilisation:g}")
    load = rate_per_s * service_ms / 1000.0 / utilisation
    return max(1, math.ceil(load - _EPS * max(1.0, load)))


def provisioned_core_hours(servers: int, cores_per_server: int, rate_per_s: float) -> float:
    """Core-hours per million requests of ``servers`` provisioned at ``rate_per_s``.

    Example:
        >>> round(provisioned_core_hours(3, 1, 200.0), 4)  # 3 cores for 5000 s
        4.1667
    """
    return servers * cores_per_server * (1e6 / rate_per_s) / 3600.0


def server_p99_ms(
    rate_per_s: float,
    servers: int,
    service_ms: np.ndarray,
    *,
    weights: np.ndarray | None = None,
    n_requests: int = _SIM_REQUESTS,
) -> float:
    """The p99 response time of an M/G/c queue (FIFO, batch 1), simulated with measured service times.

    Poisson arrivals at ``rate_per_s``; each request's service time is drawn from
    ``service_ms`` (with ``weights``, as a stratified sample is weighted); the first tenth
    of the requests warm the queue and are not counted. inf when the servers cannot keep
    up (utilisation >= 1).

    Example:
        >>> round(server_p99_ms(10.0, 1, np.array([1.0])), 1)  # rarely two within a millisecond: the service time
        1.0
    """
    s = np.asarray(service_ms, dtype=np.float64) / 1000.0
    if s.size == 0 or servers < 1:
        raise DyncalError("a Server simulation needs measured service times and at least one server")
    if rate_per_s * float(np.average(s, weights=weights)) >= servers:
        return math.inf
    rng = np.random.default_rng(_SEED)
    arrivals = np.cumsum(rng.exponential(1.0 / rate_per_s, n_requests))
    p = None if weights is None else np.asarray(weights, dtype=np.float64) / np.sum(weights)
    service = s[rng.choice(s.shape[0], n_requests, p=p)]
    free = [0.0] * servers
    response = np.empty(n_requests)
    for i, (a, d) in enumerate(zip(arrivals.tolist(), service.tolist(), strict=True)):
        start = a if a > free[0] else free[0]
        heapq.heapreplace(free, start + d)
        response[i] = start + d - a
    return float(np.percentile(response[n_requests // 10 :], 99) * 1000.0)


@dataclass(frozen=True)
class DeploymentPlan(JsonFields):
    """What one deployment needs for the rate in one scenario.

    Attributes:
        deployment: ``"plain"`` or ``"early_exit"``.
        servers: Servers (processes or devices) needed.
        cores: Cores (or devices) they use.
        core_hours_per_million: Provisioned core-hours per million requests.
        busy_core_hours_per_million: Core-hours the work itself takes per million requests.
        figure: The scenario's figure: samples/s (Offline), p99 ms at the rate (Server).
        batch_size: The batch size it runs at.
    """

    deployment: str
    servers: int
    cores: int
    core_hours_per_million: float
    busy_core_hours_per_million: float
    figure: float
    batch_size: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict; an infinite figure (servers that cannot keep up) is null."""
        return {**super().to_dict(), "figure": None if math.isinf(self.figure) else self.figure}


@dataclass(frozen=True)
class Savings:
    """The "what it saves" figures for one device: every scenario, plain deployment vs early exit.

    Attributes:
        device: The device measured.
        rate_per_s: The request rate asked.
        unit: ``"cores"`` (CPU) or ``"devices"`` (GPU).
        cores_per_server: Cores (or devices) one server uses.
        utilisation: The utilisation cap.
        single_stream: ``{deployment: {"p90_ms", "p99_ms"}}`` at batch 1 (fastest pair per request).
        offline: ``{deployment: plan}`` at the best batch size (queueing not modelled).
        server: ``{deployment: plan}`` at batch 1 with Poisson arrivals (M/G/c modelled).
        p99_bound_ms: The Server scenario's p99 bound, if one was given.
    """

    device: str
    rate_per_s: float
    unit: str
    cores_per_server: int
    utilisation: float
    single_stream: dict[str, dict[str, float]]
    offline: dict[str, DeploymentPlan]
    server: dict[str, DeploymentPlan] = field(default_factory=dict)
    p99_bound_ms: float | None = None

    @staticmethod
    def _saving(plans: dict[str, DeploymentPlan]) -> float | None:
        if set(plans) != {"plain", "early_exit"}:
            return None
        return 1.0 - plans["early_exit"].cores / plans["plain"].cores

    @property
    def offline_saving(self) -> float | None:
        """``1 - early exit cores / plain cores`` in the Offline scenario (a fraction)."""
        return self._saving(self.offline)

    @property
    def server_saving(self) -> float | None:
        """The same in the Server scenario (None when it was not modelled)."""
        return self._saving(self.server)

    @property
    def assumption(self) -> str:
        """The assumptions behind the figures, for people (printed under the table)."""
        what = f"{self.unit} ({self.cores_per_server} per server)" if self.unit == "cores" else "devices"
        server = (
            f"Server: queueing modelled as M/G/c (Poisson arrivals at {self.rate_per_s:g}/s, first come first "
            "served, batch 1, service times drawn from the measured requests), "
            + (
                f"fewest servers whose simulated p99 is within {self.p99_bound_ms:g} ms"
                if self.p99_bound_ms is not None
                else f"servers at the {100 * self.utilisation:.0f}% utilisation cap"
            )
            if self.server
            else "Server: not modelled"
        )
        return (
            f"Service times measured here ({self.device}), {what}. Offline: queueing not modelled; servers run at "
            f"the best measured batch size and are provisioned to at most {100 * self.utilisation:.0f}% "
            f"utilisation. {server}. Core-hours are provisioned at the rate; busy core-hours are the work alone."
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (``report --json``)."""
        return {
            "device": self.device,
            "rate_per_s": self.rate_per_s,
            "unit": self.unit,
            "cores_per_server": self.cores_per_server,
            "utilisation": self.utilisation,
            "scenarios": dict(SCENARIOS),
            "single_stream": self.single_stream,
            "offline": {k: v.to_dict() for k, v in self.offline.items()},
            "offline_saving": self.offline_saving,
            "server": {k: v.to_dict() for k, v in self.server.items()},
            "server_saving": self.server_saving,
            "p99_bound_ms": self.p99_bound_ms,
            "assumption": self.assumption,
        }


def _plan(
    deployment: str, servers: int, cores: int, rate: float, busy_core_hours: float, figure: float, batch_size: int
) -> DeploymentPlan:
    """``servers`` servers of ``cores`` each, provisioned at ``rate``."""
    cores_used, provisioned = servers * cores, provisioned_core_hours(servers, cores, rate)
    return DeploymentPlan(deployment, servers, cores_used, provisioned, busy_core_hours, figure, batch_size)


def _offline_plan(
    deployment: str, timings: Sequence[RequestTimings], rate: float, cores: int, utilisation: float, view: str
) -> DeploymentPlan:
    """Servers at the batch size of highest throughput."""
    best = max(timings, key=lambda t: t.throughput_per_s(deployment, view))
    throughput = best.throughput_per_s(deployment, view)
    servers = servers_needed(rate, 1000.0 / throughput, utilisation)
    return _plan(deployment, servers, cores, rate, 1e6 * cores / throughput / 3600.0, throughput, best.batch_size)


def _server_plan(
    deployment: str, b1: RequestTimings, rate: float, cores: int, utilisation: float, bound: float | None, view: str
) -> DeploymentPlan:
    """Servers at batch 1 for Poisson arrivals: the fewest meeting the p99 bound, or those the cap asks for."""
    service = b1.service_ms(deployment, view)
    w = b1.weights
    mean_ms = float(np.average(service, weights=w))
    servers = servers_needed(rate, mean_ms, utilisation if bound is None else 1.0)
    p99 = server_p99_ms(rate, servers, service, weights=w)
    if bound is not None:
        limit = 4 * servers + 16
        while p99 > bound and servers < limit:
            servers += 1
            p99 = server_p99_ms(rate, servers, service, weights=w)
    return _plan(deployment, servers, cores, rate, 1e6 * cores * mean_ms / 1000.0 / 3600.0, p99, 1)


def what_it_saves(
    timings: Sequence[RequestTimings],
    rate_per_s: float,
    *,
    cores_per_server: int = 1,
    utilisation: float = UTILISATION,
    p99_bound_ms: float | None = None,
    view: str = "fastest",
) -> Savings:
    """Cores and core-hours the plain deployment and the early exit need for a request rate.

    Args:
        timings: Verify's per-request timings of one device, one per batch size timed.
        rate_per_s: Requests per second (:func:`parse_rate`).
        cores_per_server: Cores one server uses on a CPU (the threads timed with).
        utilisation: The utilisation cap of the provisioning (default :data:`UTILISATION`).
        p99_bound_ms: The Server scenario's p99 bound; None provisions it by the cap.
        view: ``"fastest"`` (default: each unit's fastest pair) or ``"raw"``.

    Returns:
        SingleStream and Server need batch-1 timings (left empty without them); Offline
        uses the best batch size.

    Raises:
        DyncalError: No timings, timings of several devices, or a bad rate or cap.
    """
    from dyncal.artifacts.costs import LatencyKey

    if not timings:
        raise DyncalError("what it saves needs verify's timings: run dyncal verify first")
    devices = {LatencyKey.parse(t.key).device for t in timings}
    if len(devices) != 1:
        raise DyncalError(f"what it saves compares one device at a time, got {sorted(devices)}")
    rate = parse_rate(rate_per_s)
    servers_needed(rate, 1.0, utilisation)  # validates the cap
    device = devices.pop()
    on_cpu = device.startswith("cpu")
    cores = cores_per_server if on_cpu else 1
    b1 = next((t for t in timings if t.batch_size == 1), None)
    deployments = ("plain", "early_exit")
    single: dict[str, dict[str, float]] = {}
    server: dict[str, DeploymentPlan] = {}
    if b1 is not None:
        for d in deployments:
            p90, p99 = b1.percentiles_ms(d, [90, 99], view).tolist()
            single[d] = {"p90_ms": p90, "p99_ms": p99}
            server[d] = _server_plan(d, b1, rate, cores, utilisation, p99_bound_ms, view)
    return Savings(
        device=device,
        rate_per_s=rate,
        unit="cores" if on_cpu else "devices",
        cores_per_server=cores,
        utilisation=utilisation,
        single_stream=single,
        offline={d: _offline_plan(d, timings, rate, cores, utilisation, view) for d in deployments},
        server=server,
        p99_bound_ms=p99_bound_ms,
    )
