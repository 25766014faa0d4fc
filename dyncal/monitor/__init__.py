"""Production against calibration: the statistics of ``dyncal monitor`` and its rollout decision.

Inputs are arrays, not files: the calibration run's scores and labels under the shipped
thresholds (:class:`CalibrationReference`, built from a run and its thresholds document or from
arrays) and the production rows (:class:`dyncal.telemetry.TelemetryData`). Nothing here reads
files, prints or imports pyarrow; the CLI, the report page and the benchmarks call
:func:`monitor` and :func:`rollout_plan`.

**Quality without labels.** On a shadow request the runner also completes the plain model, so
its last exit's class is known. The accuracy drop of the early exit against the last exit is
``P(last right) - P(early right) <= P(last right, early wrong) <= P(early != last)``: the
*disagreement rate* bounds the drop from above, whatever the labels. Its exact one-sided
Clopper-Pearson upper bound at level ``1 - delta`` over ``n`` shadow requests therefore bounds
the drop with probability at least ``1 - delta`` (shadow requests being a random share of
traffic), and re-certifies ``--max-drop ε --delta δ`` on production traffic. With labels
(``labels``, by request id) the bound uses the *loss* count on labelled shadow requests
(last right and early wrong), which is tighter and bounds the drop the same way.

**Cost.** Each request costs its exit's cumulative cost in the budget's unit (MACs, or the
profiled ms of one ``"<device>/b<batch>"``); the mean per request, with one-sided ``1 - delta``
bounds from the multinomial bootstrap of the exit counts, is compared with the budget the
solve met (``budget.value``; the cost met when no budget was asked) widened by
``cost_tolerance``.

**The decision** (:func:`decide`), in this order:

1. ``ROLLBACK`` only on shown harm: with labels, when the drop's own lower bound (losses'
   lower bound minus gains' upper bound, δ/2 each) exceeds ε; or when the cost's lower bound
   exceeds the budget limit. Disagreement alone never rolls back: it bounds the drop only from
   above (the early exit can disagree with the last exit and be right), so a disagreement
   surely above ε is no shown drop.
2. ``PROCEED`` when there is shadow evidence, the upper bound (disagreement's, or the losses'
   with labels) is at most ε, and the cost's mean is within the limit (or there is no budget
   to hold).
3. ``HOLD`` otherwise: no shadow requests (no evidence is never PROCEED); without labels, a
   disagreement not certifiably at most ε ("cannot certify the drop without labels": add
   labels or collect more shadow requests); too few labelled requests to bound the losses; or
   a cost above the limit that is not yet significant.

Drift statistics (exit shares by χ², per-exit scores by Kolmogorov-Smirnov and PSI, the
average-thresholded-confidence accuracy estimate of Garg et al. 2022) are context: they never
decide, so a harmless shift that moves the exit shares does not roll back a model whose quality
held. The decision is made on all rows; :attr:`MonitorReport.windows` repeats it per time
window so that a trend shows (a window's decision is on that window's rows alone).

Caveat of repeated looks: the ``1 - delta`` guarantee is for one decision on a fixed sample.
Monitoring the same growing sample again and again inflates the chance of a false PROCEED;
:func:`rollout_plan` sizes each rollout step so that it is decided once, on its own requests.
"""

from dyncal.monitor.bounds import atc_threshold, clopper_pearson, population_stability_index, shadow_requests_needed
from dyncal.monitor.decision import (
    ATC_CAVEAT,
    HOLD,
    PROCEED,
    ROLLBACK,
    MonitorOptions,
    MonitorReport,
    decide,
    monitor,
)
from dyncal.monitor.labels import read_labels
from dyncal.monitor.plan import DEFAULT_STEPS, RolloutPlan, RolloutStep, rollout_plan
from dyncal.monitor.reference import CalibrationReference, simulated_telemetry

__all__ = [
    "PROCEED",
    "HOLD",
    "ROLLBACK",
    "ATC_CAVEAT",
    "DEFAULT_STEPS",
    "clopper_pearson",
    "shadow_requests_needed",
    "population_stability_index",
    "atc_threshold",
    "CalibrationReference",
    "MonitorOptions",
    "MonitorReport",
    "monitor",
    "decide",
    "RolloutStep",
    "RolloutPlan",
    "rollout_plan",
    "simulated_telemetry",
    "read_labels",
]
