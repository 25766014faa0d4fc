"""``dyncal demo``: the whole pipeline on the embedded default, end to end.

collect → profile (CPU, batch 1 and 32) → solve → frontier → verify → report, each the
same library call the matching verb makes, into one folder.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dyncal.artifacts.frontier import write_frontier_csv
from dyncal.artifacts.lock import LOCK_PREFIX, OutputLock, is_dyncal_lock
from dyncal.artifacts.outputs import check_out, check_output_folder, check_writable, output_errors, written_by_dyncal
from dyncal.artifacts.ownership import foreign_entry, is_folder, is_regular_file, remove_owned_folder, temp_of
from dyncal.artifacts.run import load_run
from dyncal.artifacts.rundir import foreign_in_partial_run, foreign_in_run, is_run_dir
from dyncal.errors import RunError

if TYPE_CHECKING:
    from dyncal.artifacts.verify import VerifyResult
    from dyncal.calibrate.options import SolveOptions
    from dyncal.reports.operating import ReportOptions

__all__ = ["run_demo", "DEMO_MODEL", "DEMO_DATA"]

# The class plus the shipped checkpoint (rather than the ``pretrained`` factory) so the
# run records the weights file and its SHA-256 like any user model would.
DEMO_MODEL = "dyncal.demo:DigitsExitNet"
DEMO_DATA = "dyncal.demo:validation"
_BATCH_SIZES = (1, 32)


_DEMO_RATE = "20000/s"
_DEMO_OUTPUTS = ("thresholds.json", "frontier.csv", "report.pdf", "verify.json")
_OLD_RUN_LOCK = re.compile(rb"\d*\n?")  # run.lock of dyncal before 0.x wrote a bare pid


def _demo_entry(entry: Path) -> Path | None:
    """None if ``entry`` is one ``run_demo`` writes (checked by content), else what in it is not dyncal's.

    A demo folder holds ``run/`` (a run, every file dyncal's) or, interrupted, ``run.partial/``;
    ``thresholds.json``, ``frontier.csv``, ``report.pdf`` and ``verify.json`` as dyncal
    writes them (:func:`~dyncal.artifacts.outputs.written_by_dyncal`); dyncal's lock files
    and the temporary files of interrupted writes.
    """
    name = entry.name
    if name == "run" and is_folder(entry):
        return foreign_in_run(entry) if is_run_dir(entry) else entry
    if name == "run.partial" and is_folder(entry):
        return foreign_in_partial_run(entry)
    if name in _DEMO_OUTPUTS and is_regular_file(entry) and written_by_dyncal(entry):
        return None
    if name.startswith(LOCK_PREFIX) and name[len(LOCK_PREFIX) :] in ("run", *_DEMO_OUTPUTS) and is_dyncal_lock(entry):
        return None
    if name == "run.lock" and is_regular_file(entry) and entry.stat().st_size < 32:
        return None if _OLD_RUN_LOCK.fullmatch(entry.read_bytes()) else entry
    return None if temp_of(entry, _DEMO_OUTPUTS) else entry


def _make_demo_folder(out: Path, overwrite: bool) -> None:
    """Create ``out`` empty (its lock held), replacing an old demo folder only if everything in it is dyncal's."""
    check_out(
        out,
        overwrite=overwrite,
        what="demo folder",
        is_ours=lambda _: True,  # whatever it holds is checked entry by entry
        foreign=lambda folder: foreign_entry(folder, _demo_entry),
    )
    with output_errors(out):
        if os.path.lexists(out):
            remove_owned_folder(out, _demo_entry, action="replace", error=RunError)
        out.mkdir()


def run_demo(
    out: str | os.PathLike[str],
    *,
    budget: str = "0.5x",
    max_drop: float = 0.02,
    min_speedup: float = 2.0,
    overwrite: bool = False,
    log: Callable[[str], None] = lambda _: None,
) -> str:
    """Run every stage on the demo model and data into ``out``; return a short summary.

    Args:
        out: Folder to create (``run/``, ``thresholds.json``, ``frontier.csv``,
            ``report.pdf``, ``verify.json``).
        budget: Budget of the operating point (default half the last exit's MACs).
        max_drop: Report criterion: held-out accuracy at most this far below the last exit's
            (2 points: the 95% interval of the drop on 399 held-out digits is about 3 points wide,
            so a 1-point bound is met or missed by two or three samples).
        min_speedup: Report criterion: CPU batch-1 latency speed-up over the last exit.
        overwrite: Replace an existing folder.
        log: Called with one line per step.

    Raises:
        RunError: ``out`` exists without ``overwrite``.
        DyncalError: A budget or criterion the solve or report options refuse (before
            anything is written).
    """
    from dyncal.calibrate.frontier import compute_frontier
    from dyncal.calibrate.solvers import solve_run
    from dyncal.data import load_dataset
    from dyncal.demo import WEIGHTS
    from dyncal.models import load_model
    from dyncal.reports.pdf import build_report
    from dyncal.verbs.collect import collect_run
    from dyncal.verbs.profile import profile_run
    from dyncal.verbs.verify import verify_run

    # every option is checked before any work: a bad value fails at once and writes nothing
    out, solve_options, report_options = _options(out, budget, max_drop, min_speedup)
    run_dir = out / "run"
    if os.path.lexists(out) and not overwrite:
        raise RunError(f"'{out}' already exists; choose another `out` or pass `overwrite`")
    with output_errors(out):
        out.parent.mkdir(parents=True, exist_ok=True)
    check_writable(out.parent)
    with OutputLock(out):
        _make_demo_folder(out, overwrite)
        t0 = time.perf_counter()

        log(f"[1/6] collect: {DEMO_MODEL} over {DEMO_DATA} → {run_dir}")
        model = load_model(DEMO_MODEL, weights=WEIGHTS)
        collect_run(model, load_dataset(DEMO_DATA), run_dir, data_spec=DEMO_DATA, batch_size=128)

        log(f"[2/6] profile: stages from the graph, fvcore MACs, CPU latency at batch {_BATCH_SIZES}")
        # one thread: steadier timings on a shared machine (verify follows the profile's thread count)
        profile_run(run_dir, devices=("cpu",), batch_sizes=_BATCH_SIZES, threads=1)

        log(f"[3/6] solve: budget {budget}")
        run = load_run(run_dir)
        thresholds = solve_run(run, options=solve_options)
        thresholds.save(out / "thresholds.json")

        log("[4/6] frontier")
        write_frontier_csv(compute_frontier(run), out / "frontier.csv")

        log("[5/6] verify: real early exit with the thresholds")
        verified = verify_run(run_dir, thresholds, batch_sizes=_BATCH_SIZES)
        verified.save(out / "verify.json")

        log("[6/6] report (judged on the measured early exit)")
        report = build_report(run_dir, out / "report.pdf", report_options)

    seconds = time.perf_counter() - t0
    return _summary(out, seconds, budget, max_drop, min_speedup, thresholds.to_dict(), verified, report.to_dict())


def _options(
    out: str | os.PathLike[str], budget: str, max_drop: float, min_speedup: float
) -> tuple[Path, SolveOptions, ReportOptions]:
    """The demo folder, and the solve and report options it runs with (checked: nothing is written yet)."""
    from dyncal.calibrate.budget import parse_budget
    from dyncal.calibrate.options import SolveOptions
    from dyncal.reports.operating import ReportOptions

    # an ms budget is read on the column the report judges: CPU, batch 1
    column = ("cpu", 1) if parse_budget(budget).kind == "ms" else (None, None)
    solve_options = SolveOptions(budget=budget, device=column[0], batch_size=column[1])
    out = check_output_folder(out)
    run_dir = out / "run"
    report_options = ReportOptions(
        thresholds=out / "thresholds.json",
        verify=out / "verify.json",
        max_drop=max_drop,
        min_speedup=min_speedup,
        device="cpu",
        batch_size=1,
        rate=_DEMO_RATE,  # the report's last page: what early exit saves at this rate
        command=f"dyncal report {run_dir} --thresholds {out / 'thresholds.json'} --verify {out / 'verify.json'} "
        f"--max-drop {max_drop} --min-speedup {min_speedup} --device cpu --batch-size 1 --rate {_DEMO_RATE} "
        f"--out {out / 'report.pdf'}",
    )
    return out, solve_options, report_options


def _summary(
    out: Path,
    seconds: float,
    budget: str,
    max_drop: float,
    min_speedup: float,
    th: dict[str, Any],
    verified: VerifyResult,
    report: dict[str, Any],
) -> str:
    """The demo's summary: the operating point held out (thresholds.json ``th``), verify's timings, the verdict."""
    held = th["holdout"] or {"expected_macs": th["expected_macs"], "exit_shares": th["exit_shares"]}
    last = th["static"][-1] if th.get("static") else None
    lines = [
        f"dyncal demo finished in {seconds:.0f} s → {out}/",
        f"  operating point ({th['method']}, budget {budget}): held-out accuracy "
        f"{100 * th['holdout_accuracy']:.2f}% "
        f"[{100 * th['holdout_ci'][0]:.2f}, {100 * th['holdout_ci'][1]:.2f}]"
        + (
            f" vs last exit alone {100 * last['holdout_accuracy']:.2f}%"
            if last and last.get("holdout_accuracy") is not None
            else ""
        ),
        # the held-out half, as the report and its --json show (solve's fit-half figures are in thresholds.json)
        f"  held out: expected MACs {held['expected_macs']:.4g} per sample; exit shares "
        + ", ".join(f"{100 * s:.1f}%" for s in held["exit_shares"]),
    ]
    for t in verified.timings:
        pred = "-" if t.predicted_ms is None else f"{t.predicted_ms:.3g}"
        lo, hi = t.speedup_ci
        lines.append(
            f"  verify {t.key}: early exit {t.measured_ms:.3g} ms vs predicted {pred} ms per batch; "
            f"plain deployment {t.full_model_ms_median:.3g} ms; speed-up {t.speedup:.2f}x [{lo:.2f}, {hi:.2f}]"
        )
    lines.append(f"  agreement with the simulation: {100 * verified.agreement:.2f}%")
    criteria = f"accuracy drop <= {100 * max_drop:g} pt, speed-up >= {min_speedup:g}x on cpu/b1"
    lines.append(f"  report: {out / 'report.pdf'}: {report.get('decision')} ({criteria})")
    saved = report.get("savings")
    if saved:
        plain, early = saved["offline"]["plain"], saved["offline"]["early_exit"]
        lines.append(
            f"  what it saves at {_DEMO_RATE}: early exit {early['cores']} "
            f"{saved['unit'] if early['cores'] != 1 else saved['unit'].removesuffix('s')} vs {plain['cores']} for the "
            f"plain deployment (Offline, batch {early['batch_size']}; page {len(report['pages'])})"
        )
    return "\n".join(lines)
