"""The report's pages read cleanly: no text printed over other text, nothing past the page, provenance whole.

The PDF's own text positions are checked (``pdftotext -bbox`` from poppler-utils): every word
box lies inside its page and no two overlap.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from synthetic_profiles import with_stages
from test_report import CREATED, DEMO_MACS, _demo_logits, _latency
from typer.testing import CliRunner

from dyncal.artifacts.costs import CostTable
from dyncal.artifacts.run import store_costs
from dyncal.artifacts.run_document import Provenance
from dyncal.artifacts.run_import import import_arrays
from dyncal.cli import app

pytestmark = pytest.mark.skipif(shutil.which("pdftotext") is None, reason="needs poppler-utils (pdftotext)")

# a recorded command with numbers in it: provenance must show it whole, never cut mid-number
COMMAND = (
    "dyncal collect --model dyncal.demo:pretrained --data dyncal.demo:validation --crop 224 --resize 256 "
    "--batch-size 128 --device cpu --out /data/runs/a-rather-long-folder-name/resnet18_two_heads_run"
)


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Three reports: K=4 with latency and a static model compared (7 pages), K=3, and K=3 undecided."""
    z, y = _demo_logits()
    root = tmp_path_factory.mktemp("pages")
    prov = Provenance(
        model="dyncal.demo:pretrained",
        weights_sha256="f" * 64,
        data="dyncal.demo:validation",
        command=COMMAND,
        created=CREATED,
        device="cpu",
        versions={"dyncal": "test"},
    )
    run = import_arrays(z, y, root / "run", macs=DEMO_MACS, provenance=prov)
    store_costs(run, CostTable(macs=DEMO_MACS, latency={"cpu/b1": _latency(1), "cpu/b32": _latency(32)}))
    k3 = import_arrays(z[:, :3], y, root / "k3", macs=DEMO_MACS[:3], provenance=prov)
    b1 = _latency(1)
    store_costs(k3, CostTable(macs=DEMO_MACS[:3], latency={"cpu/b1": with_stages(b1, b1.stage_ms[:3])}))
    static = import_arrays(z[:, 3:4], y, root / "a-static-model-with-a-long-name", macs=DEMO_MACS[3:], provenance=prov)
    one_stage = {  # the static model profiled too: page 7's tables gain latency columns
        key: with_stages(p, (tuple(sum(s) for s in zip(*p.stage_ms, strict=True)),))
        for key, p in (("cpu/b1", _latency(1)), ("cpu/b32", _latency(32)))
    }
    store_costs(static, CostTable(macs=DEMO_MACS[3:], latency=one_stage))
    asked = {
        "k4": [run.path, "--min-accuracy", "0.9", "--min-speedup", "3", "--device", "cpu", "--compare", static.path],
        "k3": [k3.path, "--max-drop", "0.01", "--compare", static.path],
        "k3_plain": [k3.path],
    }
    out = {}
    for name, args in asked.items():
        out[name] = root / f"{name}.pdf"
        res = CliRunner().invoke(app, ["report", *map(str, args), "--out", str(out[name])])
        assert res.exit_code == 0, res.output
    return out


def _words(pdf: Path) -> list[tuple[float, float, list[tuple[float, float, float, float, str]]]]:
    """Per page: its width, height and word boxes ``(x0, y0, x1, y1, text)`` in points."""
    html = subprocess.run(["pdftotext", "-bbox", str(pdf), "-"], capture_output=True, text=True, check=True).stdout
    pages = []
    for page in re.finditer(r'<page width="([\d.]+)" height="([\d.]+)">(.*?)</page>', html, re.S):
        boxes = re.findall(
            r'<word xMin="([\d.-]+)" yMin="([\d.-]+)" xMax="([\d.-]+)" yMax="([\d.-]+)">(.*?)</word>', page[3]
        )
        pages.append((float(page[1]), float(page[2]), [(*map(float, b[:4]), b[4]) for b in boxes]))
    return pages


def _text(pdf: Path) -> str:
    return subprocess.run(["pdftotext", str(pdf), "-"], capture_output=True, text=True, check=True).stdout


@pytest.mark.parametrize("name", ["k4", "k3", "k3_plain"])
def test_no_text_overlaps_and_all_of_it_is_on_the_page(reports: dict[str, Path], name: str) -> None:
    tol = 0.5  # points: glyph boxes of neighbouring words may touch
    pages = _words(reports[name])
    assert len(pages) == (6 if name == "k3_plain" else 7)
    for number, (width, height, words) in enumerate(pages, start=1):
        assert words, f"page {number} has no text"
        margin = 0.02 * width  # text margins are at 6%, axis labels a little outside them: none at the edge
        outside = [w[4] for w in words if w[0] < margin or w[2] > width - margin or w[1] < 0 or w[3] > height]
        assert not outside, (name, number, outside)
        for i, a in enumerate(words):
            for b in words[i + 1 :]:
                dx = min(a[2], b[2]) - max(a[0], b[0])
                dy = min(a[3], b[3]) - max(a[1], b[1])
                assert dx <= tol or dy <= tol, (name, number, a, b)


def test_provenance_is_whole_and_the_footer_names_the_run_once(reports: dict[str, Path]) -> None:
    text = _text(reports["k4"])
    flat = " ".join(text.split())
    assert "run run" not in flat and "run 'run' (N=797, K=4, C=10)" in flat
    # every token of the recorded command appears whole, in order (wrapped between words only)
    tokens = COMMAND.split()
    found = [t for t in flat.split() if t in tokens]
    assert found[: len(tokens)] == tokens or all(t in flat.split() for t in tokens), found
    provenance = " ".join(" ".join(w[4] for w in _words(reports["k4"])[5][2]).split())
    assert "…" not in provenance  # nothing cut short
    assert "f" * 64 in provenance.split()  # the hash on one line, whole


def test_reliability_bars_show_their_counts(reports: dict[str, Path]) -> None:
    pages = _words(reports["k4"])
    calibration = pages[4][2]
    counts = [int(w[4].replace(",", "")) for w in calibration if re.fullmatch(r"\d[\d,]*", w[4])]
    # the 797 samples of each exit counted in its bins (numbers of the table and the axes aside)
    assert sum(counts) >= 4 * 797
    assert "counts its samples" in " ".join(_text(reports["k4"]).split())


def test_k3_calibration_uses_the_page(reports: dict[str, Path]) -> None:
    """Three exits in two rows of two, not three small panels in one row above an empty half page."""
    width, height, words = _words(reports["k3_plain"])[4]
    titles = [w for w in words if w[4] == "ECE" and w[1] > 0.3 * height]
    assert len({round(w[1]) for w in titles}) == 2, titles  # panel titles on two rows


def test_the_recorded_command_holds_only_what_was_typed(tmp_path: Path, toy_npz: Path) -> None:
    """Provenance's command line: the options given, none left at their default (--batch-size, --device, ...)."""
    from conftest import TESTS

    from dyncal.artifacts.run import load_run

    out = tmp_path / "run"
    args = ["collect", "--model", "toy_models:two_exit", "--model-path", str(TESTS), "--data", str(toy_npz)]
    res = CliRunner().invoke(app, [*args, "--out", str(out), "--limit", "20"])
    assert res.exit_code == 0, res.output
    command = load_run(out).provenance.command
    assert command == (
        f"dyncal collect --model toy_models:two_exit --data {toy_npz} --out {out} --model-path {TESTS} --limit 20"
    )
