"""The verbs after the verdict: evaluate (thresholds on other data) and monitor (production, the rollout)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any

import typer

from dyncal.cli import params, render
from dyncal.errors import DyncalError, param


def evaluate(
    ctx: typer.Context,
    run: Annotated[Path, typer.Argument(help="Run B: the same model on other data.", show_default=False)],
    thresholds: Annotated[Path, typer.Option(help="thresholds.json from 'dyncal solve' on another run (run A).")],
    reference: Annotated[
        Path | None, typer.Option(help="Run A the thresholds were solved on (default: the run they name).")
    ] = None,
    max_drop: Annotated[
        float | None,
        typer.Option(help="Drop bound to check on run B (default: the thresholds' --max-drop, if solved with one)."),
    ] = None,
    delta: Annotated[float | None, typer.Option(help="Error probability of the drop bound (default 0.05).")] = None,
    cost_tolerance: Annotated[float, typer.Option(help="Relative slack on the budget before it breaks.")] = 0.05,
    json_: params.JsonOpt = False,
) -> None:
    """Judge thresholds solved on run A on run B: the same model and weights on other data.

    Another model is refused; that the data differ is said plainly. Shows held-out accuracy
    with its 95% interval, the drop against B's last exit, exit shares, expected MACs and ms
    against A's, the deltas, and whether the budget and the drop bound still hold.

    Example: dyncal evaluate run-gaussian_noise-0.5 --thresholds thresholds.json
    """
    from dyncal.verbs.rollout import evaluate_run

    with params.user_errors(ctx):
        result = evaluate_run(
            run, thresholds, reference=reference, max_drop=max_drop, delta=delta, cost_tolerance=cost_tolerance
        )
    render.show(result.to_dict(), json_, print_evaluation)


def _f(x: Any, spec: str = ".4f") -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def _pct(x: Any) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.2f}%"


def _with_ci(side: dict[str, Any], key: str) -> str:
    """``side[key]`` in percent with its interval ``side[key + "_ci"]``: ``"91.20% [89.10%, 93.00%]"``."""
    lo, hi = side[key + "_ci"]
    return f"{_pct(side[key])} [{_pct(lo)}, {_pct(hi)}]"


def _shares(shares: list[float]) -> str:
    return " ".join(f"{100 * s:.1f}" for s in shares)


def print_evaluation(doc: dict[str, Any]) -> None:
    """``dyncal evaluate`` for people: what differs, then run B against run A."""
    a, b = doc["reference"], doc["target"]
    if doc["data_differ"]:
        typer.echo(f"the data differ: thresholds solved on {a['data']!r}, judged on {b['data']!r}")
    else:
        typer.echo(f"same data spec {b['data']!r}, another collection of it")
    typer.echo(f"model: {doc['model_check']['note']}")
    d = doc["deltas"]
    rows = [
        ("samples", f"{a['n']} ({a['part']})", str(b["n"]), ""),
        ("accuracy", _with_ci(a, "accuracy"), _with_ci(b, "accuracy"), _pct(d["accuracy"])),
        ("last exit", _pct(a["last_exit_accuracy"]), _pct(b["last_exit_accuracy"]), _pct(d["last_exit_accuracy"])),
        ("drop vs last exit", _pct(a["drop"]), _with_ci(b, "drop"), _pct(d["drop"])),
        ("exit shares", _shares(a["exit_shares"]), _shares(b["exit_shares"]), ""),
    ]
    for unit, cost in b["costs"].items():
        ref = a["costs"].get(unit, {})
        ratio = d["costs"].get(unit, {}).get("ratio")
        rows.append((f"mean {unit}", _f(ref.get("mean"), ".4g"), _f(cost["mean"], ".4g"), f"x{_f(ratio, '.2f')}"))
    width = max(len(r[0]) for r in rows)
    typer.echo(f"{'':{width}}  {'run A':>28}  {'run B':>28}  {'B - A':>8}")
    for name, va, vb, d in rows:
        typer.echo(f"{name:{width}}  {va:>28}  {vb:>28}  {d:>8}")
    budget, bound = doc.get("budget"), doc.get("drop_bound")
    if budget is not None:
        typer.echo(
            f"budget {budget.get('asked') or budget['value']}: {budget['status']} on run B "
            f"(mean {_f(budget['mean'], '.4g')} {budget['unit']}, limit {_f(budget['limit'], '.4g')})"
        )
    if bound is not None:
        typer.echo(
            f"drop bound {bound['max_drop']:g} (delta {bound['delta']:g}): {bound['status']} on run B "
            f"(loss rate up to {_f(bound['loss_upper'])})"
        )
    for note in doc["notes"][2:]:
        typer.echo(f"note: {note}")


def monitor(
    ctx: typer.Context,
    run: Annotated[
        Path | None,
        typer.Argument(help="The calibration run the thresholds were solved on (not with --plan).", show_default=False),
    ] = None,
    thresholds: Annotated[Path | None, typer.Option(help="thresholds.json the package was exported with.")] = None,
    telemetry: Annotated[
        Path | None, typer.Option(help="Telemetry folder the package's runner wrote (load_early_exit(telemetry=DIR)).")
    ] = None,
    labels: Annotated[
        Path | None, typer.Option(help="Labels that arrived later: CSV request_id,label or a JSON object.")
    ] = None,
    package: Annotated[
        Path | None, typer.Option(help="The exported package: its telemetry only (its manifest's SHA-256).")
    ] = None,
    max_drop: Annotated[
        float | None,
        typer.Option(help="Accuracy drop vs the last exit to certify (default: the thresholds' --max-drop)."),
    ] = None,
    delta: Annotated[float | None, typer.Option(help="Probability that a bound fails (default 0.05).")] = None,
    cost_tolerance: Annotated[float, typer.Option(help="Relative slack on the budget before cost is over.")] = 0.05,
    window_seconds: Annotated[
        float | None, typer.Option(help="Length of the trend windows (default: the span in --windows parts).")
    ] = None,
    windows: Annotated[int, typer.Option(help="Trend windows when --window-seconds is not given.")] = 8,
    plan: Annotated[
        bool, typer.Option("--plan", help="Print the rollout plan: steps and the shadow requests each needs.")
    ] = False,
    shadow: Annotated[float, typer.Option(help="--plan: shadow share of early-exit requests.")] = 0.02,
    steps: Annotated[str, typer.Option(help="--plan: traffic shares of the rollout steps.")] = "0.01,0.05,0.25,1",
    assumed_rate: Annotated[
        float, typer.Option(help="--plan: disagreement rate the sizes assume (the calibration run's, or 0).")
    ] = 0.0,
    requests_per_hour: Annotated[
        float | None, typer.Option(help="--plan: traffic, to say how long each step takes.")
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Also write the decision as a one-page PDF here.")] = None,
    overwrite: params.OverwriteOpt = False,
    json_: params.JsonOpt = False,
) -> None:
    """Production against calibration: PROCEED, HOLD or ROLLBACK for the next rollout step.

    Quality without labels: on shadow requests the early exit's disagreement with the last exit
    bounds the accuracy drop (exact Clopper-Pearson bound at 1 - delta); with --labels, the
    losses do. Cost: mean MACs / ms per request against the budget. Drift (exit shares, scores)
    is context and never decides. ROLLBACK only on shown harm: with --labels a drop surely above
    --max-drop, or a cost surely over the budget; without labels an uncertified disagreement is
    HOLD. Shadow share 0 gives no evidence: HOLD, never PROCEED.
    Repeated per time window so a trend shows.

    Example: dyncal monitor run --thresholds thresholds.json --telemetry telemetry/
    (or: dyncal monitor --plan --max-drop 0.01 --delta 0.05 --shadow 0.02)
    """
    from dyncal.monitor import MonitorOptions, rollout_plan
    from dyncal.verbs.rollout import monitor_telemetry, risk_defaults

    with params.user_errors(ctx):
        if plan:
            if max_drop is None:
                raise DyncalError(f"the plan needs the drop to certify: give {param('max_drop')}")
            made = rollout_plan(
                max_drop,
                0.05 if delta is None else delta,
                shadow=shadow,
                steps=params.float_list(steps, "--steps") or [],
                assumed_rate=assumed_rate,
                requests_per_hour=requests_per_hour,
            )
            doc, printer = made.to_dict(), print_plan
        else:
            if run is None or thresholds is None or telemetry is None:
                missing = [
                    n for n, v in (("RUN", run), ("--thresholds", thresholds), ("--telemetry", telemetry)) if v is None
                ]
                raise DyncalError(
                    f"monitor needs {', '.join(missing)}: dyncal monitor RUN --thresholds T.json --telemetry DIR "
                    "(or --plan --max-drop E)"
                )
            from dyncal.artifacts.thresholds import read_thresholds

            eps, dlt = risk_defaults(read_thresholds(thresholds), max_drop, delta)
            options = MonitorOptions(
                max_drop=eps, delta=dlt, cost_tolerance=cost_tolerance, window_seconds=window_seconds, n_windows=windows
            )
            result = monitor_telemetry(run, thresholds, telemetry, options, labels=labels, package=package)
            doc, printer = result.to_dict(), print_monitor
            if out is not None:
                _write_pdf(out, doc, overwrite, (run, thresholds, telemetry))
    render.show(doc, json_, printer)


def _write_pdf(out: Path, doc: dict[str, Any], overwrite: bool, protect: tuple[Path, ...]) -> None:
    from dyncal.artifacts.outputs import claim_output_file, write_output
    from dyncal.reports.monitor_page import monitor_pdf

    if out.suffix.lower() != ".pdf":
        raise DyncalError(f"{param('out')} must name a .pdf file, got '{out}'")
    with claim_output_file(out, overwrite=overwrite, kind="monitor page", protect=protect):
        write_output(out, monitor_pdf(doc))
    typer.echo(f"wrote {out}", err=True)


def print_plan(doc: dict[str, Any]) -> None:
    """``dyncal monitor --plan`` for people."""
    typer.echo(
        f"rollout plan: certify a drop of at most {doc['max_drop']:g} with probability {1 - doc['delta']:g}, "
        f"shadow share {doc['shadow']:g}"
    )
    typer.echo(f"{'step':>6}  {'shadow requests':>15}  {'early-exit requests':>19}  {'all requests':>12}  {'hours':>7}")
    for s in doc["steps"]:
        hours = "-" if s["hours"] is None else f"{s['hours']:.1f}"
        typer.echo(
            f"{100 * s['share']:>5g}%  {s['shadow_requests']:>15}  {s['early_exit_requests']:>19}  "
            f"{s['total_requests']:>12}  {hours:>7}"
        )
    typer.echo(doc["note"])


def print_monitor(doc: dict[str, Any]) -> None:
    """``dyncal monitor`` for people: the decision first, then the evidence and the trend."""
    q, cost = doc["quality"], doc["cost"]
    typer.echo(f"decision: {doc['decision']}")
    for reason in doc["reasons"]:
        typer.echo(f"  - {reason}")
    typer.echo(
        f"requests: {doc['n']} ({doc['telemetry']['rows']} rows from {len(doc['telemetry']['files'])} file(s), "
        f"{len(doc['telemetry']['streams'])} live stream(s))"
    )
    typer.echo(
        f"quality ({q['source']}): {q['count']} of {q['n']} "
        f"{'losses' if q['source'] == 'labels' else 'disagreements'}; drop bound {_f(q['upper'])} "
        f"vs max-drop {q['max_drop']:g} at delta {q['delta']:g}"
    )
    if cost.get("budget") is not None:
        typer.echo(
            f"cost ({cost['unit']}): mean {_f(cost.get('mean'), '.4g')} [{_f(cost.get('lower'), '.4g')}, "
            f"{_f(cost.get('upper'), '.4g')}] vs plan {_f(cost['budget'], '.4g')} (limit {_f(cost['limit'], '.4g')}): "
            f"{cost['status']}"
        )
    else:
        typer.echo(f"cost: {cost['status']}")
    lat = doc["latency"]
    if lat.get("n"):
        typer.echo(
            f"latency ms: p50 {_f(lat.get('p50'), '.3f')}, p99 {_f(lat.get('p99'), '.3f')} ({lat['n']} measured)"
        )
    shares = doc["drift"]["exit_shares"]
    typer.echo(
        f"drift (context): exit shares {_shares(shares['production'])} vs calibration {_shares(shares['calibration'])}"
        f" (chi2 p {_f(shares['p_value'], '.3g')}); ATC accuracy estimate {_pct(doc['drift']['atc']['estimate'])}"
    )
    if doc["windows"]:
        typer.echo(f"{'window':>6}  {'requests':>8}  {'shadow':>6}  {'disagree':>8}  {'bound':>7}  decision")
        for i, w in enumerate(doc["windows"]):
            typer.echo(
                f"{i + 1:>6}  {w['n']:>8}  {w['n_shadow']:>6}  {w['disagreements']:>8}  {_f(w['upper']):>7}  "
                f"{w['decision']}"
            )
