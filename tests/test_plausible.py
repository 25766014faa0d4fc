"""profile refuses latency that cannot be right, with a remedy that does not repeat what was done."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest
from synthetic_profiles import synthetic_profile
from test_profile import FAST, _run_for

from dyncal.analysis.plausible import ORDER_TOLERANCE, check_plausible, implausible
from dyncal.artifacts.costs import LatencyProfile
from dyncal.artifacts.run import load_run
from dyncal.errors import ProfileError


def _prof(b: int, full: tuple[float, ...], device: str = "cpu", threads: int | None = 1) -> LatencyProfile:
    return synthetic_profile(device, b, ((0.1, 0.1, 0.1),), (0.01, 0.01, 0.01), full, threads, "x")


def test_a_single_sample_slower_than_a_whole_batch_is_refused():
    profiles = [_prof(1, (187.0, 186.0, 188.0)), _prof(8, (23.6, 23.5, 23.7))]
    with pytest.raises(ProfileError) as e:
        check_plausible(profiles, threads=1, repeats=25)
    msg = str(e.value)
    assert "187 ms for one batch of 1 (cpu/b1) but 23.6 ms for a whole batch of 8 (cpu/b8)" in msg
    assert "cannot be right" in msg and "nothing was stored" in msg
    assert "`threads` 1" not in msg and "`repeats` 100" in msg  # one thread was pinned already


def test_the_remedy_pins_one_thread_only_when_more_were_used():
    profiles = [_prof(1, (187.0,), threads=2), _prof(8, (23.6,), threads=2)]
    with pytest.raises(ProfileError, match=r"pin one thread \(`threads` 1\)"):
        check_plausible(profiles, threads=None, repeats=25)


def test_a_spread_wider_than_the_median_is_refused():
    wild = (1.0, 1.0, 1.2, 5.0, 6.0, 7.0, 0.9, 8.0)
    assert "means nothing" in (implausible([_prof(1, wild)]) or "")
    with pytest.raises(ProfileError, match="median means nothing"):
        check_plausible([_prof(1, wild)], threads=1, repeats=8)


@pytest.mark.parametrize(
    "profiles",
    [
        [_prof(1, (2.0, 2.1, 2.0)), _prof(8, (9.0, 9.1, 9.0))],  # ordinary
        [_prof(1, (1.1, 1.1)), _prof(8, (1.0, 1.0))],  # launch-bound: a tie within the tolerance
        [_prof(1, (30.0,), device="cuda"), _prof(8, (5.0,))],  # other devices are not compared
        [_prof(4, (1.0, 1.0, 1.1, 1.05))],  # one batch size, modest spread
    ],
)
def test_plausible_latency_passes(profiles):
    assert implausible(profiles) is None
    check_plausible(profiles, threads=1, repeats=25)


def test_the_tolerance_is_a_bound_and_one_fast_replicate_clears_it():
    assert implausible([_prof(1, (ORDER_TOLERANCE * 1.01,)), _prof(2, (1.0,))]) is not None
    assert implausible([_prof(1, (ORDER_TOLERANCE * 0.99,)), _prof(2, (1.0,))]) is None
    # a median above the batch but one replicate below: the machine can run it that fast
    assert implausible([_prof(1, (5.0, 5.0, 1.1)), _prof(2, (1.0,))]) is None


def test_few_replicates_are_not_judged_by_their_spread():
    assert implausible([_prof(1, (1.0, 1.0, 9.0))]) is None


@pytest.mark.integration  # a real profile: the model exported and timed
def test_profile_refuses_and_stores_nothing(cli, tmp_path, monkeypatch):
    """A real profile whose batch-1 figure is made impossible (as a busy machine made it) exits 1, run unchanged."""
    import dyncal.verbs.profile as profile_verb

    real = profile_verb.measure_latency

    def busy_at_b1(stages, model, x, settings, **kw):
        prof = real(stages, model, x, settings, **kw)
        if prof.batch_size == 1:  # another process held the core while the single sample was timed
            prof = dataclasses.replace(prof, full_model_ms=tuple(1000.0 * v for v in prof.full_model_ms))
        return prof

    run = _run_for(tmp_path, "conv_stack", [3, 8, 8], 3, 5)
    before = (run / "run.json").read_bytes()
    monkeypatch.setattr(profile_verb, "measure_latency", busy_at_b1)
    res = cli("profile", run, "--batch-size", "1,4", *FAST)
    assert res.exit_code == 1 and "Traceback" not in res.output
    err = res.stderr.strip().splitlines()[-1]  # noise warnings may come before it
    assert re.fullmatch(r"error: latency refused: the full model took .* for one batch of 1 \(cpu/b1\) but .*", err)
    assert "--threads 1" not in err and "--repeats 12" in err  # profile's default pinned one thread
    assert (run / "run.json").read_bytes() == before and load_run(run).costs is None
    monkeypatch.setattr(profile_verb, "measure_latency", real)
    ok = cli("profile", run, "--batch-size", "1,4", *FAST, "--json")
    assert ok.exit_code == 0, ok.output
    assert {v["threads"] for v in json.loads(ok.stdout)["latency"].values()} == {1}  # profile's default


@pytest.mark.integration  # a real profile: the model exported and timed
def test_a_burst_of_load_is_timed_again_not_refused(cli, tmp_path, monkeypatch):
    """Only the first timing of batch 1 is impossible: profile times the device again and stores the second."""
    import dyncal.verbs.profile as profile_verb

    real = profile_verb.measure_latency
    seen: list[int] = []

    def busy_once(stages, model, x, settings, **kw):
        prof = real(stages, model, x, settings, **kw)
        seen.append(prof.batch_size)
        if seen.count(1) == 1 and prof.batch_size == 1:
            prof = dataclasses.replace(prof, full_model_ms=tuple(1000.0 * v for v in prof.full_model_ms))
        return prof

    run = _run_for(tmp_path, "conv_stack", [3, 8, 8], 3, 5)
    monkeypatch.setattr(profile_verb, "measure_latency", busy_once)
    res = cli("profile", run, "--batch-size", "1,4", *FAST)
    assert res.exit_code == 0, res.output
    assert "cannot be right" in res.stderr and "timing it again (2 of 3)" in res.stderr
    assert seen == [1, 4, 1, 4]
    costs = load_run(run).costs
    assert costs is not None and costs.latency["cpu/b1"].full_model_median_ms < 1000 * min(
        costs.latency["cpu/b4"].full_model_ms
    )
