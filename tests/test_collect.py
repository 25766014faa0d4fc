"""collect, import, info and load_run: the run directory every later stage reads."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import toy_models
from conftest import TESTS, assert_clean_error, model_outputs

from dyncal.artifacts.run import load_run
from dyncal.artifacts.run_import import import_arrays
from dyncal.errors import RunError

MODEL = ["--model", "toy_models:two_exit", "--model-path", TESTS]


# ----------------------------------------------------------------- logits are the model's


def test_collect_npz_matches_direct_forward(cli, toy_npz, tmp_path):
    out = tmp_path / "run"
    res = cli("collect", *MODEL, "--data", toy_npz, "--out", out, "--batch-size", 8)
    assert res.exit_code == 0, res.output
    run = load_run(out)
    data = np.load(toy_npz)
    expected = model_outputs(toy_models.two_exit(), torch.from_numpy(data["inputs"]))
    assert (run.n, run.k, run.c) == (37, 2, 3)
    np.testing.assert_allclose(run.logits, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(run.labels, data["labels"])
    np.testing.assert_array_equal(run.indices, np.arange(37))
    prov = run.provenance
    assert prov.model == "toy_models:two_exit" and prov.data == str(toy_npz)
    assert prov.extra["input_shape"] == [4] and prov.versions["torch"]
    assert prov.command.startswith(
        f"dyncal collect --model toy_models:two_exit --data {toy_npz} --out {out} --model-path {TESTS} --batch-size 8"
    )


def test_collect_factory_dataset_in_order_with_limit(cli, tmp_path):
    out = tmp_path / "run"
    res = cli("collect", *MODEL, "--data", "toy_models:toy_dataset", "--out", out, "--batch-size", 5, "--limit", 17)
    assert res.exit_code == 0, res.output
    run = load_run(out)
    ds = toy_models.toy_dataset()
    x = torch.stack([ds[i][0] for i in range(17)])
    np.testing.assert_allclose(run.logits, model_outputs(toy_models.two_exit(), x), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(run.labels, [int(ds[i][1]) for i in range(17)])


def test_collect_imagefolder_with_weights(cli, tmp_path):
    from PIL import Image
    from torchvision import transforms

    rng = np.random.default_rng(0)
    for cls in ("cat", "dog"):
        (tmp_path / "imgs" / cls).mkdir(parents=True)
        for i in range(3):
            arr = rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)
            Image.fromarray(arr).save(tmp_path / "imgs" / cls / f"{i}.png")
    model = toy_models.tiny_conv()
    torch.nn.init.normal_(model.c1.weight)  # differ from the factory's weights
    ckpt = tmp_path / "w.pth"
    # A DataParallel-style checkpoint wrapped in {"state_dict": ...}.
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}, "epoch": 3}, ckpt)
    out = tmp_path / "run"
    res = cli(
        "collect",
        "--model",
        "toy_models:tiny_conv",
        "--model-path",
        TESTS,
        "--weights",
        ckpt,
        "--data",
        f"imagefolder:{tmp_path / 'imgs'}",
        "--resize",
        18,
        "--crop",
        16,
        "--mean",
        "0.5,0.5,0.5",
        "--std",
        "0.25,0.25,0.25",
        "--out",
        out,
        "--batch-size",
        4,
    )
    assert res.exit_code == 0, res.output
    run = load_run(out)
    tf = transforms.Compose(
        [
            transforms.Resize(18),
            transforms.CenterCrop(16),
            transforms.ToTensor(),
            transforms.Normalize([0.5] * 3, [0.25] * 3),
        ]
    )
    files = sorted((tmp_path / "imgs").glob("*/*.png"))
    x = torch.stack([tf(Image.open(f).convert("RGB")) for f in files])
    np.testing.assert_allclose(run.logits, model_outputs(model, x), rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(run.labels, [0, 0, 0, 1, 1, 1])
    assert len(run.provenance.weights_sha256) == 64


def test_collect_torch_export_archive(cli, toy_npz, tmp_path):
    model = toy_models.two_exit().eval()
    program = torch.export.export(model, (torch.zeros(2, 4),), dynamic_shapes=({0: torch.export.Dim("b")},))
    archive = tmp_path / "model.pt2"
    torch.export.save(program, str(archive))
    out = tmp_path / "run"
    res = cli("collect", "--model", archive, "--data", toy_npz, "--out", out, "--batch-size", 8)
    assert res.exit_code == 0, res.output
    x = torch.from_numpy(np.load(toy_npz)["inputs"])
    np.testing.assert_allclose(load_run(out).logits, model_outputs(model, x), rtol=1e-5, atol=1e-6)


def test_torchrun_two_cpu_workers_equal_single_process(cli, toy_npz, tmp_path):
    single = tmp_path / "single"
    assert cli("collect", *MODEL, "--data", toy_npz, "--out", single, "--batch-size", 4).exit_code == 0
    dist = tmp_path / "dist"
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS.parent), str(TESTS)]), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [
            str(torchrun),
            "--nproc_per_node",
            "2",
            "--master_port",
            "29531",
            "-m",
            "dyncal",
            "collect",
            "--model",
            "toy_models:two_exit",
            "--data",
            str(toy_npz),
            "--out",
            str(dist),
            "--batch-size",
            "4",
            "-q",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    a, b = load_run(single), load_run(dist)
    # Batches differ at the block boundary, so sums may round differently.
    np.testing.assert_allclose(a.logits, b.logits, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.indices, b.indices)
    assert b.provenance.extra["world_size"] == 2


# ----------------------------------------------------------------- info and load_run


def test_info_json_matches_independent_computation(cli, toy_npz, tmp_path):
    out = tmp_path / "run"
    cli("collect", *MODEL, "--data", toy_npz, "--out", out)
    res = cli("info", out, "--json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    run = load_run(out)
    logits = np.asarray(run.logits, dtype=np.float64)
    assert (doc["n"], doc["k"], doc["c"]) == (37, 2, 3)
    for k, e in enumerate(doc["exits"]):
        acc = float(np.mean(logits[:, k].argmax(1) == run.labels))
        p = np.exp(logits[:, k] - logits[:, k].max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        assert e["accuracy"] == pytest.approx(acc)
        assert e["mean_confidence"] == pytest.approx(p.max(1).mean())
        # ECE with 15 equal-width bins, written out by hand.
        conf, hit = p.max(1), logits[:, k].argmax(1) == run.labels
        ece = 0.0
        for lo in np.arange(15) / 15:
            sel = (conf > lo) & (conf <= lo + 1 / 15)
            if sel.any():
                ece += sel.mean() * abs(hit[sel].mean() - conf[sel].mean())
        assert e["ece"] == pytest.approx(ece)
        assert e["macs"] is None and e["latency_ms"] == {}
    table = cli("info", out)
    assert table.exit_code == 0 and f"{100 * doc['exits'][1]['accuracy']:.2f}%" in table.stdout


def test_import_layouts_and_costs(cli, tmp_path):
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(50, 3, 4)).astype(np.float32)
    labels = rng.integers(0, 4, 50)
    np.savez(tmp_path / "nkc.npz", logits=logits, labels=labels)
    np.savez(tmp_path / "knc.npz", logits=logits.transpose(1, 0, 2), labels=labels)
    for name, layout in (("nkc", "nkc"), ("knc", "knc")):
        res = cli(
            "import", tmp_path / f"{name}.npz", "--out", tmp_path / name, "--layout", layout, "--macs", "1e6,2.5e6,4e6"
        )
        assert res.exit_code == 0, res.output
        run = load_run(tmp_path / name)
        np.testing.assert_array_equal(run.logits, logits)
        assert run.costs.macs == (1e6, 2.5e6, 4e6)
    doc = json.loads(cli("info", tmp_path / "knc", "--json").stdout)
    assert [e["macs"] for e in doc["exits"]] == [1e6, 2.5e6, 4e6]


def test_load_run_refuses_partial_and_unfinished(tmp_path):
    out = tmp_path / "run"
    import_arrays(np.zeros((3, 2, 2), np.float32), [0, 1, 0], out)
    (out / "run.json").unlink()  # as if the process died before publishing
    with pytest.raises(RunError, match="not a complete dyncal run"):
        load_run(out)
    with pytest.raises(RunError, match="no run directory"):
        load_run(tmp_path / "missing")


def test_interrupted_collect_is_recognisably_incomplete(cli, toy_npz, tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS.parent), str(TESTS)])}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dyncal",
            "collect",
            "--model",
            "toy_models:slow",
            "--data",
            str(toy_npz),
            "--out",
            str(out),
            "--batch-size",
            "2",
            "-q",
        ],
        env=env,
        stderr=subprocess.PIPE,
    )
    partial = tmp_path / "run.partial"
    deadline = time.time() + 60
    while not (partial / "logits.npy").exists() and time.time() < deadline:
        time.sleep(0.1)
    time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert partial.exists() and not out.exists()
    assert_clean_error(cli("info", out), "interrupted")
    assert_clean_error(cli("info", partial), "unfinished")
    # Re-running refuses to silently reuse it (naming --resume), and --overwrite starts again.
    assert_clean_error(cli("collect", *MODEL, "--data", toy_npz, "--out", out), r"\.partial' exists.*--resume")
    assert cli("collect", *MODEL, "--data", toy_npz, "--out", out, "--overwrite").exit_code == 0
    assert load_run(out).n == 37 and not partial.exists()


# ----------------------------------------------------------------- errors: one line, nothing left


def _bad_ckpt(tmp_path: Path, kind: str) -> Path:
    state = toy_models.two_exit().state_dict()
    path = tmp_path / f"{kind}.pth"
    if kind == "missing":
        state.pop("head2.bias")
        torch.save(state, path)
    elif kind == "unexpected":
        state["extra.weight"] = torch.zeros(1)
        torch.save(state, path)
    else:
        path.write_bytes(b"not a checkpoint")
    return path


@pytest.mark.parametrize(
    ("args", "pattern"),
    [
        (["--model", "toy_models:mixed_classes"], r"disagree on the number of classes C: \[3, 5\]"),
        (["--model", "toy_models:nan_logits", "--batch-size", "8"], r"exit 2 produced NaN or inf logits in batch 1"),
        (["--model", "toy_models:broken_factory"], "calling 'toy_models:broken_factory\\(\\)' failed"),
        (["--model", "no_such_module:f"], "cannot import module 'no_such_module'"),
        (["--model", "toy_models:two_exit", "--data", "toy_models:out_of_range_dataset"], r"outside \[0, 3\)"),
        (
            ["--model", "toy_models:two_exit", "--data", "toy_models:unlabelled_dataset"],
            "must be an \\(input, label\\) pair",
        ),
        (["--model", "toy_models:two_exit", "--data", "missing.npz"], "no such file"),
        (
            ["--model", "toy_models:two_exit", "--data", "toy_models:ragged_dataset", "--batch-size", "8"],
            r"could not load batch 1 \(rows 8\.\.15\)",
        ),
        (
            ["--model", "toy_models:two_exit", "--data", "toy_models:wide_inputs_dataset"],
            r"the model failed on batch 0 \(inputs \(6, 7\) float32\)",
        ),
        (
            ["--model", "toy_models:two_exit", "--device", "cuda"]
            if not torch.cuda.is_available()
            else ["--model", "toy_models:two_exit", "--device", "tpu"],
            "--device",
        ),
    ],
)
def test_collect_user_errors(cli, toy_npz, tmp_path, args, pattern):
    if "--data" not in args:
        args = [*args, "--data", toy_npz]
    out = tmp_path / "run"
    res = cli("collect", "--model-path", TESTS, *args, "--out", out)
    assert_clean_error(res, pattern)
    assert not out.exists() and not (tmp_path / "run.partial").exists()


@pytest.mark.parametrize(
    ("kind", "pattern"),
    [
        ("missing", "missing keys: head2.bias"),
        ("unexpected", "unexpected keys: extra.weight"),
        ("garbage", "cannot read"),
    ],
)
def test_bad_checkpoints(cli, toy_npz, tmp_path, kind, pattern):
    res = cli("collect", *MODEL, "--weights", _bad_ckpt(tmp_path, kind), "--data", toy_npz, "--out", tmp_path / "r")
    assert_clean_error(res, pattern)
    assert not (tmp_path / "r").exists()


def test_existing_out_is_kept_without_overwrite(cli, toy_npz, tmp_path):
    out = tmp_path / "run"
    assert cli("collect", *MODEL, "--data", toy_npz, "--out", out).exit_code == 0
    before = (out / "logits.npy").read_bytes()
    assert_clean_error(cli("collect", *MODEL, "--data", toy_npz, "--out", out), "already exists.*--overwrite")
    assert (out / "logits.npy").read_bytes() == before
    assert cli("collect", *MODEL, "--data", toy_npz, "--out", out, "--overwrite").exit_code == 0


@pytest.mark.parametrize(
    ("arrays", "extra", "pattern"),
    [
        ({"logits": np.zeros((5, 2, 3)), "labels": np.zeros(4, int)}, [], r"labels must have shape \(5,\)"),
        ({"logits": np.zeros((5, 3)), "labels": np.zeros(5, int)}, [], "must be 3-D"),
        ({"logits": np.zeros((5, 0, 3)), "labels": np.zeros(5, int)}, [], "K >= 1"),
        ({"logits": np.zeros((5, 2, 3)), "labels": np.full(5, 3)}, [], r"\[0, 3\)"),
        ({"logits": np.full((5, 2, 3), np.nan), "labels": np.zeros(5, int)}, [], "NaN or inf"),
        ({"logits": np.zeros((5, 2, 3))}, [], "no array 'labels'"),
        ({"logits": np.zeros((2, 5, 3)), "labels": np.zeros(5, int)}, [], "--layout knc"),
        (
            {"logits": np.zeros((5, 2, 3)), "labels": np.zeros(5, int)},
            ["--macs", "1,2,3"],
            "one cumulative cost per exit",
        ),
        ({"logits": np.zeros((5, 2, 3)), "labels": np.zeros(5, int)}, ["--macs", "3,2"], "cumulative"),
        ({"logits": np.zeros((5, 2, 3)), "labels": np.zeros(5, int)}, ["--macs", "2,2"], "strictly increasing"),
        ({"logits": np.array([[[None] * 3] * 2] * 5, dtype=object), "labels": np.zeros(5, int)}, [], "cannot read"),
    ],
)
def test_import_errors(cli, tmp_path, arrays, extra, pattern):
    np.savez(tmp_path / "a.npz", **arrays)
    res = cli("import", tmp_path / "a.npz", "--out", tmp_path / "r", *extra)
    assert_clean_error(res, pattern)
    assert not (tmp_path / "r").exists() and not (tmp_path / "r.partial").exists()


def test_import_unreadable_file(cli, tmp_path):
    (tmp_path / "bad.npz").write_bytes(b"garbage")
    assert_clean_error(cli("import", tmp_path / "bad.npz", "--out", tmp_path / "r"), "cannot read")
    assert_clean_error(cli("import", tmp_path / "none.npz", "--out", tmp_path / "r"), "no such file")
    np.savez(tmp_path / "ok.npz", logits=np.zeros((500, 2, 3)), labels=np.zeros(500, int))
    (tmp_path / "cut.npz").write_bytes((tmp_path / "ok.npz").read_bytes()[:5000])
    assert_clean_error(cli("import", tmp_path / "cut.npz", "--out", tmp_path / "r"), "is the file complete")
    assert_clean_error(cli("collect", *MODEL, "--data", tmp_path / "cut.npz", "--out", tmp_path / "r"), "cannot read")
    assert not (tmp_path / "r").exists()


def test_unreadable_image_is_one_line(cli, tmp_path):
    from PIL import Image

    (tmp_path / "imgs" / "a").mkdir(parents=True)
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "imgs" / "a" / "ok.png")
    (tmp_path / "imgs" / "a" / "broken.png").write_text("not an image")
    args = (
        "collect",
        "--model",
        "toy_models:tiny_conv",
        "--model-path",
        TESTS,
        "--data",
        f"imagefolder:{tmp_path / 'imgs'}",
        "--resize",
        16,
        "--crop",
        16,
        "--out",
        tmp_path / "r",
    )
    res = cli(*args)
    assert_clean_error(res, "could not load item 0.*UnidentifiedImageError")
    (tmp_path / "imgs" / "a" / "broken.png").rename(tmp_path / "imgs" / "a" / "z-broken.png")  # now in batch 0
    res = cli(*args)
    assert_clean_error(res, r"could not load batch 0 \(rows 0\.\.63\).*UnidentifiedImageError")
    assert not (tmp_path / "r").exists() and not (tmp_path / "r.partial").exists()


def test_overwrite_never_deletes_a_folder_that_is_not_a_run(cli, toy_npz, tmp_path):
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.tex").write_text("years of work")
    assert_clean_error(cli("collect", *MODEL, "--data", toy_npz, "--out", precious, "--overwrite"), "not a dyncal run")
    np.savez(tmp_path / "a.npz", logits=np.zeros((5, 2, 3)), labels=np.zeros(5, int))
    assert_clean_error(cli("import", tmp_path / "a.npz", "--out", precious, "--overwrite"), "not a dyncal run")
    assert_clean_error(cli("demo", "--out", precious, "--overwrite"), "thesis.tex. is not a file dyncal wrote")
    assert (precious / "thesis.tex").read_text() == "years of work"


def test_model_path_also_finds_the_data_factory(cli, tmp_path):
    (tmp_path / "mine.py").write_text(
        "import torch\n"
        "from toy_models import TwoExitMLP\n"
        "def net():\n    return TwoExitMLP()\n"
        "def data():\n    return torch.utils.data.TensorDataset(torch.randn(9, 4), torch.zeros(9, dtype=torch.long))\n"
    )
    res = cli(
        "collect", "--model", "mine:net", "--data", "mine:data", "--model-path", tmp_path, "--out", tmp_path / "r"
    )
    assert res.exit_code == 0, res.output
    assert load_run(tmp_path / "r").n == 9
