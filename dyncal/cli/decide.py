"""The verbs that decide from a run's numbers: solve, frontier, report, plot."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Annotated, Any

import typer

from dyncal.artifacts.costs import LatencyKey
from dyncal.choices import DEFAULT_METHOD, FigureKind, Method
from dyncal.cli import params, render

_RISK_HELP = (
    "Risk control (Learn then Test): the cheapest thresholds whose accuracy on new data is at most "
    "this fraction below the last exit's, with probability >= 1 - delta. Assumes calibration and "
    "deployment samples are exchangeable (i.i.d. from one distribution); under distribution shift "
    "the guarantee does not hold."
)


@params.with_options(params.run_split, params.latency_column, after="method")
def solve(
    ctx: typer.Context,
    run: params.RunArg,
    out: Annotated[Path, params.out_option("thresholds.json")],
    budget: Annotated[
        str | None,
        typer.Option(
            help="Mean cost per sample: 0.6x (fraction of the last exit's cost), 1.2GMAC / 850MMAC, "
            "or 35ms (expected early-exit latency of a profiled --device/--batch-size)."
        ),
    ] = None,
    method: Annotated[
        str,
        params.choice_option(
            Method,
            "optimal (default: exact solver on 0/1 hits, least held-out regret), smoothed (the same on "
            "calibrated expected accuracy) or geometric (MSDNet's baseline); every one guarded.",
        ),
    ] = DEFAULT_METHOD,
    max_drop: Annotated[float | None, typer.Option(help=_RISK_HELP)] = None,
    delta: Annotated[float, typer.Option(help="Risk control: allowed probability of a drop above --max-drop.")] = 0.05,
    max_latency_ms: Annotated[
        str | None,
        typer.Option(
            help="A tail bound, p99=2.5 (any percentile, or max): the predicted p-th percentile of a request's "
            "latency (profiled batch-1 latency of the exit it takes) stays within it on the fit samples, as well "
            "as the mean within --budget."
        ),
    ] = None,
    overwrite: params.OverwriteOpt = False,
    json_: params.JsonOpt = False,
    **shared: Any,
) -> None:
    """Thresholds that maximise accuracy within a mean-cost budget, with honest held-out numbers.

    Fits on one part of the run, reports accuracy on the other (95% bootstrap interval),
    expected cost in every known unit, exit shares and each exit alone. With --max-drop the
    thresholds are the cheapest that keep the drop versus the last exit within the bound
    with probability >= 1 - delta (data assumed exchangeable).

    Example: dyncal solve run --budget 0.5x --out thresholds.json
    """
    from dyncal.artifacts.outputs import claim_output_file, write_output
    from dyncal.artifacts.run import load_run
    from dyncal.artifacts.thresholds import thresholds_json
    from dyncal.calibrate.options import SolveOptions
    from dyncal.calibrate.solvers import solve_run

    with params.user_errors(ctx), claim_output_file(out, overwrite=overwrite, kind="thresholds", protect=(run,)):
        loaded = load_run(run)
        asked_latency = _asked_latency(loaded, shared["device"], shared["batch_size"])
        result = solve_run(loaded, options=params.options(ctx, SolveOptions))
        doc = result.to_dict()
        write_output(out, thresholds_json(result))
    render.show(doc, json_, functools.partial(render.print_solve, asked_latency=asked_latency))
    if not json_:
        typer.echo(f"wrote {out}", err=True)


def _asked_latency(run: Any, device: str | None, batch_size: int | None) -> str | None:
    """The latency key --device/--batch-size name, if any and profiled."""
    if device is None and batch_size is None:
        return None
    from dyncal.calibrate.budget import cost_units, pick_latency
    from dyncal.errors import BudgetError

    try:
        return str(LatencyKey.from_column(pick_latency(cost_units(run.costs, run.k), device, batch_size)))
    except BudgetError:
        return None


@params.with_options(params.run_split, params.latency_column, after="methods")
def frontier(
    ctx: typer.Context,
    run: params.RunArg,
    out: Annotated[Path, params.out_option("frontier.csv")],
    n_budgets: Annotated[int, typer.Option(help="Budgets from the first exit's cost to the last's.")] = 41,
    methods: Annotated[
        str, typer.Option(help="Comma-separated solvers (the default method is always added).")
    ] = "optimal,geometric",
    overwrite: params.OverwriteOpt = False,
    json_: params.JsonOpt = False,
    **shared: Any,
) -> None:
    """Accuracy versus cost for a grid of budgets: each solver, the oracle and each exit alone.

    Writes a long CSV (one row per method and budget; fitted and held-out accuracy with a
    95% interval, expected cost in every unit, exit shares) that the report draws.

    Example: dyncal frontier run --out frontier.csv
    """
    from dyncal.artifacts.frontier import write_frontier_csv
    from dyncal.artifacts.outputs import claim_output_file, output_errors
    from dyncal.artifacts.run import load_run
    from dyncal.calibrate.frontier import compute_frontier
    from dyncal.calibrate.options import FrontierOptions

    with params.user_errors(ctx), claim_output_file(out, overwrite=overwrite, kind="frontier", protect=(run,)):
        names = tuple(m.strip() for m in methods.split(",") if m.strip())
        opened = load_run(run)
        opts = params.options(ctx, FrontierOptions, methods=names)
        df = compute_frontier(opened, opts)
        with output_errors(out):
            write_frontier_csv(df, out)
    if json_:
        records = json.loads(df.to_json(orient="records", double_precision=15))
        render.echo_json({"path": str(out), "rows": render.frontier_records(records, str(opts.score), opened.c)})
    else:
        render.print_frontier(df, out, shared["holdout"])


def _tail_and_savings(
    max_p99_ms: Annotated[
        float | None, typer.Option(help="GO needs the p99 latency of a request at most this many ms (e.g. 2.5).")
    ] = None,
    max_latency_ms: Annotated[
        list[str] | None,
        typer.Option(
            help="GO needs a latency percentile of a request at most this many ms: p99=2.5, p90=1 or max=4 "
            "(repeatable). Judged on verify's timed requests at batch 1, else predicted from the profile."
        ),
    ] = None,
    max_p99_ratio: Annotated[
        float | None,
        typer.Option(help="GO needs the p99 latency at most this factor of the plain deployment's (e.g. 1.2)."),
    ] = None,
    max_latency_ratio: Annotated[
        list[str] | None,
        typer.Option(help="The same for any percentile: p99=1.2 (repeatable; needs --verify with timed requests)."),
    ] = None,
    rate: Annotated[
        str | None,
        typer.Option(
            help="A request rate (200/s, 12k/min): a page says what early exit saves at it, cores (CPU) or "
            "devices (GPU) and core-hours per million requests, plain deployment vs early exit (needs --verify)."
        ),
    ] = None,
) -> None:
    """Report criteria on the tail of request latency, and the rate the savings are computed at."""


@params.with_options(_tail_and_savings, after="title")
@params.with_options(params.latency_column, after="min_speedup")
def report(
    ctx: typer.Context,
    run: params.RunArg,
    out: Annotated[Path, params.out_option("PDF file")],
    budget: Annotated[
        str | None,
        typer.Option(help="Operating point's budget: 0.6x, 1.2GMAC or 35ms. Default: chosen from the criteria."),
    ] = None,
    thresholds: Annotated[
        Path | None,
        typer.Option(
            help="Report the thresholds in this thresholds.json (from 'dyncal solve') instead of solving; "
            "not with --budget."
        ),
    ] = None,
    verify: Annotated[
        Path | None,
        typer.Option(
            help="A 'dyncal verify --out' result: latency criteria are judged on the measured early exit "
            "(used only if it matches the run, the thresholds and the weights)."
        ),
    ] = None,
    min_accuracy: Annotated[
        float | None, typer.Option(help="GO needs held-out accuracy at least this fraction (e.g. 0.95).")
    ] = None,
    max_drop: Annotated[
        float | None,
        typer.Option(help="GO needs the accuracy drop vs the last exit at most this fraction (e.g. 0.01)."),
    ] = None,
    min_speedup: Annotated[
        float | None,
        typer.Option(
            help="GO needs a speed-up vs the last exit of at least this factor (e.g. 1.5); "
            "in latency with --device, else in MACs."
        ),
    ] = None,
    title: Annotated[str | None, typer.Option(help="Title on every page.")] = None,
    method: params.MethodOrDefaultOpt = None,
    temperature: Annotated[
        bool, typer.Option("--temperature", help="Fit one temperature per exit on the fitting half.")
    ] = False,
    holdout: Annotated[
        float | None, typer.Option(help="Fraction held out of fitting, to judge on (default 0.5).")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of the held-out split (default 0).")] = None,
    compare: params.CompareOpt = None,
    robustness: Annotated[
        list[str] | None,
        typer.Option(
            help="Runs of the same model on other data (collect --perturb writes OUT-NAME-SEVERITY), "
            "comma-separated or repeated: the operating point judged on each, on a robustness page."
        ),
    ] = None,
    overwrite: params.OverwriteOpt = False,
    json_: params.JsonOpt = False,
    **shared: Any,
) -> None:
    """Write the PDF go/no-go report: decision, curves, exits, calibration, provenance.

    The decision is GO, NO-GO, or INCONCLUSIVE when timing noise alone decides a latency
    criterion. Without a criterion the report states the trade-off instead of deciding.

    With --compare, other runs measured on the same data (a static model, K=1, or another
    early-exit model) are drawn beside the curves and judged against the operating point:
    paired on the same samples when they hold them, unpaired (and said so) otherwise.

    Example: dyncal report run --thresholds thresholds.json --verify verify.json --max-drop 0.01
    --min-speedup 2 --device cpu --batch-size 1 --out report.pdf
    """
    from dyncal.reports.operating import ReportOptions
    from dyncal.reports.pdf import build_report

    with params.user_errors(ctx):
        asked = params.options(
            ctx,
            ReportOptions,
            command=params.command_line(ctx),
            compare=params.compared_runs(compare),
            robustness=params.compared_runs(robustness),
        )
        result = build_report(run, out, asked, overwrite=overwrite)
    render.show(result.to_dict(), json_, render.print_report)


@params.with_options(params.latency_column, after="budget")
def plot(
    ctx: typer.Context,
    run: params.RunArg,
    kind: Annotated[str, params.choice_option(FigureKind, "Which figure.")],
    out: Annotated[Path, params.out_option("Figure file (.png, .svg or .pdf)")],
    budget: Annotated[
        str | None,
        typer.Option(
            help="Operating point's budget (0.6x, 1.2GMAC, 35ms). Default: the cheapest budget whose fitted "
            "accuracy is within 1 percentage point of the last exit's (the legend says which)."
        ),
    ] = None,
    method: params.MethodOrDefaultOpt = None,
    thresholds: Annotated[
        Path | None,
        typer.Option(help="Mark the thresholds in this thresholds.json (from 'dyncal solve'); not with --budget."),
    ] = None,
    dpi: Annotated[int, typer.Option(help="Resolution of .png output.")] = 150,
    compare: params.CompareOpt = None,
    overwrite: params.OverwriteOpt = False,
    **shared: Any,
) -> None:
    """Export one figure of the report alone, with the operating point marked.

    --thresholds marks the thresholds that ship; else --budget solves one; else the cheapest
    budget within 1 percentage point of the last exit's fitted accuracy (the legend names
    it). The star sits at the held-out accuracy and cost the report's page 1 shows. With
    --compare the other runs are drawn as the report draws them (frontier and latency).

    Example: dyncal plot run --kind latency --thresholds thresholds.json --out latency.svg
    """
    from dyncal.artifacts.outputs import claim_output_file
    from dyncal.reports.operating import ReportOptions
    from dyncal.reports.pdf import export_figure

    others = params.compared_runs(compare)
    protect: list[str | Path] = [run, *others, *([] if thresholds is None else [thresholds])]
    with params.user_errors(ctx), claim_output_file(out, overwrite=overwrite, kind="figure", protect=protect):
        path = export_figure(run, kind, out, params.options(ctx, ReportOptions, compare=others), dpi=dpi)
    typer.echo(f"wrote {path}", err=True)
