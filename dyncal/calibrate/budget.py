"""Compute budgets: ``0.6x``, ``1.2GMAC`` / ``850MMAC``, ``35ms``.

A budget is a bound on the *mean* cost per sample under the exit rule. ``0.6x`` is a
fraction of the last exit's cumulative cost (in MACs when the run has them, else in the
latency column chosen by ``device``/``batch_size``); ``GMAC``/``MMAC``/``KMAC``/``MAC`` are
multiply-accumulates; ``ms`` is the expected early-exit latency of one profiled
``"<device>/b<batch>"`` column (:attr:`dyncal.artifacts.costs.LatencyProfile.early_exit_ms`: the
real early exit with every row leaving at the exit, as ``dyncal profile`` measured it).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from dyncal.artifacts.costs import CostTable, LatencyKey, device_name
from dyncal.errors import BudgetError, DyncalError

__all__ = [
    "BudgetSpec",
    "BudgetTarget",
    "parse_budget",
    "cost_units",
    "require_cost_units",
    "resolve_budget",
    "format_budget",
    "pick_latency",
]

_MAC_SCALE = {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}
_SUFFIX = {"fraction": "x", "ms": "ms"}
"""How a budget of these kinds is written (MACs take a prefix)."""
_PATTERN = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([a-z]*)\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class BudgetSpec:
    """A budget as the user wrote it.

    Attributes:
        text: The text given (``"0.6x"``).
        kind: ``"fraction"``, ``"macs"`` or ``"ms"``.
        value: The number in that kind's unit (fraction, MACs, milliseconds).
    """

    text: str
    kind: str
    value: float


def parse_budget(text: str) -> BudgetSpec:
    """Parse ``0.6x``, ``1.2GMAC``, ``850MMAC``, ``3e8MAC`` or ``35ms``.

    Args:
        text: The budget.

    Returns:
        The parsed budget.

    Raises:
        BudgetError: The text is none of the forms, or not positive.

    Example:
        >>> parse_budget("850MMAC")
        BudgetSpec(text='850MMAC', kind='macs', value=850000000.0)
        >>> parse_budget("0.6x").value
        0.6
    """
    m = _PATTERN.match(str(text))
    form_hint = "use a fraction of the full model like 0.6x, MACs like 1.2GMAC or 850MMAC, or latency like 35ms"
    if not m:
        raise BudgetError(f"cannot read `budget` {text!r}: {form_hint}")
    value, unit = float(m.group(1)), m.group(2).lower()
    if unit == "x":
        kind = "fraction"
    elif unit == "ms":
        kind = "ms"
    elif unit.endswith("macs") or unit.endswith("mac"):
        prefix = unit[:-4] if unit.endswith("macs") else unit[:-3]
        if prefix not in _MAC_SCALE:
            raise BudgetError(f"cannot read `budget` {text!r}: unknown MAC prefix {prefix!r}; {form_hint}")
        value *= _MAC_SCALE[prefix]
        kind = "macs"
    else:
        raise BudgetError(f"cannot read `budget` {text!r}: unknown unit {unit or '(none)'!r}; {form_hint}")
    if not math.isfinite(value) or value <= 0:
        raise BudgetError(f"`budget` must be positive, got {text!r}")
    return BudgetSpec(text=str(text).strip(), kind=kind, value=value)


def cost_units(costs: CostTable | None, k: int) -> dict[str, tuple[float, ...]]:
    """Every cost column a run knows: ``"macs"`` and ``"ms:<device>/b<batch>"``.

    Latency columns are expected early-exit times (:attr:`LatencyProfile.early_exit_ms`).

    Args:
        costs: The run's cost table (None: no costs).
        k: Number of exits.

    Returns:
        Unit name to ``K`` cumulative costs, MACs first then latency keys sorted.

    Example:
        >>> cost_units(CostTable(macs=(1.0, 2.0)), 2)
        {'macs': (1.0, 2.0)}
    """
    out: dict[str, tuple[float, ...]] = {}
    if costs is None:
        return out
    if costs.macs is not None and len(costs.macs) == k:
        out["macs"] = tuple(float(v) for v in costs.macs)
    for key in sorted(costs.latency):
        ms = costs.latency[key].early_exit_ms
        if len(ms) == k:
            out[LatencyKey.parse(key).column] = tuple(float(v) for v in ms)
    return out


def require_cost_units(costs: CostTable | None, k: int) -> dict[str, tuple[float, ...]]:
    """:func:`cost_units`, refusing a run that has none (nothing to budget or to solve against).

    Raises:
        DyncalError: The run has no costs at all.

    Example:
        >>> require_cost_units(None, 2)
        Traceback (most recent call last):
        ...
        dyncal.errors.DyncalError: run has no costs: run 'dyncal profile RUN' (or 'dyncal import FILE --macs ...')
    """
    units = cost_units(costs, k)
    if not units:
        raise DyncalError("run has no costs: run 'dyncal profile RUN' (or 'dyncal import FILE --macs ...')")
    return units


@dataclass(frozen=True)
class BudgetTarget:
    """A budget resolved against a run's costs.

    Attributes:
        spec: The budget as written.
        unit: Cost column the budget binds (``"macs"`` or ``"ms:cpu/b1"``).
        costs: The ``K`` cumulative costs of that column.
        value: The budget in that column's unit.
    """

    spec: BudgetSpec
    unit: str
    costs: tuple[float, ...]
    value: float

    @property
    def fraction(self) -> float:
        """The budget as a fraction of the last exit's cost."""
        return self.value / self.costs[-1]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {
            "asked": self.spec.text,
            "unit": self.unit,
            "value": self.value,
            "fraction": self.fraction,
        }


