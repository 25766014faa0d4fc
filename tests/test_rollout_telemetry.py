"""Telemetry of the shipped runner: Parquet files per process, crash-safe, bound to one package."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dyncal.errors import DyncalError
from dyncal.telemetry import (
    PackageIdentity,
    TelemetryData,
    TelemetryMetrics,
    TelemetryWriter,
    read_telemetry,
    recover_telemetry,
    require_pyarrow,
)

pa = pytest.importorskip("pyarrow", reason="telemetry needs pyarrow (the rollout extra)")
pq = pytest.importorskip("pyarrow.parquet", reason="telemetry needs pyarrow (the rollout extra)")

ROOT = Path(__file__).resolve().parents[1]
IDENT = PackageIdentity(
    decision_fingerprint="ab" * 32,
    k=3,
    c=5,
    score="maxprob",
    temperatures=(1.0, 1.5, 1.0),
    thresholds=(0.9, 0.8, None),
    run_fingerprint="cd" * 32,
    manifest_sha256="ef" * 32,
)


class Clock:
    """A settable clock (seconds since the epoch)."""

    def __init__(self, t: float = 1_700_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def batch(rng: np.random.Generator, b: int, start: int, shadow: float = 0.5):
    """One batch of requests numbered from ``start``: exits, predictions, scores, latency, last, ids."""
    exits = rng.integers(0, 3, b)
    preds = rng.integers(0, 5, b)
    scores = rng.random((b, 3)).astype(np.float32)
    last = np.where(rng.random(b) < shadow, rng.integers(0, 5, b), -1)
    ids = [str(start + i) for i in range(b)]
    return exits, preds, scores, rng.random(b) * 10, last, ids


def files(folder: Path, suffix: str) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.name.endswith(suffix))


def test_rows_read_back_as_recorded(tmp_path: Path):
    rng = np.random.default_rng(0)
    clock = Clock()
    sent = []
    with TelemetryWriter(tmp_path, IDENT, shadow=0.5, background=False, flush_rows=7, clock=clock) as w:
        start = 0
        for _ in range(12):
            b = int(rng.integers(1, 5))
            ex, pr, sc, lat, last, ids = batch(rng, b, start)
            clock.t += 0.25
            w.record(ex, pr, sc, lat, last_predictions=last, request_ids=ids)
            sent.append((clock.t, ex, pr, sc, lat, last, ids))
            start += b
    got = read_telemetry(tmp_path, expect=IDENT)
    d = got.data
    assert d.n == start and got.identity == IDENT and not got.streams and not got.truncated
    assert files(tmp_path, ".arrows") == [] and files(tmp_path, ".partial") == []
    exits = np.concatenate([s[1] for s in sent])
    scores = np.concatenate([s[3] for s in sent])
    assert d.exits.tolist() == exits.tolist()
    assert d.predictions.tolist() == np.concatenate([s[2] for s in sent]).tolist()
    assert d.last_predictions.tolist() == np.concatenate([s[5] for s in sent]).tolist()
    assert d.request_ids.tolist() == [i for s in sent for i in s[6]]
    assert np.allclose(d.latency_ms, np.concatenate([s[4] for s in sent]), rtol=1e-6)
    assert d.time_us.tolist() == [int(s[0] * 1e6) for s in sent for _ in s[1]]
    for j in range(3):
        evaluated = exits >= j
        assert np.allclose(d.scores[evaluated, j], scores[evaluated, j])
        assert np.isnan(d.scores[~evaluated, j]).all()
    assert got.shadow_shares == (0.5,)


def test_a_finished_file_is_plain_parquet_carrying_the_package(tmp_path: Path):
    rng = np.random.default_rng(1)
    with TelemetryWriter(tmp_path, IDENT, background=False, flush_rows=10, row_group_rows=16) as w:
        for i in range(10):
            w.record(*batch(rng, 5, 5 * i)[:4])
    (finished,) = files(tmp_path, ".parquet")
    table = pq.read_table(finished)
    assert table.num_rows == 50
    assert pq.ParquetFile(finished).metadata.num_row_groups == 4  # 50 rows in groups of 16
    meta = json.loads(table.schema.metadata[b"dyncal.telemetry"])
    assert meta["package"]["manifest_sha256"] == IDENT.manifest_sha256
    assert meta["schema_version"] == 1 and meta["process"]["pid"] == os.getpid()
    assert finished.name.startswith("telemetry-") and f"-{os.getpid()}-" in finished.name


def test_rows_are_flushed_by_count_and_by_age(tmp_path: Path):
    clock = Clock()
    rng = np.random.default_rng(2)
    w = TelemetryWriter(tmp_path, IDENT, background=False, flush_rows=10, flush_seconds=5.0, clock=clock)
    w.record(*batch(rng, 9, 0)[:4])
    assert files(tmp_path, ".arrows") == []  # 9 rows, 0 s old: still buffered
    w.record(*batch(rng, 1, 9)[:4])
    assert read_telemetry(tmp_path).data.n == 10  # the 10th row flushed all
    w.record(*batch(rng, 2, 10)[:4])
    clock.t += 4.9
    w.record(*batch(rng, 1, 12)[:4])
    assert read_telemetry(tmp_path).data.n == 10
    clock.t += 0.2
    w.record(*batch(rng, 1, 13)[:4])  # the oldest buffered row is now 5.1 s old
    got = read_telemetry(tmp_path)
    assert got.data.n == 14 and len(got.streams) == 1 and not got.files
    assert w.rows_written == 14
    w.close()
    assert read_telemetry(tmp_path).data.n == 14


def test_segments_rotate_by_size_and_by_age(tmp_path: Path):
    clock = Clock()
    rng = np.random.default_rng(3)
    w = TelemetryWriter(tmp_path, IDENT, background=False, flush_rows=5, rotate_bytes=4000, clock=clock)
    for i in range(40):
        w.record(*batch(rng, 5, 5 * i)[:4])
    by_size = files(tmp_path, ".parquet")
    assert len(by_size) >= 3 and files(tmp_path, ".partial") == []
    got = read_telemetry(tmp_path)
    assert got.data.n == 200 and len(got.files) == len(by_size) and len(got.streams) <= 1
    w.close()
    size_dir = tmp_path / "age"
    w = TelemetryWriter(size_dir, IDENT, background=False, flush_rows=1, rotate_seconds=60.0, clock=clock)
    for i in range(6):
        clock.t += 25.0
        w.record(*batch(rng, 1, i)[:4])
    # the segment opened at 25 s is finished by the flush at 100 s (75 s old); the one opened at 125 s is live
    (first,) = files(size_dir, ".parquet")
    assert pq.read_table(first).num_rows == 4 and len(files(size_dir, ".arrows")) == 1
    w.close()
    assert len(files(size_dir, ".parquet")) == 2 and files(size_dir, ".arrows") == []
    assert read_telemetry(size_dir).data.n == 6


def _stream_bytes(tmp_path: Path) -> tuple[bytes, list[int], set[int]]:
    """A live stream of three flushed batches (3, 4 and 5 rows), the rows complete at each length, the message ends."""
    rng = np.random.default_rng(4)
    w = TelemetryWriter(tmp_path / "src", IDENT, background=False, flush_rows=1000)
    sizes = []
    for b in (3, 4, 5):
        w.record(*batch(rng, b, 0)[:4])
        w.flush()
        (stream,) = files(tmp_path / "src", ".arrows")
        sizes.append(stream.stat().st_size)
    data = stream.read_bytes()
    header = pa.ipc.open_stream(pa.BufferReader(data)).schema.serialize().size
    ends = [(sizes[0], 3), (sizes[1], 7), (sizes[2], 12)]
    complete = [max([rows for end, rows in ends if end <= cut], default=0) for cut in range(len(data) + 1)]
    return data, complete, {header, *sizes}


def test_a_stream_cut_at_any_byte_reads_its_complete_batches_and_no_more(tmp_path: Path):
    data, complete, boundaries = _stream_bytes(tmp_path)
    folder = tmp_path / "cut"
    folder.mkdir()
    path = folder / "telemetry-host-1-20240101T000000-0123abcd-00000.arrows"
    header = min(boundaries)
    cuts = {0, 1, len(data)} | set(range(0, len(data), 5)) | {b + d for b in boundaries for d in (-1, 0, 1)}
    for cut in sorted(c for c in cuts if 0 <= c <= len(data)):
        path.write_bytes(data[:cut])
        if cut < header:  # cut inside the schema message: nothing was flushed, and it says so
            with pytest.raises(DyncalError, match="no telemetry rows"):
                read_telemetry(folder)
            empty = read_telemetry(folder, expect=IDENT)
            assert empty.data.n == 0 and empty.truncated == (str(path),)
            continue
        got = read_telemetry(folder, expect=IDENT)
        assert got.data.n == complete[cut], cut
        assert (str(path) in got.truncated) == (cut not in boundaries), cut


def test_a_partial_parquet_is_never_read(tmp_path: Path):
    rng = np.random.default_rng(5)
    with TelemetryWriter(tmp_path, IDENT, background=False, flush_rows=5) as w:
        w.record(*batch(rng, 5, 0)[:4])
    (done,) = files(tmp_path, ".parquet")
    half = done.read_bytes()[: done.stat().st_size // 2]
    (tmp_path / (done.name[: -len(".parquet")].replace("-00000", "-00001") + ".parquet.partial")).write_bytes(half)
    assert read_telemetry(tmp_path).data.n == 5


def test_a_stream_left_beside_its_finished_file_is_counted_once_and_recovered(tmp_path: Path):
    rng = np.random.default_rng(6)
    w = TelemetryWriter(tmp_path, IDENT, background=False, flush_rows=5)
    w.record(*batch(rng, 5, 0)[:4])
    (stream,) = files(tmp_path, ".arrows")
    saved = stream.read_bytes()
    w.close()
    stream.write_bytes(saved)  # as if the writer died between the rename and the removal
    got = read_telemetry(tmp_path)
    assert got.data.n == 5 and not got.streams
    assert recover_telemetry(tmp_path) == []
    assert files(tmp_path, ".arrows") == [] and read_telemetry(tmp_path).data.n == 5


def test_recovery_leaves_a_live_writers_stream_alone(tmp_path: Path):
    rng = np.random.default_rng(7)
    w = TelemetryWriter(tmp_path, IDENT, background=False, flush_rows=5)
    w.record(*batch(rng, 5, 0)[:4])
    assert recover_telemetry(tmp_path) == []
    assert len(files(tmp_path, ".arrows")) == 1
    w.record(*batch(rng, 5, 5)[:4])
    w.close()
    assert read_telemetry(tmp_path).data.n == 10


WRITER = """
import sys, numpy as np
from dyncal.telemetry import PackageIdentity, TelemetryWriter
ident = PackageIdentity.from_dict({ident})
folder, prefix, batches, rows = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
w = TelemetryWriter(folder, ident, shadow=0.5, background=False, flush_rows=rows, rotate_bytes=200_000, seed=0)
rng = np.random.default_rng(abs(hash(prefix)) % 1000)
n = 0
for i in range(batches):
    ex = rng.integers(0, 3, rows); pr = rng.integers(0, 5, rows); sc = rng.random((rows, 3))
    last = np.where(w.shadow_mask(rows), pr, -1)
    w.record(ex, pr, sc, 1.0, last_predictions=last, request_ids=[f"{{prefix}}{{n + j}}" for j in range(rows)])
    n += rows
    print(n, flush=True)
