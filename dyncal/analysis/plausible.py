"""Latency that cannot be right is refused, not stored and called noisy (numpy only).

A profile taken on a busy machine can be not merely noisy but wrong: a whole batch of 8
timed faster than a single sample, because another process took the cores while the
single sample was timed. Such a figure would price every exit and decide a verdict, so
``dyncal profile`` refuses it with what to do (:func:`check_plausible`), and stores nothing:

* **impossible order** — on one device, the full model on one batch of ``b`` samples may
  not take longer than on a whole batch of ``B > b``: refused when even the fastest
  replicate at ``b`` is above :data:`ORDER_TOLERANCE` times the median at ``B`` (the
  tolerance because a launch-bound GPU or tiny model times them alike);
* **no median** — the full model's replicates spread so wide that the median says
  nothing: IQR above :data:`MAX_SPREAD` times the median *and* the median above
  :data:`MAX_MEDIAN_OVER_FASTEST` times the fastest replicate (most runs were slowed, not
  a few), among at least :data:`MIN_SPREAD_REPLICATES` replicates (the IQR of fewer is
  itself noise).

``dyncal profile`` times a device again (up to :data:`ATTEMPTS` times in all) before it
refuses: a burst of load passes, and a machine loaded throughout gets the refusal. The
remedy names only what was not already done (:func:`dyncal.measurement.noise_advice`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from dyncal.artifacts.costs import LatencyProfile
from dyncal.errors import ProfileError
from dyncal.measurement import Measurement, noise_advice

__all__ = [
    "ATTEMPTS",
    "ORDER_TOLERANCE",
    "MAX_SPREAD",
    "MAX_MEDIAN_OVER_FASTEST",
    "MIN_SPREAD_REPLICATES",
    "implausible",
    "check_plausible",
]

ATTEMPTS = 3
"""Timings of one device before implausible latency is refused."""

ORDER_TOLERANCE = 1.25
"""A smaller batch may take up to this factor of a larger batch's whole time (launch-bound timings tie)."""

MAX_SPREAD = 1.0
"""Refused above this IQR / median of the full model: the middle half of the replicates spans the median itself."""

MAX_MEDIAN_OVER_FASTEST = 2.0
"""With the spread, refused when the median is above this factor of the fastest replicate."""

MIN_SPREAD_REPLICATES = 8
"""Replicates below which the spread is not judged."""


def implausible(profiles: Iterable[LatencyProfile]) -> str | None:
    """What cannot be right about these profiles, for people (None when nothing).

    Example:
        >>> def prof(b, ms):
        ...     return LatencyProfile("cpu", b, ((1.0,),), (0.1,), ms, 1, "x", exit_path_ms=((1.0,),))
        >>> implausible([prof(1, (187.0, 186.0, 188.0)), prof(8, (23.6, 23.5, 23.7))])
        'the full model took 187 ms for one batch of 1 (cpu/b1) but 23.6 ms for a whole batch of 8 (cpu/b8)'
        >>> implausible([prof(1, (2.0, 2.1, 2.0)), prof(8, (9.0, 9.1, 9.0))]) is None
        True
    """
    ordered = sorted(profiles, key=lambda p: (p.device, p.batch_size))
    for p in ordered:
        m = Measurement(p.full_model_ms)
        wide = m.spread > MAX_SPREAD and m.median_ms > MAX_MEDIAN_OVER_FASTEST * min(p.full_model_ms)
        if len(m.replicates_ms) >= MIN_SPREAD_REPLICATES and wide:
            return (
                f"the full model's replicates at {p.key} spread so wide that their median means nothing "
                f"(IQR {m.iqr_ms:.3g} ms, {100 * m.spread:.0f}% of the median {m.median_ms:.3g} ms)"
            )
    for i, small in enumerate(ordered):
        for large in ordered[i + 1 :]:
            if large.device != small.device or large.batch_size <= small.batch_size:
                continue
            a, fastest, b = small.full_model_median_ms, min(small.full_model_ms), large.full_model_median_ms
            if math.isfinite(fastest) and math.isfinite(b) and fastest > ORDER_TOLERANCE * b:
                return (
                    f"the full model took {a:.3g} ms for one batch of {small.batch_size} ({small.key}) but "
                    f"{b:.3g} ms for a whole batch of {large.batch_size} ({large.key})"
                )
    return None


def check_plausible(profiles: Iterable[LatencyProfile], *, threads: int | None, repeats: int) -> None:
    """Refuse profiles :func:`implausible` finds wrong, naming the remedy.

    Args:
        profiles: The latency profiles just measured.
        threads: CPU threads they were timed with (pinning one is advised only otherwise).
        repeats: Replicates taken (more are advised).

    Raises:
        ProfileError: A figure cannot be right; nothing should be stored.
    """
    profiles = list(profiles)
    why = implausible(profiles)
    if why is None:
        return
    used = {p.threads for p in profiles if p.device == "cpu"}
    pinned = used.pop() if len(used) == 1 else threads
    raise ProfileError(
        f"latency refused: {why}, which cannot be right (other work took the machine while it was timed); "
        f"nothing was stored; {noise_advice(pinned, repeats)}, then profile again"
    )
