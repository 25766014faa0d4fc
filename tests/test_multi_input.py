"""Models that take several tensors (token ids and a mask) through every verb, as tuples and as dicts."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TESTS, assert_clean_error
from typer.testing import CliRunner

from dyncal.artifacts.run import load_run
from dyncal.cli import app
from dyncal.inputs import InputSignature

pytestmark = pytest.mark.integration

MODEL = ["--model", "text_models:model", "--model-path", TESTS]
PAD = ["--collate", "dyncal.inputs:pad_collate"]


def _cli(*args: object):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module", params=["dict", "tuple"])
def text_run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run of the tiny text model over variable-length sequences, padded per batch."""
    out = tmp_path_factory.mktemp(f"text-{request.param}") / "run"
    res = _cli("collect", *MODEL, "--data", f"text_models:{request.param}_data", "--out", out, "--batch-size", 8, *PAD)
    assert res.exit_code == 0, res.output
    return out


def _model_logits(kind: str) -> np.ndarray:
    import text_models

    net, data = text_models.model(), text_models.TextData(kind)
    with torch.inference_mode():
        rows = [net(s[None], torch.ones(1, len(s), dtype=torch.int64)) for s in data.seqs]
    return np.stack([torch.cat(r).numpy() for r in rows])


def test_collect_records_each_input_with_a_dynamic_length(text_run: Path) -> None:
    run = load_run(text_run)
    extra = run.provenance.extra
    sig = InputSignature.from_dict(extra["inputs"])
    assert sig.kind == text_run.parent.name.split("-")[1].rstrip("0123456789")
    assert [s.dtype for s in sig.inputs] == ["int64", "int64"]
    assert [s.dynamic for s in sig.inputs] == [(0,), (0,)]
    assert sig.inputs[0].value_range == (0, 49) and sig.inputs[1].value_range == (0, 1)
    assert extra["collate"] == "dyncal.inputs:pad_collate" and "input_shape" not in extra
    assert (run.n, run.k, run.c) == (96, 3, 3)
    # padded batches give the logits of each sequence alone: the mask is honoured
    np.testing.assert_allclose(np.asarray(run.logits), _model_logits("dict"), atol=1e-4)


def test_ragged_sequences_without_a_collate_say_what_to_pass(tmp_path: Path) -> None:
    res = _cli("collect", *MODEL, "--data", "text_models:tuple_data", "--out", tmp_path / "r")
    assert_clean_error(res, r"input '0' has samples of different shapes .*--collate pkg.module:fn")
    assert not (tmp_path / "r").exists()


def test_a_collate_that_cannot_be_imported_is_one_line(tmp_path: Path) -> None:
    res = _cli("collect", *MODEL, "--data", "text_models:dict_data", "--out", tmp_path / "r", "--collate", "nope:fn")
    assert_clean_error(res, r"--collate: cannot import module 'nope'")


def test_run_json_is_plain_json(text_run: Path) -> None:
    doc = json.loads((text_run / "run.json").read_text())
    assert doc["provenance"]["extra"]["inputs"]["inputs"][0]["name"] in ("input_ids", "0")


def _batches(kind: str) -> tuple[object, object, InputSignature]:
    import text_models

    from dyncal.inputs import pad_collate

    data = text_models.TextData(kind)
    a, _ = pad_collate([data[i] for i in range(4)])
    b, _ = pad_collate([data[i] for i in range(4, 14)])
    return a, b, InputSignature.of(a).merge(InputSignature.of(b))


@pytest.mark.parametrize("kind", ["dict", "tuple"])
def test_exported_stages_take_every_input_and_carry_the_mask(kind: str) -> None:
    import text_models

    from dyncal.analysis.stages import build_stages, verify_stages
    from dyncal.inputs import call_model, take_rows

    net = text_models.model()
    a, b, sig = _batches(kind)
    stages = build_stages(net, a, signature=sig)
    assert stages.source == "export" and stages.k == 3 and stages.can_drop_rows
    # stage 1 takes (input_ids, attention_mask); the mask is carried to later stages, cut with the rows
    assert len(stages.start(b).carry) == 2
    assert verify_stages(net, stages, b).batch_size == 10  # a length the export never saw
    seqs = {len(set(d.values())) for dims in stages.dim_symbols for d in dims}
    assert seqs == {2}  # batch and sequence length stay symbolic everywhere
    run = stages.start(b)
    run.step()
    keep = torch.tensor([i % 3 == 0 for i in range(10)])
    run.keep(keep)
    want = call_model(net, take_rows(b, keep))
    torch.testing.assert_close(run.step(), want[1], atol=1e-5, rtol=1e-4)
    mask_carried = [t for t in run.carry if t.dtype == torch.int64]
    assert mask_carried and mask_carried[0].shape[0] == int(keep.sum())