w.close()
print("closed", flush=True)
"""


def _writer(tmp_path: Path, folder: Path, prefix: str, batches: int, rows: int) -> subprocess.Popen[str]:
    script = tmp_path / "writer.py"
    script.write_text(textwrap.dedent(WRITER.format(ident=IDENT.to_dict())))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen(
        [sys.executable, str(script), str(folder), prefix, str(batches), str(rows)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )


def _ids(data: TelemetryData, prefix: str) -> list[int]:
    return sorted(int(r[len(prefix) :]) for r in data.request_ids if r.startswith(prefix))


@pytest.mark.integration
@pytest.mark.parametrize("after", [3, 17, 40])
def test_a_writer_killed_mid_flush_loses_only_unflushed_rows(tmp_path: Path, after: int):
    folder = tmp_path / "tele"
    proc = _writer(tmp_path, folder, "r", batches=10_000, rows=2000)
    assert proc.stdout is not None
    flushed = 0
    for _ in range(after):
        flushed = int(proc.stdout.readline())
    os.kill(proc.pid, signal.SIGKILL)  # the next flush (2000 rows) is under way
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    got = read_telemetry(folder, expect=IDENT)
    ids = _ids(got.data, "r")
    assert ids == list(range(len(ids)))  # a prefix of what was sent: no gap, nothing twice
    assert flushed <= len(ids) <= flushed + 2 * 2000
    for finished in files(folder, ".parquet"):
        assert pq.read_table(finished).num_rows > 0  # every finished file whole on its own
    for partial in files(folder, ".partial"):
        assert str(partial) not in got.files
    recovered = recover_telemetry(folder)
    assert files(folder, ".arrows") == [] and len(recovered) <= 1
    again = read_telemetry(folder, expect=IDENT)
    assert _ids(again.data, "r") == ids and not again.streams


@pytest.mark.integration
def test_two_processes_write_side_by_side(tmp_path: Path):
    folder = tmp_path / "tele"
    procs = [_writer(tmp_path, folder, prefix, batches=60, rows=500) for prefix in ("a", "b")]
    for p in procs:
        out, _ = p.communicate(timeout=300)
        assert p.returncode == 0 and out.strip().endswith("closed")
    got = read_telemetry(folder, expect=IDENT)
    assert _ids(got.data, "a") == list(range(30_000)) and _ids(got.data, "b") == list(range(30_000))
    pids = {p.pid for p in procs}
    owners = {int(Path(f).name.split("-")[2]) for f in got.files}
    assert owners == pids and len(got.files) > 2  # rotated, each process in its own files
    assert not got.streams and files(folder, ".arrows") == []
    assert 0.45 < got.data.shadow.mean() < 0.55


def test_telemetry_of_another_package_is_refused(tmp_path: Path):
    rng = np.random.default_rng(8)
    with TelemetryWriter(tmp_path, IDENT, background=False) as w:
        w.record(*batch(rng, 3, 0)[:4])
    for field, value, why in [
        ("decision_fingerprint", "12" * 32, "other thresholds"),
        ("run_fingerprint", "34" * 32, "thresholds solved on another run"),
        ("manifest_sha256", "56" * 32, "another package"),
    ]:
        other = PackageIdentity(**{**IDENT.__dict__, field: value})
        with pytest.raises(DyncalError, match=rf"was written by another package: .*\({why}\)") as info:
            read_telemetry(tmp_path, expect=other)
        assert "\n" not in str(info.value)
    unknown_manifest = PackageIdentity(**{**IDENT.__dict__, "manifest_sha256": None})
    assert read_telemetry(tmp_path, expect=unknown_manifest).data.n == 3  # what is not known is not compared
    other = PackageIdentity(**{**IDENT.__dict__, "decision_fingerprint": "12" * 32})
    with TelemetryWriter(tmp_path, other, background=False) as w:
        w.record(*batch(rng, 3, 0)[:4])
    with pytest.raises(DyncalError, match="mixes packages"):
        read_telemetry(tmp_path)


def test_folders_and_files_that_are_not_telemetry(tmp_path: Path):
    with pytest.raises(DyncalError, match="no telemetry folder"):
        read_telemetry(tmp_path / "missing")
    (tmp_path / "notes.txt").write_text("mine")
    pq.write_table(pa.table({"x": [1, 2]}), tmp_path / "other.parquet")
    with pytest.raises(DyncalError, match="no telemetry files in"):
        read_telemetry(tmp_path)
    pq.write_table(pa.table({"x": [1, 2]}), tmp_path / "telemetry-h-1-20240101T000000-0123abcd-00000.parquet")
    with pytest.raises(DyncalError, match="is not dyncal telemetry"):
        read_telemetry(tmp_path)


def test_malformed_rows_are_refused(tmp_path: Path):
    rng = np.random.default_rng(9)
    with TelemetryWriter(tmp_path, IDENT, background=False) as w:
        w.record(*batch(rng, 3, 0)[:4])
    (done,) = files(tmp_path, ".parquet")
    table = pq.read_table(done)
    at = table.schema.get_field_index("prediction")
    bad = table.set_column(at, table.schema.field(at), pa.array([0, 9, 1], pa.int32()))
    pq.write_table(bad, done)
    with pytest.raises(DyncalError, match=r"holds malformed telemetry \(predictions outside \[0, 5\)\)"):
        read_telemetry(tmp_path)


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"scores": np.zeros((2, 2))}, r"scores \(2, 2\) \(want \(2, 3\)\)"),
        ({"predictions": [1]}, r"predictions \(1,\)"),
        ({"exits": [0, 3]}, r"exits must lie in \[0, 3\)"),
        ({"last_predictions": [1, 2, 3]}, r"last_predictions \(3,\)"),
        ({"request_ids": ["a"]}, r"got 1 request ids"),
    ],
)
def test_a_malformed_batch_is_refused_and_nothing_is_written(tmp_path: Path, kwargs, pattern):
    w = TelemetryWriter(tmp_path, IDENT, background=False, flush_rows=1)
    args = {"exits": [0, 1], "predictions": [1, 2], "scores": np.zeros((2, 3)), "latency_ms": 1.0, **kwargs}
    with pytest.raises(DyncalError, match=pattern):
        w.record(**args)
    w.close()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"shadow": 1.5}, r"`shadow` must be a share in \[0, 1\]"),
        ({"flush_rows": 0}, r"`flush_rows` must be a positive integer"),
        ({"flush_seconds": float("inf")}, r"`flush_seconds` must be a positive number"),
        ({"rotate_bytes": 2.5}, r"`rotate_bytes` must be a positive integer"),
    ],
)
def test_bad_writer_options_are_refused(tmp_path: Path, kwargs, pattern):
    with pytest.raises(DyncalError, match=pattern):
        TelemetryWriter(tmp_path, IDENT, background=False, **kwargs)


def test_a_closed_writer_refuses_more_rows(tmp_path: Path):
    w = TelemetryWriter(tmp_path, IDENT, background=False)
    w.close()
    w.close()  # idempotent
    with pytest.raises(DyncalError, match="this telemetry writer is closed"):
        w.record([0], [0], np.zeros((1, 3)), 1.0)


def test_a_forked_child_must_create_its_own_writer(tmp_path: Path):
    w = TelemetryWriter(tmp_path, IDENT, background=False, flush_rows=1)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report what record says, touch nothing else
        try:
            w.record([0], [0], np.zeros((1, 3)), 1.0)
            msg = "recorded"
        except DyncalError as e:
            msg = str(e)
        os.write(write, msg.encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    msg = os.read(read, 1000).decode()
    os.close(read)
    assert "is used in a forked child" in msg and "create the writer (load the runner) in each worker" in msg
    w.record([1], [2], np.zeros((1, 3)), 1.0)
    w.close()
    assert read_telemetry(tmp_path).data.exits.tolist() == [1]


def _rows_flushed(folder: Path) -> int:
    """Rows the writers have flushed so far: 0 while a new stream holds only its schema (read says "yet")."""
    try:
        return read_telemetry(folder).data.n
    except DyncalError as e:
        if "have flushed nothing" not in str(e):
            raise
        return 0


def test_the_background_thread_flushes_without_the_request_path(tmp_path: Path):
    rng = np.random.default_rng(10)
    w = TelemetryWriter(tmp_path, IDENT, flush_rows=8, flush_seconds=3600.0)
    w.record(*batch(rng, 8, 0)[:4])
    for _ in range(600):  # wait for the thread (an event, not a timing claim)
        if files(tmp_path, ".arrows") and _rows_flushed(tmp_path) == 8:
            break
        time.sleep(0.05)
    assert read_telemetry(tmp_path).data.n == 8
    w.record(*batch(rng, 3, 8)[:4])
    w.close()
    assert read_telemetry(tmp_path).data.n == 11 and files(tmp_path, ".arrows") == []


def test_shadow_draws_follow_the_share():
    w = object.__new__(TelemetryWriter)
    w.shadow, w._rng = 0.3, np.random.default_rng(0)
    assert abs(w.shadow_mask(20_000).mean() - 0.3) < 0.015
    w.shadow = 0.0
    assert not w.shadow_mask(100).any()
    w.shadow = 1.0
    assert w.shadow_mask(100).all()


def test_prometheus_metrics_count_requests_latency_and_disagreements(tmp_path: Path):
    prom = pytest.importorskip("prometheus_client", reason="metrics need prometheus-client (the rollout extra)")
    registry = prom.CollectorRegistry()
    metrics = TelemetryMetrics(3, registry=registry)
    w = TelemetryWriter(tmp_path, IDENT, background=False, metrics=metrics)
    w.record([0, 2, 2], [1, 2, 3], np.zeros((3, 3)), [2.0, 4.0, 600.0], last_predictions=[1, 4, -1])
    w.close()
    text = prom.generate_latest(registry).decode()
    assert 'dyncal_early_exit_requests_total{exit="1"} 1.0' in text
    assert 'dyncal_early_exit_requests_total{exit="3"} 2.0' in text
    assert "dyncal_early_exit_latency_seconds_count 3.0" in text
    assert 'dyncal_early_exit_latency_seconds_bucket{le="0.005"} 2.0' in text
    assert "dyncal_shadow_requests_total 2.0" in text
    assert "dyncal_shadow_disagreements_total 1.0" in text


def test_prometheus_counts_lag_by_a_flush_and_then_equal_the_rows(tmp_path: Path):
    """Metrics are updated at the flush (off the request path): nothing before it, every row after it."""
    prom = pytest.importorskip("prometheus_client", reason="metrics need prometheus-client (the rollout extra)")
    registry = prom.CollectorRegistry()
    w = TelemetryWriter(tmp_path, IDENT, background=False, metrics=TelemetryMetrics(3, registry=registry))
    w.record_one(0, 1, (0.9,), 0.3)
    w.record_one(2, 2, (0.1, 0.2, 0.4), 7.0, last_prediction=1)
    w.record([1], [0], np.zeros((1, 3)), 2.0, last_predictions=[0])
    count = registry.get_sample_value
    assert (count("dyncal_early_exit_latency_seconds_count") or 0.0) == 0.0  # buffered, not yet counted
    w.flush()
    assert [count("dyncal_early_exit_requests_total", {"exit": str(j)}) for j in (1, 2, 3)] == [1.0, 1.0, 1.0]
    assert count("dyncal_early_exit_latency_seconds_count") == 3.0
    assert count("dyncal_early_exit_latency_seconds_bucket", {"le": "0.0005"}) == 1.0
    assert count("dyncal_early_exit_latency_seconds_bucket", {"le": "0.005"}) == 2.0
    assert count("dyncal_shadow_requests_total") == 2.0 and count("dyncal_shadow_disagreements_total") == 1.0
    w.close()
    assert count("dyncal_early_exit_latency_seconds_count") == 3.0  # counted once


@settings(max_examples=30, deadline=None)
@given(ms=st.lists(st.one_of(st.sampled_from([0.5, 1.0, 2.0, 5.0, 5000.0, 0.0]), st.floats(0.0, 9000.0)), max_size=40))
def test_prometheus_bulk_counts_equal_one_observation_per_request(ms: list[float]):
    """The flush's bulk histogram update (bucket bounds included) equals observing each request alone."""
    prom = pytest.importorskip("prometheus_client", reason="metrics need prometheus-client (the rollout extra)")
    bulk, each = prom.CollectorRegistry(), prom.CollectorRegistry()
    rng = np.random.default_rng(len(ms))
    exits, preds = rng.integers(0, 3, len(ms)), rng.integers(0, 3, len(ms))
    last = np.where(rng.random(len(ms)) < 0.5, rng.integers(0, 3, len(ms)), -1)
    TelemetryMetrics(3, registry=bulk).observe_rows(exits, np.array(ms, dtype=np.float32), preds, last)
    one = TelemetryMetrics(3, registry=each)
    for e, m, p, q in zip(exits, np.array(ms, dtype=np.float32), preds, last, strict=True):
        one.observe_one(int(e), float(m), int(q), int(p))

    def samples(registry: object) -> dict:
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for m in registry.collect()  # type: ignore[attr-defined]
            for s in m.samples
            if not s.name.endswith("_created")
        }

    got, want = samples(bulk), samples(each)
    assert got.keys() == want.keys()
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key


