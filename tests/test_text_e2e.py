"""Text classifiers with exits end to end: a trained transformer encoder and a Hugging Face BERT.

Each goes through ``dyncal collect --collate``, ``profile``, ``solve``, ``verify`` and
``export`` on the command line, and the package through ``dyncal.load_early_exit`` on
sequence lengths the run never had. MACs are checked against a count written by hand from
the layer sizes, attention included.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import TESTS
from typer.testing import CliRunner

import dyncal
from dyncal.analysis.flops import stage_macs
from dyncal.analysis.stages import build_stages
from dyncal.artifacts.run import load_run
from dyncal.cli import app
from dyncal.inputs import pad_collate, take_rows
from tests import text_encoders as te

pytestmark = pytest.mark.integration

NEEDS_TRANSFORMERS = "the Hugging Face model needs the nlp extra (pip install 'dyncal[nlp]')"


def _cli(*args: object) -> str:
    res = CliRunner().invoke(app, [str(a) for a in args])
    assert res.exit_code == 0, (args[0], res.output, res.exception)
    return str(res.output)


def _through_every_verb(tmp: Path, model: list[str], data: str, rows: int) -> tuple[Path, str]:
    """Collect (padded per batch), profile, solve, verify and export; the run folder and every verb's output."""
    run, th = tmp / "run", tmp / "th.json"
    said = _cli(
        "collect", *model, "--model-path", TESTS, "--data", data, "--collate", "dyncal.inputs:pad_collate",
        "--out", run, "--batch-size", 16, "--limit", rows,
    )  # fmt: skip
    said += _cli("profile", run, "--batch-size", "1,4", "--repeats", 3, "--warmup", 1)
    said += _cli("solve", run, "--budget", "0.7x", "--out", th)
    said += _cli("verify", run, "--thresholds", th, "--batch-size", "1,4", "--repeats", 2, "--out", tmp / "v.json")
    said += _cli("export", run, "--thresholds", th, "--out", tmp / "pkg")
    verified = json.loads((tmp / "v.json").read_text())
    assert verified["agreement"] == 1.0 and verified["n"] == rows
    return run, said


def _serves_unseen_lengths(pkg: Path, net: torch.nn.Module, lengths: list[int]) -> None:
    """The package serves lengths the run never had; each row's answer is its own sequence's, alone and unpadded."""
    runner = dyncal.load_early_exit(pkg)
    sig = runner.manifest.inputs
    g = torch.Generator().manual_seed(7)
    items = [
        ((torch.randint(te.FIRST_FILLER, te.VOCAB, (n,), generator=g), torch.ones(n, dtype=torch.int64)), 0)
        for n in lengths
    ]
    (ids, mask), _ = pad_collate(items)
    exits, preds = runner(ids, mask) if sig.kind == "tuple" else runner(input_ids=ids, attention_mask=mask)
    too_long = torch.ones(1, te.MAX_POSITIONS + 1, dtype=torch.int64)  # both models have 64 positions
    with pytest.raises(dyncal.DyncalError, match=r"input '(0|input_ids)' has 65 positions; the model takes at most 64"):
        runner(too_long, too_long) if sig.kind == "tuple" else runner(input_ids=too_long, attention_mask=too_long)
    for i, n in enumerate(lengths):
        alone_ids, alone_mask = take_rows((ids[:, :n], mask[:, :n]), torch.tensor([i]))
        with torch.inference_mode():
            logits = net(alone_ids, alone_mask)[int(exits[i])]
        assert int(preds[i]) == int(logits.argmax()), (i, n)


@pytest.mark.slow
def test_small_text_encoder_through_every_verb(tmp_path: Path, text_weights: Path) -> None:
    model = ["--model", "text_encoders:text_encoder", "--weights", text_weights]
    run, said = _through_every_verb(tmp_path, model, "text_encoders:text_data", 64)
    assert "never ran" not in said and "scaled_dot_product_attention" not in said  # attention is counted
    costs = load_run(run).costs
    assert costs is not None and costs.macs is not None and costs.macs[0] < costs.macs[1] < costs.macs[2]
    net = te.text_encoder()
    net.load_state_dict(torch.load(text_weights, weights_only=True))
    _serves_unseen_lengths(tmp_path / "pkg", net.eval(), [1, 45, 7, 33])  # the data has 4..32 tokens


@pytest.mark.slow
def test_bert_with_exits_through_every_verb(tmp_path: Path) -> None:
    pytest.importorskip("transformers", reason=NEEDS_TRANSFORMERS)
    run, said = _through_every_verb(
        tmp_path, ["--model", "text_encoders:bert_exits"], "text_encoders:text_data_dict", 64
    )
    assert "never ran" not in said and "scaled_dot_product_attention" not in said
    assert load_run(run).provenance.extra["inputs"]["kind"] == "dict"
    _serves_unseen_lengths(tmp_path / "pkg", te.bert_exits().eval(), [2, 50, 9])


def _layer_by_hand(length: int, dim: int, ffn: int) -> int:
    """One encoder layer on one sequence: Q, K, V and output projections, attention, feed-forward, 2 layer norms."""
    projections = 4 * length * dim * dim
    attention = 2 * length * length * dim  # Q K^T and P V, summed over the heads
    return projections + attention + 2 * length * dim * ffn + 2 * 5 * length * dim


@pytest.mark.parametrize("length", [4, 19, 32])
def test_text_encoder_macs_match_a_count_by_hand(length: int) -> None:
    net = te.text_encoder().eval()
    ids = torch.randint(te.FIRST_FILLER, te.VOCAB, (2, length))
    stages = build_stages(net, (ids, torch.ones_like(ids)))
    one = (ids[:1], torch.ones_like(ids[:1]))
    counts = stage_macs(stages, one, model=net)
    layer, head = _layer_by_hand(length, 32, 64), 32 * te.N_CLASSES
    assert list(counts.exit_macs) == [layer + head, 2 * (layer + head), 4 * layer + 3 * head]
    assert counts.model_macs == counts.graph_macs == counts.exit_macs[-1]  # eager fused path = exported graph
    assert counts.uncalled_modules == ()


def test_bert_macs_match_a_count_by_hand() -> None:
    pytest.importorskip("transformers", reason=NEEDS_TRANSFORMERS)
    net = te.bert_exits().eval()
    length = 11
    ids = torch.randint(te.FIRST_FILLER, te.VOCAB, (2, length))
    counts = stage_macs(build_stages(net, (ids, torch.ones_like(ids))), (ids[:1], torch.ones_like(ids[:1])))
    layer, head, embedding_norm = _layer_by_hand(length, 32, 64), 32 * te.N_CLASSES, 5 * length * 32
    assert list(counts.exit_macs) == [embedding_norm + layer + head + k * (layer + head) for k in range(3)]
