"""dyncal profile: stages from the graph, fvcore MACs per stage/exit, measured latency."""

from __future__ import annotations

import json
import re
import time
import warnings
from pathlib import Path

import models_zoo as zoo
import numpy as np
import pytest
import torch
from conftest import TESTS, assert_clean_error
from synthetic_profiles import synthetic_profile

from dyncal.analysis.flops import _quiet_torchscript, model_macs, stage_macs
from dyncal.analysis.latency import LatencySettings, measure_latency, pinned_threads
from dyncal.analysis.stages import Stages, build_stages, declared_stages, verify_stages
from dyncal.artifacts.costs import CostTable, LatencyProfile, UnsupportedOp
from dyncal.artifacts.run import load_run, store_costs
from dyncal.artifacts.run_document import Provenance
from dyncal.artifacts.run_import import import_arrays
from dyncal.errors import DyncalError, ProfileError, RunError
from dyncal.measurement import Measurement
from dyncal.models import sha256_file
from dyncal.verbs.profile import ProfileOptions, profile_run, profile_run_full

# ----------------------------------------------------------------- helpers


def _run_for(tmp_path: Path, factory: str, input_shape: list[int], k: int, c: int, name: str = "run") -> Path:
    """An imported run whose provenance names a models_zoo factory, as collect records it."""
    prov = Provenance.here(
        model=f"models_zoo:{factory}",
        data="(test)",
        device="cpu",
        extra={
            "weights": None,
            "model_path": str(TESTS),
            "input_shape": input_shape,
            "input_dtype": "float32",
        },
    )
    rng = np.random.default_rng(0)
    out = tmp_path / name
    import_arrays(rng.normal(size=(6, k, c)).astype(np.float32), rng.integers(0, c, 6), out, provenance=prov)
    return out


FAST = ("--repeats", "3", "--warmup", "1")


def _stages(model: torch.nn.Module, shape: tuple[int, ...]) -> Stages:
    return build_stages(model, torch.randn(2, *shape))


# ----------------------------------------------------------------- MACs, exact


@pytest.mark.parametrize(
    ("factory", "shape"),
    [(zoo.linear_stack, (8,)), (zoo.conv_stack, (3, 8, 8)), (zoo.BranchyNet, (2, 8, 8))],
    ids=["linear", "conv", "branchy"],
)
def test_hand_counted_macs_per_exit(factory, shape):
    model = factory().eval()
    stages = _stages(model, shape)
    assert stages.source == "export" and stages.k == 3
    for b in (1, 3):
        check = verify_stages(model, stages, torch.randn(b, *shape))
        assert max(check.max_abs_diff) <= 1e-5
    counts = stage_macs(stages, torch.randn(1, *shape), model=model)
    assert counts.exit_macs == model.EXIT_MACS
    assert counts.model_macs == counts.graph_macs == model.EXIT_MACS[-1]
    assert counts.unsupported_ops == ()


def test_fvcore_conventions_we_rely_on():
    """One fused multiply-add is one MAC; bias adds are free."""
    assert model_macs(torch.nn.Linear(5, 7), torch.zeros(1, 5)).macs == 35
    assert model_macs(torch.nn.Conv2d(2, 3, 3, padding=1), torch.zeros(1, 2, 4, 4)).macs == 3 * 16 * 2 * 9


def test_stage_macs_are_per_sample_at_batch_one():
    model = zoo.conv_stack()
    stages = _stages(model, (3, 8, 8))
    one = stage_macs(stages, torch.randn(1, 3, 8, 8))
    four = stage_macs(stages, torch.randn(4, 3, 8, 8))
    assert four.stage_macs == tuple(4 * m for m in one.stage_macs)


# ----------------------------------------------------------------- partition


def test_heads_from_several_depths_carry_what_later_exits_need():
    model = zoo.BranchyNet().eval()
    stages = _stages(model, (2, 8, 8))
    # exit 2 reads the first conv's output again: stage 1 must hand it on
    x = torch.randn(3, 2, 8, 8)
    run = stages.start(x)
    run.step()
    assert len(run.carry) == 2
    verify_stages(model, stages, x)