def test_missing_pyarrow_names_the_extra(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    with pytest.raises(DyncalError, match=r"telemetry needs pyarrow.*pip install 'dyncal\[rollout\]'"):
        require_pyarrow()


@settings(max_examples=25, deadline=None)
@given(sizes=st.lists(st.integers(1, 6), min_size=1, max_size=6), k=st.integers(1, 4), seed=st.integers(0, 999))
def test_any_batches_round_trip(tmp_path_factory: pytest.TempPathFactory, sizes: list[int], k: int, seed: int):
    folder = tmp_path_factory.mktemp("rt")
    ident = PackageIdentity("ab" * 32, k, 4, "maxprob", (1.0,) * k, (*([0.5] * (k - 1)), None))
    rng = np.random.default_rng(seed)
    exits, scores = [], []
    with TelemetryWriter(folder, ident, background=False, flush_rows=4) as w:
        for b in sizes:
            ex, sc = rng.integers(0, k, b), rng.random((b, k))
            w.record(ex, rng.integers(0, 4, b), sc, 1.0)
            exits.append(ex)
            scores.append(sc)
    d = read_telemetry(folder).data
    ex, sc = np.concatenate(exits), np.concatenate(scores)
    expected = np.where(np.arange(k)[None, :] <= ex[:, None], sc.astype(np.float32), np.nan)
    assert d.exits.tolist() == ex.tolist()
    assert np.array_equal(d.scores, expected, equal_nan=True)


def test_a_failed_write_is_one_line_and_stops_the_writer(tmp_path: Path):
    import shutil

    folder = tmp_path / "tele"
    w = TelemetryWriter(folder, IDENT, background=False, flush_rows=1)
    shutil.rmtree(folder)  # the folder is gone: the segment cannot be created
    with pytest.raises(DyncalError, match=r"telemetry could not be written to '.*tele': FileNotFoundError") as info:
        w.record([0], [0], np.zeros((1, 3)), 1.0)
    assert "\n" not in str(info.value)
    with pytest.raises(DyncalError, match="could not be written"):
        w.record([0], [0], np.zeros((1, 3)), 1.0)
    with pytest.raises(DyncalError, match="could not be written"):
        w.close()
