"""What the verbs print: tables and summaries for people, JSON for programs, notes and progress on stderr.

The tables read the same result a verb prints with ``--json``, so the two views agree.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from dyncal.artifacts.costs import LatencyKey
from dyncal.artifacts.thresholds import json_ready
from dyncal.reports.decision import Criterion
from dyncal.reports.text import criterion_digits, pct

if TYPE_CHECKING:
    import pandas as pd
    from rich.table import Table

    from dyncal.run_model import ModelCheck


def echo_json(doc: Any) -> None:
    """Print one JSON document (NaN becomes null, as JSON has no NaN)."""
    typer.echo(json.dumps(json_ready(doc), indent=2))


def show(doc: Any, as_json: bool, printer: Callable[[Any], None]) -> None:
    """Print a verb's result: its JSON document with ``--json``, else for people with ``printer``."""
    if as_json:
        echo_json(doc)
    else:
        printer(doc)


@contextlib.contextmanager
def progress(quiet: bool, verb: str) -> Iterator[Any]:
    """A callback ``progress(key, done, total, items_per_s=None)`` drawing rich bars on stderr.

    One bar per ``key`` (verify: one per batch size, then "agreement"); ``items_per_s`` shows
    a rate. None when quiet or stderr is no terminal.
    """
    if quiet or not sys.stderr.isatty():
        yield None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = (
        TextColumn(f"{verb} {{task.description}}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeRemainingColumn() if verb == "collect" else TimeElapsedColumn(),
    )
    with Progress(*columns, console=Console(stderr=True), transient=False) as bar:
        tasks: dict[str, Any] = {}

        def update(key: str, done: int, total: int, items_per_s: float | None = None) -> None:
            if key not in tasks:
                tasks[key] = bar.add_task(key, total=total, rate="")
            rate = "" if items_per_s is None else f"{items_per_s:,.0f} items/s ETA"
            bar.update(tasks[key], completed=done, total=total, rate=rate)

        yield update


def note_run_code(
    run: Path,
    *,
    model: str | None = None,
    weights: Path | str | None = None,
    model_path: Path | str | None = None,
    data: str | None = None,
    check_rows: int = 8,
) -> None:
    """Say on stderr which code named in ``run.json`` a verb imported (model, data factory).

    A run is data, but it names a model and a data set that profile and verify load; when
    they come from ``run.json`` rather than the command line, the user should see which.
    Called once the verb succeeded (an error stays one line, and names the model itself).
    """
    from dyncal.artifacts.run_document import RunDocument
    from dyncal.run_model import run_model_source

    provenance = RunDocument.load(run).provenance  # run.json only: the arrays are not read again
    source = run_model_source(provenance, run, model=model, weights=weights, model_path=model_path)
    if source.from_run:
        typer.echo(f"note: loaded the model {run / 'run.json'} names: {source.describe()}", err=True)
    spec = provenance.data
    if check_rows > 0 and data is None and ":" in spec and not spec.startswith(("(", "imagefolder:")):
        typer.echo(f"note: imported the data factory {run / 'run.json'} names, to re-run a few rows: {spec}", err=True)


def note_model_check(check: ModelCheck | None) -> None:
    """Say on stderr when a model was used although it is not the run's, or could not be compared."""
    if check is None:
        return
    if check.allowed:
        typer.echo(f"note: --allow-other-model: used although {check.mismatch} (recorded)", err=True)
    elif check.rows_checked == 0 and check.weights != "match" and check.rows_note:
        typer.echo(f"note: the model could not be compared with the run's: {check.rows_note}", err=True)


def _table(title: str, columns: Iterable[str], compact: bool = False) -> Table:
    """A rich table whose columns are right-aligned (numbers); ``compact``: no box, no wrapping, tight padding."""
    from rich.table import Table

    style: dict[str, Any] = dict(box=None, pad_edge=False, padding=(0, 1), collapse_padding=True) if compact else {}
    table = Table(title=title, **style)
    for col in columns:
        table.add_column(col, justify="right", no_wrap=compact)
    return table


def _print_table(table: Table) -> None:
    from rich.console import Console

    Console().print(table)


def _print_unsupported_ops(ops: list[dict[str, Any]]) -> None:
    if ops:
        text = ", ".join(f"{u['op']}×{u['count']} (stage {u['stage']})" for u in ops)
        typer.echo(f"ops fvcore could not count: {text}")


# ----------------------------------------------------------------- per verb


def print_info(doc: dict[str, Any]) -> None:
    """``dyncal info``: one row per exit."""
    lat_keys = sorted({k for e in doc["exits"] for k in e["latency_ms"]})
    table = _table(
        f"{doc['path']}  N={doc['n']}  K={doc['k']}  C={doc['c']}",
        ("exit", "accuracy", "mean conf.", "ECE", "MACs (cum.)", *[f"ms {k}" for k in lat_keys]),
    )
    for e in doc["exits"]:
        table.add_row(
            str(e["exit"]),
            f"{100 * e['accuracy']:.2f}%",
            f"{e['mean_confidence']:.3f}",
            f"{e['ece']:.3f}",
            "-" if e["macs"] is None else f"{e['macs']:.4g}",
            *[f"{e['latency_ms'][k]:.3f}" for k in lat_keys],
        )
    _print_table(table)
    if lat_keys:
        typer.echo(
            "ms: a batch whose rows all leave at that exit (the exit path, as solve, frontier and the report "
            "use it; the stage medians alone are 'stage_sum_ms' in --json)"
        )
    for k, ms in (doc.get("full_model_ms") or {}).items():
        typer.echo(f"{k}: full model {ms:.4g} ms ({doc['full_model_source'][k]})")
    _print_unsupported_ops(doc.get("unsupported_ops") or [])


def print_profile(doc: dict[str, Any]) -> None:
    """``dyncal profile``: MACs and latency per exit, then each latency column's settings."""
    keys = sorted(doc["latency"])
    table = _table(
        f"{doc['path']}  {doc['model']}  input {doc.get('inputs') or tuple(doc['input_shape'])}  "
        f"stages: {doc['stages']}",
        ("exit", "stage MACs", "MACs (cum.)", *[f"ms {k} (IQR)" for k in keys]),
    )
    for e in doc["exits"]:
        i = e["exit"] - 1
        table.add_row(
            str(e["exit"]),
            f"{e['stage_macs']:,}",
            f"{e['macs']:,}",
            *[f"{e['latency_ms'][k]:.3f} ({doc['latency'][k]['stage_iqr_ms'][i]:.3f})" for k in keys],
        )
    _print_table(table)
    for k in keys:
        lat = doc["latency"][k]
        noisy = lat["settings"].get("noisy") or {}
        note = f"; noisy (IQR > 10% of median): {', '.join(noisy)}" if noisy else ""
        typer.echo(
            f"{k}: full model {lat['full_model_ms']:.3f} ms, exit decision {lat['decision_ms']:.3f} ms, "
            f"{lat['hardware']}, threads {lat['threads']}, runtime {lat['settings'].get('runtime', 'eager')}, "
            f"torch {lat['settings'].get('torch')}{note}"
        )
    _print_unsupported_ops(doc["unsupported_ops"])
    if doc.get("macs_basis"):
        typer.echo(f"MACs: {doc['macs_basis']}")
    for bucket in doc.get("seq_len_buckets", []):
        lat = "; ".join(f"{k} " + ", ".join(f"{v:.3f}" for v in ms) + " ms" for k, ms in bucket["latency_ms"].items())
        typer.echo(f"length {bucket['length']}: MACs per exit {', '.join(f'{m:,}' for m in bucket['macs'])}; {lat}")
    if not doc["can_drop_rows"]:
        typer.echo(f"early exit must run whole batches: {doc['drop_rows_reason']}")


def print_solve(doc: dict[str, Any], asked_latency: str | None = None) -> None:
    """``dyncal solve``: the exit rule, the guard, accuracy and cost (fit half and held out), and each exit alone."""
    from rich.console import Console

    console = Console()
    b = doc["budget"]
    asked = b.get("asked") or "(none: risk control)"
    console.print(
        f"[bold]{doc['method']}[/bold] thresholds, score {doc['score']}, budget {asked} "
        f"→ met {b['met_fraction']:.4f}x of the last exit ({b['unit']}) on the fit half"
    )
    if asked_latency is not None and b["unit"] != LatencyKey.parse(asked_latency).column:
        ms = doc.get("expected_ms", {}).get(asked_latency)
        console.print(
            f"--device/--batch-size: latency column {asked_latency}"
            + ("" if ms is None else f", expected {ms:.4g} ms per sample on the fit half")
            + f"; the budget binds {b['unit']}, not latency"
        )
    console.print(_exit_rule_text(doc) + f"   temperatures: [{', '.join(f'{t:.3g}' for t in doc['temperatures'])}]")
    guard = doc.get("guard") or {}
    if guard.get("by"):
        console.print(f"guard: {guard['reason']}; returned {guard['by']} (thresholds.json 'guard')", markup=False)
    stuck = [j + 1 for j, v in enumerate(doc.get("temperature_at_bound") or []) if v]
    if stuck:
        console.print(
            f"warning: the fitted temperature of exit {', '.join(map(str, stuck))} stopped at the "
            "search bound (0.05 or 20); its confidence may be poorly calibrated"
        )
    split = doc.get("split", {})
    line = f"accuracy: fit half {pct(doc['calibration_accuracy'])} (n={split.get('n_calibration')})"
    if doc.get("holdout_accuracy") is not None:
        lo, hi = doc["holdout_ci"]
        line += f", held-out {pct(doc['holdout_accuracy'])} [95% CI {pct(lo)} – {pct(hi)}] (n={split.get('n_holdout')})"
    else:
        line += ", held-out: none (--holdout 0)"
    console.print(line)
    console.print(_cost_and_shares("on the fit half", doc, doc["exit_shares"], b["met_fraction"]))
    held = doc.get("holdout") or {}
    if held.get("n") and held.get("exit_shares"):
        console.print(_cost_and_shares("held out", held, held["exit_shares"], None))
    if any(LatencyKey.parse(k).batch_size > 1 for k in doc.get("expected_ms") or {}):
        console.print(
            "ms at batch size > 1: per batch, each sample at its own exit's path (the budget's unit); the report "
            "and verify give the time of mixed batches, a different figure"
        )
    _print_tail(console, b.get("tail"))
    if doc.get("risk"):
        r = doc["risk"]
        console.print(
            f"risk control: drop vs last exit ≤ {r['max_drop']} with probability ≥ {1 - r['delta']:.3g} "
            f"({r['n_accepted']} of {r['n_candidates']} candidates accepted, {r['p_value_method']} p-values); "
            f"calibration drop {r.get('calibration_drop', float('nan')):+.4f}"
            + (f", held-out drop {r['holdout_drop']:+.4f}" if "holdout_drop" in r else "")
        )
    console.print(_static_table(doc["static"]))


def _print_tail(console: Any, tail: dict[str, Any] | None) -> None:
    """``solve --max-latency-ms``: the bound kept on the fit part, and the held-out figure."""
    if not tail:
        return
    label = tail["asked"].split("=")[0]
    held = "" if tail.get("holdout_ms") is None else f", held-out {tail['holdout_ms']:.4g} ms"
    console.print(
        f"tail: {label} latency per request predicted {tail['fit_ms']:.4g} ms on the fit part{held} "
        f"(bound {tail['bound_ms']:g} ms, {tail['latency']}; exits slower than the bound: "
        f"{', '.join(map(str, tail['slow_exits'])) or 'none'})"
    )


def _exit_rule_text(doc: dict[str, Any]) -> str:
    """The thresholds as the exit rule reads them: ``"exit 1: score >= 0.56; exit 2: all leave; ..."``.

    Thresholds that let every sample reaching an exit leave (or none) are written to
    thresholds.json as numbers beyond the score's range (``-0.9``, ``2``); people read words.
    """
    from dyncal.calibrate.policy import describe_thresholds

    words = describe_thresholds(doc["thresholds"], doc["score"], doc.get("n_classes") or None)
    return "exit rule: " + "; ".join(f"exit {j + 1}: {w}" for j, w in enumerate(words))


def _cost_and_shares(where: str, part: dict[str, Any], shares: list[float], fraction: float | None) -> str:
    """``"<where>: expected cost per sample 4.04e+05 MACs, 0.12 ms (cpu/b1) = 0.0408x; exit shares 1: 9.8%, ..."``."""
    macs = [] if part.get("expected_macs") is None else [f"{part['expected_macs']:.4g} MACs"]
    costs = macs + [f"{ms:.4g} ms ({key})" for key, ms in (part.get("expected_ms") or {}).items()]
    text = f"{where}: expected cost per sample {', '.join(costs) or '-'}"
    text += "" if fraction is None else f" = {fraction:.4f}x"
    return text + "; exit shares " + ", ".join(f"{j + 1}: {100 * s:.1f}%" for j, s in enumerate(shares))


def _static_table(static: list[dict[str, Any]]) -> Table:
    keys = sorted({k for s in static for k in s.get("ms", {})})
    table = _table(
        "each exit alone (static baselines)",
        ("exit", "calibration acc.", "held-out acc.", "MACs", "fraction", *[f"ms {k}" for k in keys]),
    )
    for s in static:
        table.add_row(
            str(s["exit"]),
            pct(s["calibration_accuracy"], missing="-"),
            pct(s.get("holdout_accuracy"), missing="-"),
            "-" if s.get("macs") is None else f"{s['macs']:.4g}",
            f"{s['fraction']:.4f}x",
            *[f"{s['ms'][k]:.4g}" for k in keys],
        )
    return table


def print_frontier(df: pd.DataFrame, out: Path, holdout: float) -> None:
    """``dyncal frontier``: held-out (else fitted) accuracy of each solver at about ten budgets."""
    solved = df[~df["method"].isin(["static"])]
    which = "held-out" if holdout > 0 else "fitted"
    names_shown = list(dict.fromkeys(solved["method"]))
    table = _table(f"frontier ({len(df)} rows → {out}): {which} accuracy by budget", ("budget", *names_shown))
    fracs = sorted(set(solved["budget_fraction"]))
    step = max(1, len(fracs) // 10)
    for f in fracs[::step] + ([fracs[-1]] if (len(fracs) - 1) % step else []):
        cells = []
        for name in names_shown:
            sel = solved[(solved["method"] == name) & (solved["budget_fraction"] == f)]
            col = "holdout_accuracy" if holdout > 0 else "fitted_accuracy"
            v = sel[col].iloc[0] if len(sel) else float("nan")
            cells.append("-" if v != v else f"{100 * v:.2f}%")
        table.add_row(f"{f:.3f}x", *cells)
    _print_table(table)


def frontier_records(records: list[dict[str, Any]], score: str, n_classes: int) -> list[dict[str, Any]]:
    """``frontier --json``'s rows: ``thresholds`` as a list (the CSV keeps JSON text), and ``exit_rule`` in words.

    ``exit_rule`` reads each threshold as the exit rule does (:func:`~dyncal.calibrate.policy.describe_thresholds`):
    ``"all leave"`` / ``"none leave"`` where the list holds the placeholders beyond the score's range.
    """
    from dyncal.calibrate.policy import describe_thresholds

    lists = [json.loads(r["thresholds"]) if isinstance(r.get("thresholds"), str) else None for r in records]
    return [
        {**r, "thresholds": t, "exit_rule": None if t is None else describe_thresholds(t, score, n_classes)}
        for r, t in zip(records, lists, strict=True)
    ]


def print_export(doc: dict[str, Any]) -> None:
    """``dyncal export``: what the package holds and how closely it reproduces the model."""
    inputs = f"(B, {', '.join(map(str, doc['input']['shape']))}) {doc['input']['dtype']}"
    if doc.get("inputs"):  # several inputs
        from dyncal.inputs import InputSignature

        inputs = InputSignature.from_dict(doc["inputs"]).describe()
    typer.echo(
        f"wrote {doc['path']}: K={doc['k']} stages, {doc['size_bytes'] / 1e6:.2f} MB, input {inputs}, decisions "
        f"{doc['decision_fingerprint'][:12]}, max |logit diff| vs the model {max(doc['check']['max_abs_diff']):.2g}"
        + ("" if doc["signature"] is None else f", signed with key {doc['signature']['key_id']}"),
        err=True,
    )


# ----------------------------------------------------------------- report


def print_report(doc: dict[str, Any]) -> None:
    """``dyncal report``: the decision, each criterion, the operating point, the alternatives (in percent)."""
    typer.echo(f"wrote {doc['path']} ({len(doc['pages'])} pages, {doc['size_bytes'] / 1024:.0f} KB)")
    typer.echo(f"decision: {_decision_text(doc)}")
    for c in doc["criteria"]:
        _print_criterion(c)
    if doc["decision"] == "INCONCLUSIVE":
        from dyncal.reports.text import REMEDY

        remedies = [c["remedy"] for c in doc["criteria"] if c.get("remedy")]
        typer.echo(f"  to decide: {'; '.join(remedies) if remedies else REMEDY}")
    _print_operating_point(doc)
    _print_alternatives(doc)
    _print_savings(doc.get("savings"))
    for note in doc.get("notes", []):
        typer.echo(f"note: {note}")


def _print_savings(s: dict[str, Any] | None) -> None:
    """``report --rate``: the Offline saving in one line (the page has every scenario and the assumptions)."""
    if not s:
        return
    plain, early = s["offline"]["plain"], s["offline"]["early_exit"]
    saving = "" if s["offline_saving"] is None else f"{100 * s['offline_saving']:.0f}% fewer; "
    typer.echo(
        f"what it saves at {s['rate_per_s']:g}/s: early exit {early['cores']} "
        f"{s['unit'] if early['cores'] != 1 else s['unit'].removesuffix('s')}, plain deployment "
        f"{plain['cores']} ({saving}Offline, batch {early['batch_size']}); "
        f"{early['core_hours_per_million']:.3g} vs {plain['core_hours_per_million']:.3g} core-hours per million "
        "requests"
    )


def _decision_text(doc: dict[str, Any]) -> str:
    decision = doc["decision"] or "no decision (no criterion given)"
    if doc.get("decision_provisional"):
        decision += " (provisional: nothing held out)"
    if doc["decision"] == "INCONCLUSIVE":
        decision += " (timing noise alone decides a latency criterion)"
    if any(a["dominates"] and a["kind"] == "static" for a in doc.get("alternatives") or []):
        decision += (
            " (a static model is as accurate and faster)"
            if doc["decision"]
            else "; a static model is as accurate and faster"
        )
    return decision


def _print_criterion(c: dict[str, Any]) -> None:
    digits = criterion_digits(Criterion.from_dict(c))
    pct = c["name"] != "speedup" and not c["name"].startswith("latency_")
    unit = " ms" if c["name"].startswith("latency_") and c["name"].endswith("_ms") else "x"

    def fmt(v: float) -> str:
        return f"{100 * v:.{digits}f}%" if pct else f"{v:.{digits}f}{unit}"

    iv = c["interval"]
    iv_txt = "" if iv is None else f" [{fmt(iv[0])}, {fmt(iv[1])}]"
    source = f", {c['source']}" if c.get("source") not in (None, "macs") else ""
    cost = f" ({c['cost']}{source})" if c.get("cost") else ""
    need = f"{c['comparison']} {fmt(c['required'])}"
    verdict = str(c["status"]).upper()
    typer.echo(f"  {c['name']}{cost}: {fmt(c['value'])}{iv_txt} {need}: {verdict}")
    if verdict == "INCONCLUSIVE":
        s_iv = c.get("interval_sampling")
        spread = c.get("timing_spread")
        typer.echo(
            "    sampling noise alone: "
            + ("n/a" if s_iv is None else f"[{fmt(s_iv[0])}, {fmt(s_iv[1])}]")
            + ("" if spread is None else f"; timing spread {100 * spread:.0f}% of the median")
        )


def _print_operating_point(doc: dict[str, Any]) -> None:
    held = doc.get("held_out") or {}
    frac = (doc["operating_point"].get("budget") or {}).get("fraction")
    short = doc["budget"] if frac is None else f"{frac:.4g}x"
    acc = held.get("accuracy")
    ci = held.get("accuracy_ci")
    acc_txt = (
        "n/a"
        if acc is None
        else f"{100 * acc:.2f}%" + ("" if ci is None else f" [{100 * ci[0]:.2f}, {100 * ci[1]:.2f}]")
    )
    shares = ", ".join(f"{100 * s:.1f}%" for s in held.get("exit_shares") or [])
    macs = held.get("expected_macs")
    n = held.get("n", 0)
    rows = f"{n:,} held-out samples" if held.get("rows") == "held out" else f"all {n:,} samples (nothing held out)"
    typer.echo(
        f"operating point: budget {short}; on {rows}: accuracy {acc_txt}"
        + ("" if macs is None else f", {macs:.4g} MACs per sample")
        + f", exit shares {shares}"
    )


def _print_alternatives(doc: dict[str, Any]) -> None:
    """The speed-ups of the operating point, then how each compared run fares against it."""
    from dyncal.reports.figures import format_ms

    if "macs" in doc["speedup"]:
        typer.echo(f"  MACs: {doc['speedup']['macs']:.2f}x fewer than the full model")
    for key, e in doc.get("latency", {}).items():
        typer.echo(
            f"  {key}: early exit {format_ms(e['early_exit_ms'])} ({e['source']}), "
            f"full model {format_ms(e['full_model_ms'])}: {e['speedup']:.2f}x"
        )
    for a in doc.get("alternatives") or []:
        ci = a["accuracy_difference_ci"]
        cost = a["cost"]
        cost_txt = f"{a['cost_value']:.4g} MACs" if cost == "macs" else f"{format_ms(a['cost_value'])} on {cost}"
        typer.echo(
            f"  vs {a['name']} ({a['kind']}, {'paired' if a['paired'] else 'unpaired'}): accuracy "
            f"{100 * a['accuracy']:.2f}%, {100 * a['accuracy_difference']:+.2f} pts"
            + ("" if ci is None else f" [{100 * ci[0]:+.2f}, {100 * ci[1]:+.2f}]")
            + f", {cost_txt}"
            + (": as accurate and cheaper" if a["dominates"] else "")
            + _other_costs_text(a)
        )


def _other_costs_text(a: dict[str, Any]) -> str:
    """The costs an alternative was not judged on, as context: ``" (context: costlier in MACs, cheaper on cpu/b1)"``."""
    other = {c: v for c, v in (a.get("cheaper_on") or {}).items() if c != a["cost"]}
    if not other:
        return ""
    words = [f"{'cheaper' if v else 'costlier'} {'in MACs' if c == 'macs' else 'on ' + c}" for c, v in other.items()]
    return f" (judged on {a['cost']}; context: {', '.join(words)})"