def test_perceiver_two_branch_partitions_correctly():
    model = zoo.perceiver_like()
    stages = _stages(model, (3, 8, 8))
    assert stages.k == 4 and stages.dynamic_batch
    for b in (1, 2, 5):
        x = torch.randn(b, 3, 8, 8)
        with torch.inference_mode():
            want = model(x)
            got = stages.run(x)
        for w, g in zip(want, got, strict=True):
            torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)
    counts = stage_macs(stages, torch.randn(1, 3, 8, 8), model=model)
    assert sum(counts.stage_macs) == counts.model_macs
    assert all(b > a for a, b in zip(counts.exit_macs, counts.exit_macs[1:], strict=False))
    softmax = {u.stage: u.count for u in counts.unsupported_ops if u.op == "aten::softmax"}
    # x->z of block 1 | z->x of block 1 + x->z of block 2 | ... | z->x of block 3 (exit 4 only)
    assert softmax == {1: 1, 2: 2, 3: 2, 4: 1}
    # exit 4 alone needs the CNN head and the last z->x attention
    assert counts.by_operator[3].get("conv", 0) == 0
    assert counts.stage_macs[3] > 0


def test_early_stop_runs_no_later_stage():
    model = zoo.perceiver_like()
    stages = _stages(model, (3, 8, 8))
    calls: list[int] = []
    for i, m in enumerate(stages.modules):
        m.register_forward_hook(lambda *_, i=i: calls.append(i + 1))
    x = torch.randn(2, 3, 8, 8)
    with torch.inference_mode():
        for exit_, _logits in enumerate(stages.iter_exits(x), start=1):
            if exit_ == 2:
                break
        assert calls == [1, 2]
        calls.clear()
        assert len(stages.run(x, upto=1)) == 1
        assert calls == [1]