def pick_latency(units: dict[str, tuple[float, ...]], device: str | None, batch_size: int | None) -> str:
    """The latency column asked by ``device``/``batch_size``, never a silent guess.

    With neither given, the run must have exactly one latency column. ``device`` alone
    takes its batch size 1 (else its smallest profiled); ``batch_size`` alone takes the one
    device profiled at that size.
    """
    parsed = [LatencyKey.from_column(u) for u in units if u.startswith(LatencyKey.PREFIX)]
    keys = [str(k) for k in parsed]
    device = None if device is None else device_name(device)
    if device is not None or batch_size is not None:
        if batch_size is None:
            batches = sorted(k.batch_size for k in parsed if k.device == device)
            batch_size = 1 if not batches or 1 in batches else batches[0]
        if device is None:
            devices = sorted({k.device for k in parsed if k.batch_size == batch_size})
            if len(devices) > 1:
                raise BudgetError(
                    f"the run has latency at batch size {batch_size} for several devices "
                    f"({', '.join(devices)}); choose one with `device`"
                )
            device = devices[0] if devices else "cpu"
        key = LatencyKey(device, batch_size)
        if key not in parsed:
            have = ", ".join(keys) or "none"
            raise BudgetError(
                f"no latency profiled for {key} (profiled: {have}); run 'dyncal profile RUN "
                f"--device {device} --batch-size {batch_size}' or choose a "
                "profiled device"
            )
        return key.column
    if not keys:
        raise BudgetError(
            "a budget in ms needs measured latency, and this run has none; run 'dyncal profile "
            "RUN' "
            "(or give the budget as a fraction like 0.6x or in MACs like 850MMAC)"
        )
    if len(keys) == 1:
        return parsed[0].column
    raise BudgetError(
        f"the run has latency for several devices or batch sizes ({', '.join(keys)}); choose "
        "one with `device` and `batch_size`"
    )


def format_budget(value: float, kind: str) -> str:
    """Write a budget back in the user's form, rounded up to 4 significant digits.

    Example:
        >>> format_budget(0.123456, "fraction"), format_budget(7.08e4, "macs")
        ('0.1235x', '70.8KMAC')
        >>> format_budget(3.21, "ms")
        '3.21ms'
    """

    def up(v: float) -> float:
        if v <= 0:
            return v
        digits = 3 - int(math.floor(math.log10(abs(v))))
        scale = 10.0**digits
        return math.ceil(v * scale - 1e-9) / scale

    if kind in _SUFFIX:
        return f"{up(value):g}{_SUFFIX[kind]}"
    for prefix, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if value >= scale:
            return f"{up(value / scale):g}{prefix}MAC"
    return f"{up(value):g}MAC"


def resolve_budget(
    spec: BudgetSpec | str,
    costs: CostTable | None,
    k: int,
    *,
    device: str | None = None,
    batch_size: int | None = None,
) -> BudgetTarget:
    """Bind a budget to one cost column of a run and check it can be met.

    Args:
        spec: The budget (text or parsed).
        costs: The run's cost table.
        k: Number of exits.
        device: Latency device for ``ms`` budgets (and ``x`` budgets of runs without MACs).
        batch_size: Latency batch size, with ``device``.

    Returns:
        The resolved budget.

    Raises:
        DyncalError: The run has no costs at all.
        BudgetError: No column for the budget's unit, or the budget is below the first
            exit's cost (the message names the cheapest feasible budget).

    Example:
        >>> t = resolve_budget("0.5x", CostTable(macs=(1e6, 4e6)), 2)
        >>> t.unit, t.value
        ('macs', 2000000.0)
    """
    if isinstance(spec, str):
        spec = parse_budget(spec)
    units = require_cost_units(costs, k)
    if spec.kind == "macs":
        if "macs" not in units:
            raise BudgetError(
                f"budget {spec.text!r} is in MACs but the run has no MAC counts; run 'dyncal "
                "profile RUN', "
                "re-import it with 'dyncal import FILE --macs ...', or give the budget as a fraction (0.6x) or in ms"
            )
        unit = "macs"
    elif spec.kind == "ms":
        unit = pick_latency(units, device, batch_size)
    else:
        unit = "macs" if "macs" in units else pick_latency(units, device, batch_size)
    col = units[unit]
    value = spec.value * col[-1] if spec.kind == "fraction" else spec.value
    if col[0] * (1 - 1e-9) <= value < col[0]:
        value = col[0]  # "0.02x" of a model whose exit 1 costs 0.02x: rounding, not a miss
    if value < col[0]:
        cheapest = col[0] / col[-1] if spec.kind == "fraction" else col[0]
        raise BudgetError(
            f"budget {spec.text!r} is below the cost of exit 1 alone "
            f"({format_budget(col[0], 'ms' if unit != 'macs' else 'macs')}"
            f" = {format_budget(col[0] / col[-1], 'fraction')} of the full model); the cheapest "
            "feasible "
            f"budget is {format_budget(cheapest, spec.kind)}"
        )
    return BudgetTarget(spec=spec, unit=unit, costs=col, value=value)