@pytest.fixture(scope="module")
def profiled(text_run: Path) -> Path:
    """The text run profiled (CPU, one thread, batch 1 and 4, few replicates) with two sequence-length buckets."""
    # One thread, five replicates: on a loaded machine a tiny model times batch 1 and 4 alike, so
    # fewer replicates on contended threads can be refused as implausible (batch 1 slower than 4).
    res = _cli(
        "profile",
        text_run,
        "--batch-size",
        "1,4",
        "--threads",
        1,
        "--repeats",
        5,
        "--warmup",
        1,
        "--seq-len",
        "4,16",
        "--json",
    )
    assert res.exit_code == 0, res.output
    (text_run.parent / "profile.json").write_text(res.stdout)
    return text_run


def test_profile_averages_macs_over_the_data_lengths_and_gives_buckets(profiled: Path) -> None:
    doc = json.loads((profiled.parent / "profile.json").read_text())
    buckets = {b["length"]: b for b in doc["seq_len_buckets"]}
    assert sorted(buckets) == [4, 16]
    macs = [e["macs"] for e in doc["exits"]]
    # attention and MLP grow with the length; the stored MACs lie between the buckets of the data's lengths (3..12)
    assert buckets[4]["macs"][-1] < macs[-1] < buckets[16]["macs"][-1]
    assert "averaged over the data's sequence lengths" in doc["macs_basis"]
    run = load_run(profiled)
    assert run.costs is not None and run.costs.macs is not None and list(run.costs.macs) == macs
    assert "averaged over" in run.costs.model["macs_basis"]
    assert set(run.costs.latency) == {"cpu/b1", "cpu/b4"}
    assert doc["inputs"].endswith("(B, L)")


def test_solve_and_verify_replay_the_run_with_its_inputs(profiled: Path) -> None:
    out = profiled.parent
    res = _cli("solve", profiled, "--budget", "0.7x", "--out", out / "t.json")
    assert res.exit_code == 0, res.output
    res = _cli(
        "verify",
        profiled,
        "--thresholds",
        out / "t.json",
        "--batch-size",
        "1,4",
        "--repeats",
        2,
        "--out",
        out / "v.json",
    )
    assert res.exit_code == 0, res.output
    doc = json.loads((out / "v.json").read_text())
    assert doc["agreement"] == 1.0 and doc["n"] == 96


def test_inputs_that_change_dtype_mid_run_name_the_input(tmp_path: Path) -> None:
    res = _cli("collect", *MODEL, "--data", "text_models:float_mask_data", "--out", tmp_path / "r", *PAD)
    assert_clean_error(res, r"batch 1: input 'attention_mask' changed from int64 \[\d+\] to float32")
    assert not (tmp_path / "r").exists()


def _seqs(lengths: list[int], seed: int = 5) -> dict[str, torch.Tensor]:
    from dyncal.inputs import pad_collate

    g = torch.Generator().manual_seed(seed)
    items = [
        ({"input_ids": torch.randint(1, 50, (n,), generator=g), "attention_mask": torch.ones(n, dtype=torch.int64)}, 0)
        for n in lengths
    ]
    return pad_collate(items)[0]