def test_keep_rows_gives_the_models_logits_for_the_rows_that_stay():
    model = zoo.perceiver_like()
    stages = _stages(model, (3, 8, 8))
    x = torch.randn(6, 3, 8, 8)
    keep = torch.tensor([True, False, True, True, False, True])
    with torch.inference_mode():
        want = model(x)
        run = stages.start(x)
        run.step()
        run.keep(keep)
        second = run.step()
        run.keep(torch.tensor([0, 2]))  # integer rows of the 4 that stayed
        third = run.step()
    torch.testing.assert_close(second, want[1][keep], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(third, want[2][keep.nonzero().flatten()[[0, 2]]], rtol=1e-5, atol=1e-6)


def test_keep_cuts_carried_tensors_along_their_batch_dimension():
    torch.manual_seed(0)
    model = zoo.SequenceFirst().eval()
    stages = _stages(model, (5, 16))
    assert stages.batch_dims is not None and stages.batch_dims[0] == (1,)
    x = torch.randn(4, 5, 16)
    with torch.inference_mode():
        run = stages.start(x)
        run.step()
        run.keep(torch.tensor([False, True, True, False]))
        torch.testing.assert_close(run.step(), model(x)[1][1:3])


@pytest.mark.parametrize(
    ("factory", "shape", "pattern"),
    [
        (zoo.flattened_carry, (5, 16), r"shape \(5\*B, 16\) .* cannot be cut to the rows that stay"),
        (zoo.batch_statistic, (8,), r"exit 2 .* differs .* depend on the other rows of the batch"),
        (zoo.train_mode_batch_norm, (8,), r"exit 2 .* differs .* depend on the other rows of the batch"),
    ],
    ids=["flattened-batch", "batch-mean", "train-mode-batchnorm"],
)
def test_stages_that_cannot_drop_rows_say_so_instead_of_giving_wrong_logits(factory, shape, pattern):
    model = factory()
    stages = _stages(model, shape)
    x = torch.randn(6, *shape)
    verify_stages(model, stages, x)  # the whole batch is reproduced: MACs and latency stay valid
    assert not stages.can_drop_rows
    assert re.search(pattern, stages.drop_rows_reason or ""), stages.drop_rows_reason
    with torch.inference_mode():
        run = stages.start(x)
        run.step()
        with pytest.raises(
            ProfileError, match=r"^samples cannot leave this model's batch early: .*whole batches"
        ) as info:
            run.keep(torch.tensor([0, 2, 4]))
    assert "\n" not in str(info.value)


def test_models_that_can_drop_rows_keep_the_flag():
    for factory, shape in [
        (zoo.perceiver_like, (3, 8, 8)),
        (zoo.SequenceFirst, (5, 16)),
        (zoo.AttentionExits, (5, 16)),
    ]:
        model = factory().eval()
        stages = _stages(model, shape)
        verify_stages(model, stages, torch.randn(4, *shape))
        assert stages.can_drop_rows and stages.drop_rows_reason is None, factory


def test_profile_reports_stages_that_cannot_drop_rows(cli, tmp_path):
    run = _run_for(tmp_path, "batch_statistic", [8], 2, 3)
    result = cli("profile", run, "--batch-size", "1,2", "--threads", "1", *FAST, "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["can_drop_rows"] is False and "other rows of the batch" in doc["drop_rows_reason"]
    assert set(doc["latency"]) == {"cpu/b1", "cpu/b2"}  # still profiled
    ok = json.loads(
        cli("profile", _run_for(tmp_path, "conv_stack", [3, 8, 8], 3, 5, name="r2"), "--macs-only", "--json").stdout
    )
    assert ok["can_drop_rows"] is True and ok["drop_rows_reason"] is None
    table = cli("profile", _run_for(tmp_path, "flattened_carry", [5, 16], 2, 3, name="r3"), "--macs-only")
    assert table.exit_code == 0, table.output
    assert "early exit must run whole batches: stage 1 hands on a tensor" in table.stdout


def test_stages_declared_by_method_and_by_function():
    x = torch.randn(3, 8)
    model = zoo.data_dependent_staged()
    stages = build_stages(model, x)
    assert stages.source == "method"
    verify_stages(model, stages, x)
    plain = zoo.data_dependent()
    stages = build_stages(plain, x, stages_fn=zoo.data_dependent_stages)
    assert stages.source == "function"
    verify_stages(plain, stages, x)
    assert declared_stages(zoo.conv_stack()) is None


def test_wrong_declared_stages_are_caught():
    model = zoo.data_dependent()
    swapped = build_stages(model, torch.randn(2, 8), stages_fn=lambda m: list(reversed(zoo.data_dependent_stages(m))))
    with pytest.raises(ProfileError, match="fail at batch size|does not reproduce"):
        verify_stages(model, swapped, torch.randn(2, 8))
    with pytest.raises(ProfileError, match="must return a list of K >= 2"):
        build_stages(model, torch.randn(2, 8), stages_fn=lambda m: [m])


@pytest.mark.parametrize(
    ("factory", "shape", "pattern"),
    [
        (
            zoo.data_dependent,
            (8,),
            r"cannot export DataDependent with torch\.export .*dyncal_stages.*`stages_spec`",
        ),
        (
            zoo.input_exit,
            (8,),
            r"exit 1's output is not computed by the model's graph \(it is the model's input",
        ),
    ],
    ids=["data-dependent", "input-exit"],
)
def test_graph_errors(factory, shape, pattern):
    with pytest.raises(ProfileError, match=pattern) as info:
        build_stages(factory(), torch.randn(2, *shape))
    assert "\n" not in str(info.value)


def test_stages_add_up_to_the_graph_when_eager_tracing_takes_a_fused_path(caplog):
    torch.manual_seed(0)
    model = zoo.AttentionExits().eval()
    stages = _stages(model, (5, 16))
    for b in (1, 4):
        verify_stages(model, stages, torch.randn(b, 5, 16))
    x = torch.randn(4, 5, 16)
    with torch.inference_mode():
        run = stages.start(x)
        run.step()
        run.keep(torch.tensor([True, False, False, True]))  # sizes follow the batch
        torch.testing.assert_close(run.step(), model(x)[1][[0, 3]], rtol=1e-5, atol=1e-6)
    with caplog.at_level("WARNING", logger="dyncal.analysis.flops"):
        counts = stage_macs(stages, torch.randn(1, 5, 16), model=model)
    # q/k/v/out projections 4 * 5 * 16 * 16 = 5120 per block, Q K^T and P V 2 * 5 * 5 * 16 = 800, head 16 * 3 = 48
    assert counts.stage_macs == (5968, 5968)
    assert counts.graph_macs == 11936
    # the fused kernel eager tracing takes is counted by dyncal's attention rules, to the same total
    assert counts.model_macs == counts.graph_macs and counts.uncalled_modules == ()
    assert "eager tracing took another path" not in caplog.text


# ----------------------------------------------------------------- ResNet-50


@pytest.mark.slow
def test_resnet50_with_heads_stage_sum_equals_fvcore_total():
    with pinned_threads(2):
        model = zoo.resnet50_exits()
        stages = _stages(model, (3, 224, 224))
        x = torch.randn(1, 3, 224, 224)
        verify_stages(model, stages, x, rtol=1e-4, atol=1e-4)
        counts = stage_macs(stages, x, model=model)
    assert sum(counts.stage_macs) == counts.model_macs
    assert all(b > a for a, b in zip(counts.exit_macs, counts.exit_macs[1:], strict=False))
    assert counts.exit_macs[-1] >= 4.1e9
    assert counts.exit_macs[-1] < 4.2e9


# ----------------------------------------------------------------- latency


class _VirtualClock:
    """A clock that only moves when the timed code says so (no wall-clock assumptions)."""

    def __init__(self) -> None:
        self.s = 0.0

    def __call__(self) -> float:
        return self.s

    def charge(self, ms: float) -> None:
        self.s += ms / 1e3


def test_latency_is_monotone_in_exit_index_on_cpu():
    """Every timed callable is the one named: stage k costs (k + 1) ms per row in virtual time."""
    from dyncal.demo import pretrained

    model = pretrained()
    stages = _stages(model, (1, 8, 8))
    clock = _VirtualClock()
    for k, m in enumerate(stages.modules):
        m.register_forward_pre_hook(lambda _m, args, k=k: clock.charge((k + 1) * args[0].shape[0]))
    model.register_forward_pre_hook(lambda _m, args: clock.charge(100.0 * args[0].shape[0]))
    x = torch.randn(8, 1, 8, 8)
    threads_before = torch.get_num_threads()
    # what costs no virtual time fills a whole block: 4 calls (more than stage 1's 3) rather than the default 1,000
    settings = LatencySettings(threads=1, warmup=2, repeats=7, min_block_ms=20.0, max_block_calls=4)
    prof = measure_latency(stages, model, x, settings, clock=clock)
    assert torch.get_num_threads() == threads_before
    assert prof.key == "cpu/b8" and prof.threads == 1 and prof.batch_size == 8
    assert all(len(r) == 7 for r in prof.stage_ms)
    assert prof.stage_median_ms == pytest.approx([8.0, 16.0, 24.0, 32.0], abs=1e-9)
    assert prof.exit_ms == pytest.approx([8.0, 24.0, 48.0, 80.0], abs=1e-9)  # cumulative, strictly increasing
    # the real early exit leaving at exit k runs stages 1..k (decisions cost no virtual time)
    assert prof.early_exit_ms == pytest.approx([8.0, 24.0, 48.0, 80.0], abs=1e-9)
    # the full-model figure is the plain deployment (a graph cut from the stages): neither the model with every
    # head (100 ms per row here) nor a stage runs in it, so it costs no virtual time
    assert prof.full_model_median_ms == pytest.approx(0.0, abs=1e-9)
    assert prof.settings["full_model"].startswith("the plain deployment")
    assert sorted(prof.exit_path_rows_ms) == [2, 4]
    assert [float(np.median(r)) for r in prof.exit_path_rows_ms[2]] == pytest.approx([2.0, 6.0, 12.0, 20.0], abs=1e-9)
    assert len(prof.compaction_ms) == 3  # no stage runs there: no virtual time
    assert prof.compaction_median_ms == pytest.approx([0.0, 0.0, 0.0], abs=1e-9)
    # blocks: one call of stage 1 takes 8 ms, so a block of >= 20 ms holds 3 calls
    assert prof.settings["block_calls"] == [3, 2, 1, 1]
    assert prof.settings["full_model_block_calls"] == settings.max_block_calls  # no virtual time: a full block
    assert prof.settings["noisy"] == {}


def test_noisy_latency_is_flagged_with_the_remedy(caplog):
    from dyncal.demo import pretrained

    model = pretrained()
    stages = _stages(model, (1, 8, 8))
    clock = _VirtualClock()
    calls = [0]

    def jitter(_m, _args):
        calls[0] += 1
        clock.charge(1.0 if calls[0] % 2 else 3.0)  # every other call three times as long

    stages.modules[0].register_forward_pre_hook(jitter)
    with caplog.at_level("WARNING"):
        prof = measure_latency(
            stages, model, torch.randn(1, 1, 8, 8), LatencySettings(warmup=0, repeats=4, min_block_ms=0), clock=clock
        )
    noisy = prof.settings["noisy"]  # stage 1 jitters, and so does every exit path (each runs stage 1)
    assert noisy["stage1"] == round(Measurement(prof.stage_ms[0]).spread, 3) and "stage2" not in noisy
    assert sorted(noisy) == ["exit_path1", "exit_path2", "exit_path3", "exit_path4", "stage1"]
    # one thread was pinned (the default) and 4 replicates taken: the advice does not repeat the first
    assert "`threads` 1" not in caplog.text and "quiet machine" in caplog.text and "`repeats` 16" in caplog.text


def test_threads_are_restored_when_measuring_fails():
    before = torch.get_num_threads()
    with pytest.raises(RuntimeError), pinned_threads(1):
        assert torch.get_num_threads() == 1
        raise RuntimeError("boom")
    assert torch.get_num_threads() == before


def test_latency_settings_are_validated():
    with pytest.raises(DyncalError, match="^`threads` .*, got 0$"):
        LatencySettings(threads=0)
    with pytest.raises(DyncalError, match="^`repeats` .*, got 1000000000000$"):
        LatencySettings(repeats=10**12)
    with pytest.raises(DyncalError, match="^`min_block_ms` .*, got nan$"):
        LatencySettings(min_block_ms=float("nan"))
    with pytest.raises(DyncalError, match="^`repeats` .*, got 1$"):
        LatencySettings(repeats=1)
    with pytest.raises(DyncalError, match="^`warmup` .*, got -1$"):
        LatencySettings(warmup=-1)
    with pytest.raises(DyncalError, match="^`min_block_ms` .*, got -1"):
        LatencySettings(min_block_ms=-1.0)


# ----------------------------------------------------------------- warnings


def test_only_torchscript_deprecations_are_filtered():
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        model_macs(torch.nn.Linear(2, 2), torch.zeros(1, 2))
        with _quiet_torchscript():
            warnings.warn(
                "`torch.jit.trace` is deprecated. Please switch to `torch.compile` or `torch.export`.",
                FutureWarning,
                stacklevel=1,
            )
            warnings.warn("something else", FutureWarning, stacklevel=1)
    messages = [str(w.message) for w in seen]
    assert messages == ["something else"]


# ----------------------------------------------------------------- library entry and CLI


def test_profile_run_stores_the_cost_table_and_merges_devices(tmp_path):
    run = _run_for(tmp_path, "conv_stack", [3, 8, 8], 3, 5)
    options = ProfileOptions(batch_sizes=(1, 2), threads=1, repeats=3, warmup=1, min_block_ms=1.0)
    costs = profile_run(run, options=options)
    assert costs.macs == tuple(float(m) for m in zoo.ConvStack.EXIT_MACS)
    assert sorted(costs.latency) == ["cpu/b1", "cpu/b2"]
    again = profile_run(
        run,
        options=ProfileOptions(batch_sizes=(3,), threads=1, repeats=3, warmup=1, min_block_ms=1.0),
    )
    assert sorted(again.latency) == ["cpu/b1", "cpu/b2", "cpu/b3"]
    stored = load_run(run).costs
    assert stored is not None and sorted(stored.latency) == ["cpu/b1", "cpu/b2", "cpu/b3"]
    assert stored.latency["cpu/b3"].threads == 1


def _prof(device: str, batch: int, **settings: object) -> LatencyProfile:
    stages = ((1.0, 1.0, 1.0), (2.0, 2.0, 2.0))
    return synthetic_profile(device, batch, stages, (0.1,), (3.0,), 1, "cpu", dict(settings))


def test_a_fresh_count_replaces_unsupported_ops_even_when_empty(tmp_path):
    run = _run_for(tmp_path, "linear_stack", [8], 2, 3)
    store_costs(load_run(run), CostTable(macs=(1.0, 2.0), unsupported_ops=(UnsupportedOp(1, "aten::softmax", 2),)))
    stored = store_costs(load_run(run), CostTable(macs=(1.0, 3.0), unsupported_ops=())).costs
    assert stored.unsupported_ops == () and load_run(run).costs.unsupported_ops == ()
    # a table without MACs (latency only) keeps the count's list
    store_costs(load_run(run), CostTable(macs=(1.0, 2.0), unsupported_ops=(UnsupportedOp(1, "aten::softmax", 2),)))
    kept = store_costs(load_run(run), CostTable(latency={"cpu/b1": _prof("cpu", 1)})).costs
    assert kept.unsupported_ops == (UnsupportedOp(1, "aten::softmax", 2),)


def test_latency_timed_on_another_model_is_replaced_only_when_allowed(tmp_path):
    run = _run_for(tmp_path, "linear_stack", [8], 2, 3)
    a = {"model": "m:f", "weights_sha256": None, "state_sha256": "aaa"}
    b = {**a, "state_sha256": "bbb"}
    latency = {"cpu/b1": _prof("cpu", 1, **a), "cpu/b4": _prof("cpu", 4)}
    store_costs(load_run(run), CostTable(macs=(1.0, 2.0), latency=latency))
    before = (run / "run.json").read_bytes()
    new = CostTable(macs=(1.0, 3.0), latency={"cpu/b2": _prof("cpu", 2, **b)})
    with pytest.raises(
        RunError, match=r"holds latency cpu/b1 timed on another model \(m:f \(state aaa\)\).*`allow_other_model`"
    ):
        store_costs(load_run(run), new)
    assert (run / "run.json").read_bytes() == before  # nothing dropped silently
    stored = store_costs(load_run(run), new, allow_other_model=True)
    # cpu/b1 was timed on other weights; cpu/b4 records no model (an older run): kept
    assert sorted(stored.costs.latency) == ["cpu/b2", "cpu/b4"]
    assert stored.replaced == ("cpu/b1",) and stored.replaced_model == "m:f (state aaa)"
    # MACs only, of yet another model: the latency of model b goes too
    macs_only = store_costs(
        load_run(run), CostTable(macs=(1.0, 4.0)), model_id={**a, "state_sha256": "ccc"}, allow_other_model=True
    ).costs
    assert sorted(macs_only.latency) == ["cpu/b4"]


def test_reprofiling_other_weights_needs_the_flag_and_replaces_the_old_latency(tmp_path):
    run = _run_for(tmp_path, "conv_stack", [3, 8, 8], 3, 5)
    fast = {"threads": 1, "repeats": 3, "warmup": 1, "min_block_ms": 1.0}
    first = profile_run(run, options=ProfileOptions(batch_sizes=(1,), **fast))
    settings = first.latency["cpu/b1"].settings
    assert settings["model"] == "models_zoo:conv_stack" and len(settings["state_sha256"]) == 64
    same = profile_run(run, options=ProfileOptions(batch_sizes=(2,), **fast))
    assert sorted(same.latency) == ["cpu/b1", "cpu/b2"]
    model = zoo.conv_stack()
    with torch.no_grad():
        model.c1.weight.mul_(2)
    torch.save(model.state_dict(), tmp_path / "w.pt")
    before = (run / "run.json").read_bytes()
    with pytest.raises(DyncalError, match="collected without a checkpoint and one is given.*`allow_other_model`"):
        profile_run(run, options=ProfileOptions(batch_sizes=(2,), weights=str(tmp_path / "w.pt"), **fast))
    assert (run / "run.json").read_bytes() == before
    allowed = ProfileOptions(batch_sizes=(2,), weights=str(tmp_path / "w.pt"), allow_other_model=True, **fast)
    result = profile_run_full(run, options=allowed)
    assert sorted(result.costs.latency) == ["cpu/b2"] and result.replaced == ("cpu/b1", "cpu/b2")
    assert result.costs.latency["cpu/b2"].settings["weights_sha256"] == sha256_file(tmp_path / "w.pt")
    assert "without a checkpoint" in result.costs.latency["cpu/b2"].settings["other_model"]
    assert load_run(run).costs.model["check"]["allowed"] is True


def test_cli_profile_json_keeps_device_and_settings(cli, tmp_path):
    run = _run_for(tmp_path, "perceiver_like", [3, 8, 8], 4, 7)
    result = cli("profile", run, "--device", "cpu", "--batch-size", "1,4", "--threads", "1", *FAST, "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["stages"] == "export" and doc["k"] == 4
    assert [e["macs"] for e in doc["exits"]] == sorted(e["macs"] for e in doc["exits"])
    assert doc["exits"][-1]["macs"] == doc["model_macs"] == doc["graph_macs"]
    assert set(doc["latency"]) == {"cpu/b1", "cpu/b4"}
    lat = doc["latency"]["cpu/b4"]
    assert lat["device"] == "cpu" and lat["batch_size"] == 4 and lat["threads"] == 1
    assert lat["settings"]["repeats"] == 3 and lat["settings"]["warmup"] == 1
    assert lat["settings"]["torch"] == torch.__version__ and lat["hardware"]
    assert any(u["op"] == "aten::softmax" for u in doc["unsupported_ops"])
    # ... and `dyncal info --json` reads it back from the run
    info = json.loads(cli("info", run, "--json").stdout)
    assert [e["macs"] for e in info["exits"]] == [e["macs"] for e in doc["exits"]]
    assert set(info["exits"][0]["latency_ms"]) == {"cpu/b1", "cpu/b4"}
    stored = json.loads((run / "run.json").read_text())["costs"]["latency"]["cpu/b1"]
    assert stored["device"] == "cpu" and stored["threads"] == 1 and len(stored["stage_ms"]) == 4


def test_profile_run_takes_options_or_keywords_and_refuses_both(tmp_path):
    run = _run_for(tmp_path, "conv_stack", [3, 8, 8], 3, 5)
    with pytest.raises(DyncalError, match=r"give profile options as options=ProfileOptions\(...\) or as keywords"):
        profile_run(run, options=ProfileOptions(latency=False), devices=("cpu",))  # devices was ignored before
    with pytest.raises(DyncalError, match="no profile option 'device'; profile options are: "):
        profile_run(run, device="cpu")
    costs = profile_run(run, latency=False, check_rows=0)
    assert costs.latency == {} and len(costs.macs) == 3


def test_cli_profile_table_and_overrides_for_an_imported_run(cli, tmp_path):
    rng = np.random.default_rng(0)
    np.savez(
        tmp_path / "l.npz",
        logits=rng.normal(size=(5, 3, 3)).astype(np.float32),
        labels=rng.integers(0, 3, 5),
    )
    assert cli("import", tmp_path / "l.npz", "--out", tmp_path / "run").exit_code == 0
    assert_clean_error(cli("profile", tmp_path / "run", *FAST), r"does not name its model.*--model")
    result = cli(
        "profile",
        tmp_path / "run",
        "--model",
        "models_zoo:linear_stack",
        "--model-path",
        TESTS,
        "--input-shape",
        "8",
        "--macs-only",
    )
    assert result.exit_code == 0, result.output
    assert "784" in result.stdout and "stages: export" in result.stdout


def test_cli_profile_declared_stages(cli, tmp_path):
    run = _run_for(tmp_path, "data_dependent", [8], 2, 3)
    assert_clean_error(cli("profile", run, *FAST), r"cannot export DataDependent .*--stages")
    ok = cli("profile", run, "--stages", "models_zoo:data_dependent_stages", "--macs-only", "--json")
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.stdout)["stages"] == "function"
    run2 = _run_for(tmp_path, "data_dependent_staged", [8], 2, 3, name="run2")
    ok = cli("profile", run2, "--macs-only", "--json")
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.stdout)["stages"] == "method"


@pytest.mark.parametrize(
    ("factory", "shape", "k", "args", "pattern"),
    [
        (
            "data_dependent",
            [8],
            2,
            (),
            r"cannot export DataDependent with torch\.export \(.*\); declare the stages",
        ),
        ("input_exit", [8], 2, (), r"exit 1's output is not computed by the model's graph"),
        (
            "conv_stack",
            [3, 8, 8],
            3,
            ("--batch-size", "1,x"),
            r"--batch-size must be comma-separated integers",
        ),
        (
            "conv_stack",
            [3, 8, 8],
            3,
            ("--input-shape", "3,9"),
            r"fails on an input of shape \(1, 3, 9\)",
        ),
        (
            "conv_stack",
            [3, 8, 8],
            3,
            ("--batch-size", "1,,2"),
            r"--batch-size has an empty item in '1,,2'",
        ),
        (
            "conv_stack",
            [3, 8, 8],
            3,
            ("--input-dtype", "int8"),
            r"fails on an input of shape \(1, 3, 8, 8\) and dtype int8 .*check --input-dtype: int8 is not a floating",
        ),
        ("conv_stack", [3, 8, 8], 4, (), r"has K=3 exits .* but run .* has K=4"),
        (
            "conv_stack",
            [3, 8, 8],
            3,
            ("--device", "tpu"),
            r"--device must be cpu, cuda or cuda:N; got 'tpu'",
        ),
    ],
    ids=[
        "not-exportable",
        "exit-not-graph-output",
        "bad-batch",
        "bad-shape",
        "empty-batch-item",
        "int-dtype",
        "wrong-k",
        "bad-device",
    ],
)
def test_cli_profile_errors_are_one_line(cli, tmp_path, factory, shape, k, args, pattern):
    c = {"conv_stack": 5, "input_exit": 8}.get(factory, 3)
    run = _run_for(tmp_path, factory, shape, k, c)
    assert_clean_error(cli("profile", run, *args, *FAST), pattern)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_cli_profile_cuda_on_a_cpu_machine(cli, tmp_path):
    run = _run_for(tmp_path, "conv_stack", [3, 8, 8], 3, 5)
    assert_clean_error(cli("profile", run, "--device", "cuda", *FAST), r"--device cuda: CUDA is not available")
    assert load_run(run).costs is None  # nothing half-written


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_profile_on_cuda(tmp_path):
    run = _run_for(tmp_path, "conv_stack", [3, 8, 8], 3, 5)
    result = profile_run_full(run, options=ProfileOptions(devices=("cpu", "cuda"), repeats=3, warmup=1))
    prof = result.costs.latency["cuda/b1"]
    assert prof.settings["timer"] == "perf_counter+cuda_synchronize" and prof.settings["gpu"]
    assert all(m > 0 for m in prof.stage_median_ms)
    # cumulative exit times vs running stages 1..k end to end on the GPU, timed
    # independently with a host clock and a synchronize after each block of calls
    model = zoo.conv_stack().cuda()
    stages = build_stages(model, torch.randn(2, 3, 8, 8, device="cuda"))
    x = torch.randn(1, 3, 8, 8, device="cuda")
    with torch.inference_mode():
        best = [float("inf")] * stages.k
        for _ in range(3):
            for k in range(1, stages.k + 1):
                stages.run(x, upto=k)  # warm-up
        for _ in range(10):
            for k in range(1, stages.k + 1):
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                for _ in range(20):
                    stages.run(x, upto=k)
                torch.cuda.synchronize()
                best[k - 1] = min(best[k - 1], (time.perf_counter() - t0) / 20)
    ratios = [ms / (1e3 * b) for ms, b in zip(prof.exit_ms, best, strict=True)]
    assert all(0.2 < r < 5.0 for r in ratios), (ratios, prof.exit_ms, best)


def test_modules_that_never_run_are_reported_not_dropped():
    """fvcore's uncalled_modules(): a head the forward skips costs nothing in any count; say so."""
    import torch
    from torch import nn

    from dyncal.analysis.flops import stage_macs
    from dyncal.analysis.stages import build_stages

    class SkipsAHead(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Linear(4, 4)
            self.head1 = nn.Linear(4, 3)
            self.head2 = nn.Linear(4, 3)
            self.unused = nn.Linear(4, 3)

        def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
            h = self.body(x)
            return [self.head1(h), self.head2(torch.relu(h))]

    model = SkipsAHead().eval()
    counts = stage_macs(build_stages(model, torch.zeros(2, 4)), torch.zeros(1, 4), model=model)
    assert counts.uncalled_modules == ("unused",)
    assert counts.to_dict()["uncalled_modules"] == ["unused"]
    assert counts.exit_macs[-1] == 16 + 12 + 12  # body + both heads, nothing of 'unused'
