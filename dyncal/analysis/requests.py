"""Which requests verify times: an order in which every exit comes early and every prefix keeps the shares.

Design. ``dyncal verify`` times requests until its time bound; when the bound cannot
time every row, the rows it reaches should still show every exit, and the figures should
still describe all the traffic. :func:`stratified_order` is the order to time them in
(verify already knows each row's simulated exit before timing); whatever prefix the bound
allows is stratified by exit, and :class:`dyncal.artifacts.requests.RequestTimings` weights
it back to the exit shares of every replayed row and states the count.

Wiring (not done here): at batch 1 verify replaces its shuffled order with
``stratified_order(sim_exits, seed=...)``, times a prefix of it, and builds
``RequestTimings.from_batches(key, timed, rt_exits, ee_ms, full_ms, n_exits=K,
all_batches=[[i] for i in range(n)], time_bound_s=max_seconds)``.
"""

from __future__ import annotations

import numpy as np

from dyncal.errors import DyncalError

__all__ = ["MIN_PER_EXIT", "stratified_order"]

MIN_PER_EXIT = 5
""":func:`stratified_order` puts this many rows of every exit (or all it has) first."""


def stratified_order(exits: np.ndarray, *, min_per_exit: int = MIN_PER_EXIT, seed: int = 0) -> np.ndarray:
    """An order of the rows to time: every exit early, each prefix near the exit shares.

    First ``min_per_exit`` rounds of one row per exit (rarest exit first, so a short time
    bound still sees every exit); then the remaining rows interleaved so that any prefix
    holds each exit in proportion to its share (row ``i`` of exit ``k``, in a seeded
    shuffle, is placed at ``(i + u_k) / N_k`` with a random offset ``u_k``).

    Args:
        exits: ``(n,)`` exit of each row (the simulated exit: known before timing).
        min_per_exit: Rows of every exit put first.
        seed: Seed of the shuffle.

    Returns:
        ``(n,)`` int64, a permutation of ``range(n)``.

    Example:
        >>> e = np.array([0] * 90 + [1] * 8 + [2] * 2)
        >>> order = stratified_order(e, min_per_exit=2)
        >>> sorted(e[order[:6]].tolist()), sorted(order.tolist()) == list(range(100))
        ([0, 0, 1, 1, 2, 2], True)
    """
    e = np.asarray(exits, dtype=np.int64)
    if min_per_exit < 0:
        raise DyncalError(f"`min_per_exit` must be >= 0, got {min_per_exit}")
    rng = np.random.default_rng(seed)
    labels, counts = np.unique(e, return_counts=True)
    members = {int(k): rng.permutation(np.flatnonzero(e == k)) for k in labels}
    offsets = np.asarray(rng.uniform(0.0, 1.0, labels.shape[0]))
    rarest_first = [int(labels[i]) for i in np.argsort(counts, kind="stable")]
    head = [int(members[k][r]) for r in range(min_per_exit) for k in rarest_first if r < members[k].shape[0]]
    tail_rows: list[np.ndarray] = []
    tail_keys: list[np.ndarray] = []
    for k, u in zip(labels.tolist(), offsets.tolist(), strict=True):
        rest = members[k][min_per_exit:]
        tail_rows.append(rest)
        tail_keys.append((np.arange(min_per_exit, min_per_exit + rest.shape[0]) + u) / members[k].shape[0])
    rows, keys = np.concatenate([np.zeros(0, np.int64), *tail_rows]), np.concatenate([np.zeros(0), *tail_keys])
    return np.concatenate([np.asarray(head, dtype=np.int64), rows[np.argsort(keys, kind="stable")]])
