"""The README's commands run as written.

The ```bash block under "Using it on your model" is run line by line with the CLI on the
demo model (the shipped 4-exit digits CNN and its weights) in a fresh folder, with only the
model and data specs replaced by the demo's. Optional parts in brackets (``[--device cuda]``)
and comments are left out. torchrun lines are skipped: they start several processes (and
want GPUs); collecting under torchrun is tested in tests/test_collect.py.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dyncal.cli import app
from dyncal.demo import WEIGHTS
from dyncal.verbs.demo import DEMO_DATA, DEMO_MODEL

README = Path(__file__).parents[1] / "README.md"
TESTS = Path(__file__).parent
SUBSTITUTIONS = {
    "mypkg.nets:msdnet --weights ckpt.pth --model-path src": f"{DEMO_MODEL} --weights {WEIGHTS}",
    # the static alternative: the demo's last exit alone (tests/static_models.py)
    "mypkg.nets:resnet18 --weights r18.pth --model-path src": f"static_models:demo_last_exit --model-path {TESTS}",
    "imagefolder:/data/imagenet/val": DEMO_DATA,
}


def pipeline_commands(text: str) -> list[list[str]]:
    """The dyncal commands of the README's pipeline block, as argument lists (without ``dyncal``)."""
    section = text.split("## Using it on your model", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block is not None, "no ```bash block under 'Using it on your model'"
    lines = block.group(1).replace("\\\n", " ").splitlines()
    out = []
    for line in lines:
        for old, new in SUBSTITUTIONS.items():
            line = line.replace(old, new)
        line = re.sub(r"\s*\[[^\]]*\]", "", line)  # optional parts
        argv = shlex.split(line, comments=True)
        if not argv or argv[0] == "torchrun":
            continue
        assert argv[0] == "dyncal", line
        out.append(argv[1:])
    return out


def test_the_block_is_the_whole_pipeline() -> None:
    verbs = [argv[0] for argv in pipeline_commands(README.read_text(encoding="utf-8"))]
    for verb in ("collect", "info", "profile", "solve", "frontier", "verify", "report", "plot"):
        assert verb in verbs, verb
    assert verbs.index("verify") < verbs.index("report")  # the report reads what verify measured


@pytest.mark.slow
def test_readme_pipeline_runs_on_the_demo_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    for argv in pipeline_commands(README.read_text(encoding="utf-8")):
        res = runner.invoke(app, argv)
        assert res.exit_code == 0, (argv, res.output, res.exception)
    for name in (
        "run/run.json",
        "thresholds.json",
        "safe.json",
        "frontier.csv",
        "verify.json",
        "report.pdf",
        "compare.pdf",
    ):
        assert (tmp_path / name).is_file(), name
    assert (tmp_path / "frontier.png").read_bytes()[:4] == b"\x89PNG"
