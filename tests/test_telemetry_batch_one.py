"""The writer's batch-1 path (a tuple and a flat score list per request) writes the rows record() writes."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dyncal.errors import DyncalError
from dyncal.telemetry import PackageIdentity, TelemetryWriter

pq = pytest.importorskip("pyarrow.parquet", reason="telemetry needs pyarrow (the rollout extra)")


class Clock:
    """A settable clock (seconds since the epoch)."""

    def __init__(self) -> None:
        self.t = 1_700_000_000.0

    def __call__(self) -> float:
        return self.t


def identity(k: int) -> PackageIdentity:
    return PackageIdentity("ab" * 32, k, 6, "maxprob", (1.0,) * k, (*([0.5] * (k - 1)), None))


def deferred(pending: Sequence[float]) -> np.ndarray:
    """The flush's score function of these tests: the pending item is the score itself."""
    return np.array(pending, dtype=np.float32)


def request(k: int) -> st.SearchStrategy[dict]:
    """One batch-1 request: its exit, prediction, scores, latency, shadow answer, id, and how it is recorded."""
    return st.fixed_dictionaries(
        {
            "exit": st.integers(0, k - 1),
            "pred": st.integers(0, 5),
            "scores": st.lists(st.floats(width=32, allow_nan=False), min_size=k, max_size=k),
            "ms": st.floats(0.0, 1e4),
            "last": st.sampled_from([-1, -1, 0, 3]),
            "id": st.one_of(st.none(), st.text(max_size=3)),
            "pending": st.booleans(),  # the last exit's score left for the flush (where the exit is the last)
            "unchecked": st.booleans(),  # the runner's call (no checks) instead of record_one
            "batch": st.integers(0, 5),  # > 1: a record() batch of this many rows instead
        }
    )


def table(folder: Path) -> dict[str, list]:
    """Every finished file's rows in segment order, column by column."""
    files = sorted(folder.glob("*.parquet"), key=lambda p: p.name.rsplit("-", 1)[1])
    assert not list(folder.glob("*.arrows"))
    tables = [pq.read_table(f) for f in files]
    return {name: [v for t in tables for v in t.column(name).to_pylist()] for name in tables[0].column_names}


@settings(max_examples=40, deadline=None)
@given(
    k=st.integers(1, 4),
    data=st.data(),
    flush_rows=st.integers(1, 9),
    rotate_bytes=st.sampled_from([1, 3000, 1 << 20]),
)
def test_rows_recorded_one_by_one_equal_rows_recorded_as_batches(
    tmp_path_factory: pytest.TempPathFactory, k: int, data: st.DataObject, flush_rows: int, rotate_bytes: int
):
    """Same rows through record_one (and the runner's unchecked call) or record(): the same Parquet rows.

    Flushes by count, rotations by size, buffers grown by batches larger than a flush, record()
    batches between batch-1 rows, ids on some rows and scores left for the flush all included.
    """
    requests = data.draw(st.lists(request(k), min_size=1, max_size=30))
    folders = {name: tmp_path_factory.mktemp(name) for name in ("fast", "slow")}
    clocks = {name: Clock() for name in folders}
    options = {"background": False, "flush_rows": flush_rows, "rotate_bytes": rotate_bytes, "flush_seconds": 1e9}
    writers = {
        name: TelemetryWriter(folder, identity(k), clock=clocks[name], deferred=deferred, **options)
        for name, folder in folders.items()
    }
    rng = np.random.default_rng(len(requests))
    for i, r in enumerate(requests):
        for clock in clocks.values():
            clock.t += 0.25 * i
        e, scores = r["exit"], r["scores"]
        if r["batch"] > 1:
            b = r["batch"]
            batch = (rng.integers(0, k, b), rng.integers(0, 6, b), rng.random((b, k)), rng.random(b) * 9)
            ids = [None if j % 2 else f"b{i}.{j}" for j in range(b)]
            for w in writers.values():
                w.record(*batch, last_predictions=np.full(b, -1), request_ids=ids)
            continue
        writers["slow"].record([e], [r["pred"]], [scores], r["ms"], last_predictions=[r["last"]], request_ids=[r["id"]])
        pending = r["pending"] and e == k - 1
        read = scores[: e + 1 - pending]
        fast = writers["fast"]
        if r["unchecked"]:
            fast._record_one(e, r["pred"], read, r["ms"], scores[e] if pending else None, r["last"], r["id"])
        else:
            fast.record_one(
                e, r["pred"], tuple(read), r["ms"], pending=scores[e] if pending else None,
                last_prediction=r["last"], request_id=r["id"],
            )  # fmt: skip
    for w in writers.values():
        w.close()
    fast_rows, slow_rows = table(folders["fast"]), table(folders["slow"])
    assert len(list(folders["fast"].glob("*.parquet"))) == len(list(folders["slow"].glob("*.parquet")))
    assert fast_rows.keys() == slow_rows.keys()
    for column, values in slow_rows.items():
        assert fast_rows[column] == values, column
    scores_column = fast_rows["scores"]
    assert [len(s) for s in scores_column] == [e + 1 for e in fast_rows["exit"]]  # no score past the exit


def test_a_buffer_of_scores_that_do_not_fit_its_exits_is_refused_at_the_flush(tmp_path: Path):
    """The unchecked call trusts the runner; a row that breaks the layout stops the writer, no bad file."""
    w = TelemetryWriter(tmp_path, identity(3), background=False, deferred=deferred)
    w.record_one(1, 2, (0.5, 0.25), 1.0)
    w._record_one(2, 2, [0.5], 1.0, None, -1, None)  # exit 2 needs 3 scores
    with pytest.raises(DyncalError, match="hold 3 scores where their exits need 5"):
        w.flush()
    assert not list(tmp_path.glob("*.parquet"))