def test_export_serves_lengths_it_never_saw_with_masks_aligned(profiled: Path) -> None:
    import text_models

    import dyncal
    from dyncal.inputs import InputSignature, take_rows

    out = profiled.parent
    if not (out / "t.json").exists():
        assert _cli("solve", profiled, "--budget", "0.7x", "--out", out / "t.json").exit_code == 0
    res = _cli("export", profiled, "--thresholds", out / "t.json", "--out", out / "pkg", "--overwrite")
    assert res.exit_code == 0, res.output
    assert re.search(r"input (input_ids|0) int64 \(B, L\); (attention_mask|1) int64 \(B, L\)", res.stderr)
    runner = dyncal.load_early_exit(out / "pkg")
    sig = runner.manifest.inputs
    assert isinstance(sig, InputSignature) and sig.names in (("input_ids", "attention_mask"), ("0", "1"))
    net = text_models.model()
    for lengths in ([1], [2, 40, 7], [25] * 5):  # the run's sequences have 3..12 tokens
        batch = _seqs(lengths)
        if sig.kind == "tuple":
            exits, preds = runner(batch["input_ids"], batch["attention_mask"])
            full = runner.full_model((batch["input_ids"], batch["attention_mask"]))
        else:
            exits, preds = runner(**batch)
            full = runner.full_model(batch)
        with torch.inference_mode():
            want = net(**batch)
        for a, b in zip(full, want, strict=True):
            torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
        # each row's prediction is its own sequence's, alone and unpadded: rows left with their masks
        for i, n in enumerate(lengths):
            alone = take_rows(batch, torch.tensor([i]))
            alone = {k: v[:, :n] for k, v in alone.items()}
            with torch.inference_mode():
                assert int(preds[i]) == int(net(**alone)[int(exits[i])].argmax())


def test_the_package_refuses_an_input_naming_it(profiled: Path) -> None:
    import dyncal

    pkg = profiled.parent / "pkg"
    if not pkg.exists():
        pytest.skip("exported by the test before")
    runner = dyncal.load_early_exit(pkg)
    batch = _seqs([4, 6])
    bad = (batch["input_ids"].float(), batch["attention_mask"])
    with pytest.raises(dyncal.DyncalError, match=r"input '(input_ids|0)' has dtype float32, expected int64"):
        runner(*bad) if runner.manifest.inputs.kind == "tuple" else runner(input_ids=bad[0], attention_mask=bad[1])
    with pytest.raises(dyncal.DyncalError, match=r"input '(attention_mask|1)' has \d+ rows|is missing|expected"):
        if runner.manifest.inputs.kind == "tuple":
            runner(batch["input_ids"], batch["attention_mask"][:1])
        else:
            runner(input_ids=batch["input_ids"])


def test_declared_stages_take_the_same_inputs() -> None:
    import text_models

    from dyncal.analysis.stages import build_stages, verify_stages

    net = text_models.model()
    a, b, sig = _batches("dict")
    stages = build_stages(net, a, stages_fn=text_models.stages, signature=sig)
    assert stages.source == "function"
    check = verify_stages(net, stages, b)
    assert check.batch_size == 10 and stages.can_drop_rows


def test_the_report_says_what_the_macs_are(profiled: Path) -> None:
    from dyncal.reports.pages.details import _run_items

    items = dict(_run_items(load_run(profiled)))
    assert "averaged over the data's sequence lengths" in items["MACs basis"]


def test_the_package_keeps_request_ids_in_telemetry(profiled: Path, tmp_path: Path) -> None:
    pytest.importorskip("pyarrow")
    import dyncal
    from dyncal.telemetry.reader import read_telemetry

    pkg = profiled.parent / "pkg"
    if not pkg.exists():
        pytest.skip("exported by the test before")
    runner = dyncal.load_early_exit(pkg, telemetry=tmp_path / "tel", shadow=1.0)
    batch = _seqs([3, 9, 5])
    args = (batch["input_ids"], batch["attention_mask"])
    if runner.manifest.inputs.kind == "tuple":
        exits, _ = runner(*args, request_ids=["a", "b", "c"])
    else:
        exits, _ = runner(input_ids=args[0], attention_mask=args[1], request_ids=["a", "b", "c"])
    runner.telemetry.close()
    seen = read_telemetry(tmp_path / "tel").data
    assert list(seen.request_ids) == ["a", "b", "c"] and list(seen.exits) == exits.tolist()


@pytest.mark.parametrize("extra", [["--runtime", "frozen"], ["--throughput"]])
def test_runtimes_for_one_tensor_refuse_several_inputs_in_one_line(profiled: Path, extra: list[str]) -> None:
    out = profiled.parent
    if not (out / "t.json").exists():
        assert _cli("solve", profiled, "--budget", "0.7x", "--out", out / "t.json").exit_code == 0
    res = _cli("verify", profiled, "--thresholds", out / "t.json", "--batch-size", "4", "--repeats", 3, *extra)
    assert res.exit_code == 1, res.output
    assert res.output.count("\n") == 1 and "Traceback" not in res.output
    assert f"{extra[0]}" in res.output and "takes several (" in res.output and "use --runtime eager" in res.output
