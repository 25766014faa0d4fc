"""The ``dyncal`` command line: a thin face over the library.

Each verb parses options, calls the library, and prints. Library errors
(:class:`dyncal.errors.DyncalError`) become one line on stderr and exit status 1;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from typer.core import TyperGroup

from dyncal.artifacts.costs import LatencyKey
from dyncal.artifacts.thresholds import json_ready
from dyncal.choices import DEFAULT_METHOD, Choice, FigureKind, Layout, Method, Score
from dyncal.errors import DyncalError, render_params

if TYPE_CHECKING:
    from dyncal.run_model import ModelCheck

T = TypeVar("T")

# click's UsageError, the base of every command-line mistake (unknown option, missing or malformed value);
# typer vendors click, so it is found through the public typer.BadParameter
_UsageError: type[Exception] = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")


@contextlib.contextmanager
def _one_line_usage_errors(ctx: Any = None) -> Iterator[None]:
    """A usage error becomes one ``error:`` line and exit status 1, as every other user mistake.

    (Typer would print a multi-line box and exit with status 2.) Asking for help with no
    arguments stays help.
    """
    try:
        yield
    except _UsageError as e:
        if type(e).__name__ == "NoArgsIsHelpError":
            raise
        where = getattr(e, "ctx", None) or ctx
        command = getattr(where, "command_path", "") or "dyncal"
        message = " ".join(e.format_message().split())  # type: ignore[attr-defined]
        typer.echo(f"error: {message.rstrip('.')}; see '{command} --help'", err=True)
        raise typer.Exit(code=1) from None


class _Verbs(TyperGroup):
    """dyncal's verbs, whose usage errors are one line (:func:`_one_line_usage_errors`)."""

    def make_context(self, info_name: str | None, args: list[str], parent: Any = None, **extra: Any) -> Any:
        with _one_line_usage_errors():
            return super().make_context(info_name, args, parent=parent, **extra)

    def invoke(self, ctx: Any) -> Any:
        with _one_line_usage_errors(ctx):
            return super().invoke(ctx)


app = typer.Typer(
    cls=_Verbs,
    name="dyncal",
    help="Measure, calibrate and verify early-exit (multi-exit) classifiers.",
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_enable=False,
    add_completion=False,
    no_args_is_help=True,
)

# ----------------------------------------------------------------- shared options
# Declared once; a verb's Python parameter names equal the library's parameter names, so
# the options objects are built from ``ctx.params`` (:func:`options`) and library messages
# naming a parameter render as this verb's flag (:func:`flag_of`).


def choice_option(kind: type[Choice], help: str, **kwargs: Any) -> Any:
    """A ``typer.Option`` for a closed set of names: a bad value is one ``error:`` line and exit 1.

    (Typer's own enum options print a multi-line box with exit status 2.) The verb receives
    the :class:`~dyncal.choices.Choice` member (a ``str``).
    """

    def parse(ctx: typer.Context, param: typer.CallbackParam, value: str | None) -> Choice | None:
        if value is None:
            return None
        with user_errors(ctx):
            return kind.parse(value, param.name or "value")
        raise AssertionError("unreachable")  # pragma: no cover (user_errors exits)

    return typer.Option(callback=parse, metavar="[" + "|".join(kind) + "]", help=help, **kwargs)


def out_option(what: str) -> Any:
    """``--out``: the file a verb writes (refused if it exists, unless ``--overwrite`` and dyncal wrote it)."""
    return typer.Option(help=f"{what} to write (an existing one only with --overwrite).")


JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document instead of tables.")]
OverwriteOpt = Annotated[
    bool, typer.Option("--overwrite", help="Replace an existing output (only once the new one is complete).")
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")]
RunArg = Annotated[Path, typer.Argument(help="A run directory (from collect or import).", show_default=False)]
ThresholdsOpt = Annotated[Path, typer.Option(help="thresholds.json from 'dyncal solve' on this run.")]
CompareOpt = Annotated[
    list[str] | None,
    typer.Option(
        help="Other runs on the same data to judge against, comma-separated or repeated: static models "
        "(K=1) or other early-exit runs. report: drawn on pages 2-3, judged on page 1 (a static model as "
        "accurate and cheaper makes it NO-GO); plot: drawn on the frontier and latency figures."
    ),
]


def compared_runs(compare: list[str] | None) -> tuple[str, ...]:
    """The runs of ``--compare``, given comma-separated, repeated, or both."""
    return tuple(part.strip() for item in compare or [] for part in item.split(",") if part.strip())


# where a model runs (collect, verify) and where latency was measured (solve, frontier, report, plot)
DeviceOpt = Annotated[str, typer.Option(help="Device to run the model on: cpu, cuda or cuda:N.")]
LatencyDeviceOpt = Annotated[
    str | None,
    typer.Option(
        help="Latency column's device (e.g. cpu), for ms budgets, latency speed-ups, and the budgets of a run "
        "without MACs; with --batch-size."
    ),
]
ThreadsOpt = Annotated[
    int | None,
    typer.Option(
        help="CPU threads pinned while timing (default: profile keeps torch's setting; verify uses the threads "
        "the run's profile timed with).",
    ),
]

# --batch-size: one flag, three meanings, each declared once
LoadBatchOpt = Annotated[
    int, typer.Option("--batch-size", help="Samples per forward while collecting (memory, not results).")
]
TimedBatchesOpt = Annotated[
    str,
    typer.Option(
        "--batch-size",
        help="Batch sizes to time, comma-separated (e.g. 1,32): one latency column ms:DEVICE/bN each.",
    ),
]
LatencyBatchOpt = Annotated[
    int | None,
    typer.Option(
        "--batch-size",
        help="Latency column's batch size (with --device; default 1, else the smallest profiled).",
    ),
]

# the model and data a run names, overridden (profile, verify, export)
ModelOverrideOpt = Annotated[
    str | None, typer.Option(help="Model spec overriding the run's ('pkg.module:factory' or FILE.pt2).")
]
WeightsOverrideOpt = Annotated[Path | None, typer.Option(help="Checkpoint overriding the run's.")]
ModelPathOpt = Annotated[Path | None, typer.Option(help="Folder to import the model's module from.")]
DataOverrideOpt = Annotated[
    str | None, typer.Option(help="Data spec overriding the run's, to re-run a few recorded rows.")
]
StagesOpt = Annotated[
    str | None,
    typer.Option(help="Declare stages by hand: 'pkg.module:fn', fn(model) -> list of stage modules."),
]
InputShapeOpt = Annotated[str | None, typer.Option(help="Per-sample input shape overriding the run's, e.g. 3,224,224.")]
InputDtypeOpt = Annotated[str | None, typer.Option(help="Input dtype overriding the run's (float32).")]
AllowOtherModelOpt = Annotated[
    bool,
    typer.Option(
        "--allow-other-model",
        help="Use a model that is not the run's (other weights, or other logits on recorded rows); recorded. "
        "profile then also replaces latency timed on another model.",
    ),
]

# how a run is split and scored (solve, frontier)
ScoreOpt = Annotated[str, choice_option(Score, "Confidence score.")]
TemperatureOpt = Annotated[
    bool, typer.Option("--temperature/--no-temperature", help="Fit one temperature per exit by NLL first.")
]
HoldoutOpt = Annotated[
    float, typer.Option(help="Fraction held out (stratified) to report honest accuracy; 0 fits on all.")
]
SeedOpt = Annotated[int, typer.Option(help="Seed of the held-out split.")]
MethodOrDefaultOpt = Annotated[
    str | None, choice_option(Method, f"Threshold solver (default {DEFAULT_METHOD}).", show_default=False)
]


# Library parameters named otherwise than the verb's parameter that sets them (the only such table).
_PARAMETER_FLAGS: dict[str, str] = {
    "batch_sizes": "batch_size",  # profile/verify parse --batch-size 1,32 into batch_sizes
    "devices": "device",  # profile: --device, repeatable
    "data_spec": "data",  # collect_run
    "checkpoint_s": "checkpoint_every",  # collect_run
    "out_pdf": "out",  # build_report
    "path": "out",  # dyncal.artifacts.outputs: the output file or folder checked and written
    "search_path": "model_path",  # import_object/load_dataset: the folder code is imported from
    "stages_fn": "stages",  # build_stages: the function --stages names
    "stages_spec": "stages",  # verify_run, export_package, stages_function
}


def flag_of(ctx: typer.Context | None, name: str) -> str | None:
    """How the command line sets library parameter ``name``, from where ``ctx`` runs.

    The running verb's flag when it has one: its declaration is the mapping (its Python
    parameter ``max_drop`` is ``--max-drop``; :data:`_PARAMETER_FLAGS` names the few library
    parameters spelled otherwise). Else the command of the first verb that has it
    (``dyncal profile --threads``), so advice never names an option the running verb lacks;
    None when no verb sets it.
    """
    if ctx is None:
        return None
    name = _PARAMETER_FLAGS.get(name, name)
    own = _flag_in(ctx.command, name)
    if own is not None:
        return own
    verbs = getattr(ctx.find_root().command, "commands", {})
    for verb, command in verbs.items():
        flag = _flag_in(command, name)
        if flag is not None and flag.startswith("--"):
            return f"dyncal {verb} {flag}"
    return None


def _flag_in(command: Any, name: str) -> str | None:
    """The flag (or, for an argument, the metavar) of ``command``'s parameter ``name``."""
    for p in command.params:
        if p.name in (name, name + "_"):
            flags = [o for o in p.opts if o.startswith("--")]
            return flags[0] if flags else (p.name or name).upper()
    return None


class _FlagWarnings(logging.Handler):
    """Prints the library's warnings on stderr as Python's last-resort handler would, parameters shown as flags."""

    def __init__(self, ctx: typer.Context | None) -> None:
        super().__init__(logging.WARNING)
        self.ctx = ctx

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = render_params(record.getMessage(), lambda name: flag_of(self.ctx, name))
        except Exception:  # noqa: BLE001 - a malformed record must not end the verb
            self.handleError(record)
            return
        sys.stderr.write(message + "\n")


@contextlib.contextmanager
def user_errors(ctx: typer.Context | None = None) -> Iterator[None]:
    """Run a verb's body: a DyncalError becomes one line and exit status 1; warnings are printed; flags named.

    Both the error and the library's warnings name parameters by ``ctx``'s flags (:func:`flag_of`).
    What the body prints goes to stderr (a model that prints keeps ``--json`` output valid):
    verbs print their results after it.
    """
    library_log = logging.getLogger("dyncal")
    handler = _FlagWarnings(ctx)
    library_log.addHandler(handler)
    try:
        # the user's code (a model, a data set, a factory) may print: to stderr, never into stdout's --json
        with contextlib.redirect_stdout(sys.stderr):
            yield
    except DyncalError as e:
        typer.echo(f"error: {render_params(str(e), lambda name: flag_of(ctx, name))}", err=True)
        raise typer.Exit(code=1) from None
    finally:
        library_log.removeHandler(handler)


def echo_json(doc: Any) -> None:
    """Print one JSON document (NaN becomes null, as JSON has no NaN)."""
    typer.echo(json.dumps(json_ready(doc), indent=2))


def command_line(ctx: typer.Context) -> str:
    """The verb with its arguments and effective options, as a reproducible command (provenance).

    Built from the parsed parameters rather than ``sys.argv``, which belongs to the host
    process (a test runner, torchrun) and leaves out the defaults that shaped the result.
    """
    import shlex

    parts = ["dyncal", ctx.info_name or ""]
    for param in ctx.command.params:
        value = ctx.params.get(param.name or "")
        if value is None or value is False or param.name in ("json_",):
            continue
        values = value if isinstance(value, (list, tuple)) else [value]
        if param.param_type_name == "argument":
            parts += [shlex.quote(str(v)) for v in values]
            continue
        flag = max(param.opts, key=len)
        for v in values:
            parts += [flag] if v is True else [flag, shlex.quote(str(v))]
    return " ".join(parts)


def options(ctx: typer.Context, cls: type[T], **given: Any) -> T:
    """The options object ``cls`` of a library entry point, built once from this verb's parameters.

    A parameter of the verb sets the field of the same name (paths as strings); ``given``
    sets the fields the verb spells differently (parsed lists, other names).
    """
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    asked = {k: str(v) if isinstance(v, Path) else v for k, v in ctx.params.items() if k in names}
    return cls(**{**asked, **given})


def _parse_float_list(text: str | None, option: str) -> list[float] | None:
    if text is None:
        return None
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise DyncalError(f"{option} must be comma-separated numbers, e.g. 1.2e8,3.1e8; got {text!r}") from None


# ----------------------------------------------------------------- collect


@app.command()
def collect(
    ctx: typer.Context,
    model: Annotated[str, typer.Option(help="Model: 'pkg.module:factory' or a torch.export archive FILE.pt2.")],
    data: Annotated[
        str,
        typer.Option(help="Data: 'imagefolder:DIR', 'pkg.module:factory' (returns a Dataset) or FILE.npz."),
    ],
    out: Annotated[Path, typer.Option(help="Run directory to create.")],
    weights: Annotated[Path | None, typer.Option(help="Checkpoint loaded with torch.load(weights_only=True).")] = None,
    model_path: Annotated[
        Path | None, typer.Option(help="Folder to import the model's module from (else PYTHONPATH).")
    ] = None,
    batch_size: LoadBatchOpt = 64,
    workers: Annotated[int, typer.Option(help="DataLoader worker processes.")] = 0,
    limit: Annotated[int | None, typer.Option(help="Use only the first N samples.")] = None,
    device: DeviceOpt = "cpu",
    resize: Annotated[int, typer.Option(help="imagefolder: resize the short side to this.")] = 256,
    crop: Annotated[int, typer.Option(help="imagefolder: centre crop size.")] = 224,
    mean: Annotated[str, typer.Option(help="imagefolder: normalisation mean.")] = "0.485,0.456,0.406",
    std: Annotated[str, typer.Option(help="imagefolder: normalisation std.")] = "0.229,0.224,0.225",
    overwrite: OverwriteOpt = False,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume",
            help="Continue an interrupted collect (OUT.partial) where it stopped, after checking that model, "
            "weights, data and options match; starts afresh when there is nothing to continue.",
        ),
    ] = False,
    checkpoint_every: Annotated[
        float, typer.Option(help="Save progress for --resume at most every this many seconds (0: every batch).")
    ] = 2.0,
    quiet: QuietOpt = False,
) -> None:
    """Run a multi-exit model over a data set and store every exit's logits.

    Works under torchrun too: each process collects its share, rank 0 assembles the run.
    The run appears only once complete; a second writer of the same --out fails at once;
    a collect that was interrupted (kill -9 included) continues with --resume.

    Example: dyncal collect --model dyncal.demo:pretrained --data dyncal.demo:validation --out run
    """
    from dyncal.data import ImageTransform, load_dataset
    from dyncal.models import load_model
    from dyncal.verbs.collect import CollectOptions, collect_run

    with user_errors(ctx):
        collecting = options(ctx, CollectOptions, data_spec=data, checkpoint_s=checkpoint_every)  # checked first
        means = _parse_float_list(mean, "--mean") or []
        stds = _parse_float_list(std, "--std") or []
        transform = ImageTransform(resize=resize, crop=crop, mean=tuple(means), std=tuple(stds))
        dataset = load_dataset(data, transform=transform, search_path=model_path)
        loaded = load_model(model, weights=weights, model_path=model_path, device=device)
        partial = out.parent / (out.name + ".partial")  # `out` itself is checked by collect_run
        had_progress = (partial / "progress.0.json").is_file()
        with _progress(quiet, "collect") as bar:
            result = collect_run(
                loaded,
                dataset,
                out,
                collecting,
                progress=None if bar is None else functools.partial(bar, ""),
                image_transform=dataclasses.asdict(transform) if data.startswith("imagefolder:") else None,
                command=command_line(ctx),
            )
    if result is not None:
        if resume:
            what = f"continued the interrupted collect in '{partial}'" if had_progress else "nothing to resume"
            typer.echo(f"note: --resume: {what}", err=True)
        typer.echo(f"wrote {result.path}: N={result.n}, K={result.k}, C={result.c}", err=True)


@contextlib.contextmanager
def _progress(quiet: bool, verb: str) -> Iterator[Any]:
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


# ----------------------------------------------------------------- import


@app.command("import")
def import_(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(help=".npz with 'logits' (N,K,C) and 'labels' (N,).", show_default=False)],
    out: Annotated[Path, typer.Option(help="Run directory to create.")],
    macs: Annotated[
        str | None, typer.Option(help="Cumulative MACs per exit, comma-separated (e.g. 1.2e8,3.1e8).")
    ] = None,
    layout: Annotated[
        str, choice_option(Layout, "Array layout of 'logits': nkc, or knc as MSDNet-style code stores it.")
    ] = Layout.NKC,
    overwrite: OverwriteOpt = False,
) -> None:
    """Build a run from logits you already have, skipping collect.

    Example: dyncal import msdnet_logits.npz --layout knc --macs 6.86e6,1.4e7,2.1e7 --out run
    """
    from dyncal.artifacts.run import import_npz

    with user_errors(ctx):
        run = import_npz(file, out, macs=_parse_float_list(macs, "--macs"), layout=layout, overwrite=overwrite)
    typer.echo(f"wrote {run.path}: N={run.n}, K={run.k}, C={run.c}", err=True)


# ----------------------------------------------------------------- info


def info_document(run: Any) -> dict[str, Any]:
    """The ``dyncal info --json`` document of a run."""
    from dyncal.analysis.calibration import exit_stats

    stats = exit_stats(run.logits, run.labels)
    costs = run.costs
    exits = []
    for s in stats:
        i = s.exit - 1
        exits.append(
            {
                **s.to_dict(),
                "macs": None if costs is None or costs.macs is None else costs.macs[i],
                "latency_ms": {}
                if costs is None
                else {key: prof.exit_ms[i] for key, prof in sorted(costs.latency.items())},
            }
        )
    doc: dict[str, Any] = {"path": str(run.path), "n": run.n, "k": run.k, "c": run.c, "exits": exits}
    if costs is not None:
        doc["full_model_ms"] = {k: p.full_model_median_ms for k, p in sorted(costs.latency.items())}
        doc["decision_ms"] = {k: p.decision_median_ms for k, p in sorted(costs.latency.items())}
        doc["unsupported_ops"] = [u.to_dict() for u in costs.unsupported_ops]
    doc["provenance"] = run.provenance.to_dict()
    return doc


@app.command()
def info(ctx: typer.Context, run: RunArg, json_: JsonOpt = False) -> None:
    """Show a run: N, K, C and per exit accuracy, confidence, ECE, MACs and latency.

    Example: dyncal info run --json
    """
    from dyncal.artifacts.run import load_run

    with user_errors(ctx):
        doc = info_document(load_run(run))
    if json_:
        echo_json(doc)
        return
    from rich.console import Console
    from rich.table import Table

    lat_keys = sorted({k for e in doc["exits"] for k in e["latency_ms"]})
    table = Table(title=f"{doc['path']}  N={doc['n']}  K={doc['k']}  C={doc['c']}")
    for col in ("exit", "accuracy", "mean conf.", "ECE", "MACs (cum.)", *[f"ms {k}" for k in lat_keys]):
        table.add_column(col, justify="right")
    for e in doc["exits"]:
        macs = "-" if e["macs"] is None else f"{e['macs']:.4g}"
        table.add_row(
            str(e["exit"]),
            f"{100 * e['accuracy']:.2f}%",
            f"{e['mean_confidence']:.3f}",
            f"{e['ece']:.3f}",
            macs,
            *[f"{e['latency_ms'][k]:.3f}" for k in lat_keys],
        )
    Console().print(table)
    if doc.get("unsupported_ops"):
        ops = ", ".join(f"{u['op']}×{u['count']} (stage {u['stage']})" for u in doc["unsupported_ops"])
        typer.echo(f"ops fvcore could not count: {ops}")


# ----------------------------------------------------------------- the run's code


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
    from dyncal.artifacts.run import load_run
    from dyncal.run_model import run_model_source

    opened = load_run(run)
    source = run_model_source(opened, model=model, weights=weights, model_path=model_path)
    if source.from_run:
        typer.echo(f"note: loaded the model {run / 'run.json'} names: {source.describe()}", err=True)
    spec = opened.provenance.data
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


# ----------------------------------------------------------------- profile


MAX_BATCH_SIZE = 65536
"""Largest --batch-size profile and verify accept (a bigger batch is a typo, not a measurement)."""


def _parse_int_list(
    text: str | None, option: str, maximum: int | None = None, example: str = "1,32"
) -> list[int] | None:
    if text is None:
        return None
    items = [v.strip() for v in text.split(",")]
    if "" in items:
        raise DyncalError(f"{option} has an empty item in {text!r}; give comma-separated integers, e.g. {example}")
    try:
        values = [int(v) for v in items if len(v) < 20]
    except ValueError:
        raise DyncalError(f"{option} must be comma-separated integers, e.g. {example}; got {text[:40]!r}") from None
    if len(values) != len(items) or any(v < 1 or (maximum is not None and v > maximum) for v in values):
        bound = "" if maximum is None else f" up to {maximum}"
        raise DyncalError(f"{option} must be positive integers{bound}, e.g. {example}; got {text[:40]!r}")
    return values


@app.command()
def profile(
    ctx: typer.Context,
    run: RunArg,
    device: Annotated[
        list[str] | None,
        typer.Option("--device", help="Device to time on: cpu, cuda or cuda:N (repeat for several)."),
    ] = None,
    batch_size: TimedBatchesOpt = "1",
    threads: ThreadsOpt = None,
    model: ModelOverrideOpt = None,
    weights: WeightsOverrideOpt = None,
    model_path: ModelPathOpt = None,
    input_shape: InputShapeOpt = None,
    input_dtype: InputDtypeOpt = None,
    stages: StagesOpt = None,
    data: DataOverrideOpt = None,
    allow_other_model: AllowOtherModelOpt = False,
    check_rows: Annotated[
        int, typer.Option(help="Recorded rows re-run to check the model is the run's (0: its hash only).")
    ] = 8,
    macs_only: Annotated[bool, typer.Option("--macs-only", help="Count MACs; measure no latency.")] = False,
    repeats: Annotated[int, typer.Option(help="Timed replicates per stage.")] = 25,
    warmup: Annotated[int, typer.Option(help="Untimed calls before timing.")] = 5,
    json_: JsonOpt = False,
) -> None:
    """Per-exit cost of a run's model: stages from its graph, fvcore MACs, measured latency.

    The model is the one run.json names (said on stderr) unless --model is given, and must be
    the run's: its checkpoint's SHA-256 and a few recorded rows re-run are compared with the
    run (--allow-other-model to use another, recorded). It is exported and split into one
    stage per exit (stage k = what exit k needs beyond exits 1..k-1); the stages are checked
    to reproduce every exit's logits, counted with fvcore, and timed per device and batch
    size. Results go into the run's cost table.

    Example: dyncal profile run --device cpu --batch-size 1,32 --threads 4
    """
    from dyncal.verbs.profile import ProfileOptions, profile_run_full

    with user_errors(ctx):
        asked = options(
            ctx,
            ProfileOptions,
            devices=tuple(device or ["cpu"]),
            batch_sizes=tuple(_parse_int_list(batch_size, "--batch-size", MAX_BATCH_SIZE) or [1]),
            input_shape=_parse_int_list(input_shape, "--input-shape", example="3,224,224"),
            latency=not macs_only,
        )
        result = profile_run_full(run, options=asked)
        note_run_code(run, model=model, weights=weights, model_path=model_path, data=data, check_rows=check_rows)
    note_model_check(result.model_check)
    if result.replaced:
        typer.echo(
            f"note: replaced latency {', '.join(result.replaced)} timed on another model ({result.replaced_model})",
            err=True,
        )
    doc = {"path": str(run), **result.to_dict()}
    if json_:
        echo_json(doc)
        return
    from rich.console import Console
    from rich.table import Table

    keys = sorted(doc["latency"])
    table = Table(title=f"{doc['path']}  {doc['model']}  input {tuple(doc['input_shape'])}  stages: {doc['stages']}")
    for col in ("exit", "stage MACs", "MACs (cum.)", *[f"ms {k} (IQR)" for k in keys]):
        table.add_column(col, justify="right")
    for e in doc["exits"]:
        i = e["exit"] - 1
        table.add_row(
            str(e["exit"]),
            f"{e['stage_macs']:,}",
            f"{e['macs']:,}",
            *[f"{e['latency_ms'][k]:.3f} ({doc['latency'][k]['stage_iqr_ms'][i]:.3f})" for k in keys],
        )
    console = Console()
    console.print(table)
    for k in keys:
        lat = doc["latency"][k]
        noisy = lat["settings"].get("noisy") or {}
        note = f"; noisy (IQR > 10% of median): {', '.join(noisy)}" if noisy else ""
        typer.echo(
            f"{k}: full model {lat['full_model_ms']:.3f} ms, exit decision {lat['decision_ms']:.3f} ms, "
            f"{lat['hardware']}, threads {lat['threads']}, torch {lat['settings'].get('torch')}{note}"
        )
    if doc["unsupported_ops"]:
        ops = ", ".join(f"{u['op']}×{u['count']} (stage {u['stage']})" for u in doc["unsupported_ops"])
        typer.echo(f"ops fvcore could not count: {ops}")
    if not doc["can_drop_rows"]:
        typer.echo(f"early exit must run whole batches: {doc['drop_rows_reason']}")


# ----------------------------------------------------------------- solve / frontier

_RISK_HELP = (
    "Risk control (Learn then Test): the cheapest thresholds whose accuracy on new data is at most "
    "this fraction below the last exit's, with probability >= 1 - delta. Assumes calibration and "
    "deployment samples are exchangeable (i.i.d. from one distribution); under distribution shift "
    "the guarantee does not hold."
)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}%"


def _print_solve_summary(doc: dict[str, Any], asked_latency: str | None = None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    b = doc["budget"]
    asked = b.get("asked") or "(none: risk control)"
    console.print(
        f"[bold]{doc['method']}[/bold] thresholds, score {doc['score']}, budget {asked} "
        f"→ met {b['met_fraction']:.4f}x of the last exit ({b['unit']})"
    )
    if asked_latency is not None and b["unit"] != LatencyKey.parse(asked_latency).column:
        ms = doc.get("expected_ms", {}).get(asked_latency)
        console.print(
            f"--device/--batch-size: latency column {asked_latency}"
            + ("" if ms is None else f", expected {ms:.4g} ms per sample")
            + f"; the budget binds {b['unit']}, not latency"
        )
    ts = ", ".join("-" if t is None else f"{t:.4g}" for t in doc["thresholds"])
    console.print(f"thresholds: [{ts}]   temperatures: [{', '.join(f'{t:.3g}' for t in doc['temperatures'])}]")
    stuck = [j + 1 for j, v in enumerate(doc.get("temperature_at_bound") or []) if v]
    if stuck:
        console.print(
            f"warning: the fitted temperature of exit {', '.join(map(str, stuck))} stopped at the "
            "search bound (0.05 or 20); its confidence may be poorly calibrated"
        )
    split = doc.get("split", {})
    line = f"accuracy: calibration {_pct(doc['calibration_accuracy'])} (n={split.get('n_calibration')})"
    if doc.get("holdout_accuracy") is not None:
        lo, hi = doc["holdout_ci"]
        line += (
            f", held-out {_pct(doc['holdout_accuracy'])} [95% CI {_pct(lo)} – {_pct(hi)}] (n={split.get('n_holdout')})"
        )
    else:
        line += ", held-out: none (--holdout 0)"
    console.print(line)
    costs = []
    if doc.get("expected_macs") is not None:
        costs.append(f"{doc['expected_macs']:.4g} MACs")
    costs += [f"{ms:.4g} ms ({key})" for key, ms in doc.get("expected_ms", {}).items()]
    console.print(f"expected cost per sample: {', '.join(costs)} = {b['met_fraction']:.4f}x")
    console.print("exit shares: " + ", ".join(f"{j + 1}: {100 * s:.1f}%" for j, s in enumerate(doc["exit_shares"])))
    if doc.get("risk"):
        r = doc["risk"]
        console.print(
            f"risk control: drop vs last exit ≤ {r['max_drop']} with probability ≥ {1 - r['delta']:.3g} "
            f"({r['n_accepted']} of {r['n_candidates']} candidates accepted, {r['p_value_method']} p-values); "
            f"calibration drop {r.get('calibration_drop', float('nan')):+.4f}"
            + (f", held-out drop {r['holdout_drop']:+.4f}" if "holdout_drop" in r else "")
        )
    table = Table(title="each exit alone (static baselines)")
    keys = sorted({k for s in doc["static"] for k in s.get("ms", {})})
    for col in ("exit", "calibration acc.", "held-out acc.", "MACs", "fraction", *[f"ms {k}" for k in keys]):
        table.add_column(col, justify="right")
    for s in doc["static"]:
        table.add_row(
            str(s["exit"]),
            _pct(s["calibration_accuracy"]),
            _pct(s.get("holdout_accuracy")),
            "-" if s.get("macs") is None else f"{s['macs']:.4g}",
            f"{s['fraction']:.4f}x",
            *[f"{s['ms'][k]:.4g}" for k in keys],
        )
    console.print(table)


@app.command()
def solve(
    ctx: typer.Context,
    run: RunArg,
    out: Annotated[Path, out_option("thresholds.json")],
    budget: Annotated[
        str | None,
        typer.Option(
            help="Mean cost per sample: 0.6x (fraction of the last exit's cost), 1.2GMAC / 850MMAC, "
            "or 35ms (expected early-exit latency of a profiled --device/--batch-size)."
        ),
    ] = None,
    method: Annotated[
        str,
        choice_option(
            Method,
            "smoothed (default: optimal on calibrated expected accuracy, generalises best), "
            "optimal (exact coordinate/Lagrangian solver) or geometric (MSDNet's baseline).",
        ),
    ] = DEFAULT_METHOD,
    score: ScoreOpt = Score.MAXPROB,
    temperature: TemperatureOpt = False,
    holdout: HoldoutOpt = 0.5,
    seed: SeedOpt = 0,
    device: LatencyDeviceOpt = None,
    batch_size: LatencyBatchOpt = None,
    max_drop: Annotated[float | None, typer.Option(help=_RISK_HELP)] = None,
    delta: Annotated[float, typer.Option(help="Risk control: allowed probability of a drop above --max-drop.")] = 0.05,
    overwrite: OverwriteOpt = False,
    json_: JsonOpt = False,
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

    with user_errors(ctx), claim_output_file(out, overwrite=overwrite, kind="thresholds", protect=(run,)):
        loaded = load_run(run)
        asked_latency = _asked_latency(loaded, device, batch_size)
        result = solve_run(loaded, options=options(ctx, SolveOptions))
        doc = result.to_dict()
        write_output(out, thresholds_json(result))
    if json_:
        echo_json(doc)
        return
    _print_solve_summary(doc, asked_latency)
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


@app.command()
def frontier(
    ctx: typer.Context,
    run: RunArg,
    out: Annotated[Path, out_option("frontier.csv")],
    n_budgets: Annotated[int, typer.Option(help="Budgets from the first exit's cost to the last's.")] = 41,
    methods: Annotated[
        str, typer.Option(help="Comma-separated solvers (the default method is always added).")
    ] = "optimal,geometric",
    score: ScoreOpt = Score.MAXPROB,
    temperature: TemperatureOpt = False,
    holdout: HoldoutOpt = 0.5,
    seed: SeedOpt = 0,
    device: LatencyDeviceOpt = None,
    batch_size: LatencyBatchOpt = None,
    overwrite: OverwriteOpt = False,
    json_: JsonOpt = False,
) -> None:
    """Accuracy versus cost for a grid of budgets: each solver, the oracle and each exit alone.

    Writes a long CSV (one row per method and budget; fitted and held-out accuracy with a
    95% interval, expected cost in every unit, exit shares) that the report draws.

    Example: dyncal frontier run --out frontier.csv
    """
    from dyncal.analysis.frontier import compute_frontier, write_frontier_csv
    from dyncal.artifacts.outputs import claim_output_file, output_errors
    from dyncal.artifacts.run import load_run
    from dyncal.calibrate.options import FrontierOptions

    with user_errors(ctx), claim_output_file(out, overwrite=overwrite, kind="frontier", protect=(run,)):
        names = tuple(m.strip() for m in methods.split(",") if m.strip())
        df = compute_frontier(load_run(run), options(ctx, FrontierOptions, methods=names))
        with output_errors(out):
            write_frontier_csv(df, out)
    if json_:
        records = json.loads(df.to_json(orient="records", double_precision=15))
        echo_json({"path": str(out), "rows": records})
        return
    from rich.console import Console
    from rich.table import Table

    solved = df[~df["method"].isin(["static"])]
    which = "held-out" if holdout > 0 else "fitted"
    table = Table(title=f"frontier ({len(df)} rows → {out}): {which} accuracy by budget")
    names_shown = list(dict.fromkeys(solved["method"]))
    table.add_column("budget", justify="right")
    for name in names_shown:
        table.add_column(name, justify="right")
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
    Console().print(table)


# ----------------------------------------------------------------- verify


@app.command()
def verify(
    ctx: typer.Context,
    run: RunArg,
    thresholds: ThresholdsOpt,
    out: Annotated[
        Path | None, typer.Option(help="Write the result here (verify.json), for 'dyncal report --verify'.")
    ] = None,
    device: DeviceOpt = "cpu",
    batch_size: TimedBatchesOpt = "1",
    limit: Annotated[int | None, typer.Option(help="Replay only the first N rows of the run.")] = None,
    threads: ThreadsOpt = None,
    max_seconds: Annotated[
        float,
        typer.Option(
            help="Time bound of the timing, all batch sizes together; agreement still covers every sample.",
        ),
    ] = 10.0,
    repeats: Annotated[int, typer.Option(help="Pairs (early exit, plain model) timed per batch.")] = 5,
    model: ModelOverrideOpt = None,
    weights: WeightsOverrideOpt = None,
    model_path: ModelPathOpt = None,
    data: DataOverrideOpt = None,
    stages: StagesOpt = None,
    package: Annotated[
        Path | None,
        typer.Option(
            help="Replay a 'dyncal export' package instead of the model: measure what is shipped "
            "(it must come from this run and these thresholds)."
        ),
    ] = None,
    verify_key: Annotated[
        Path | None,
        typer.Option(
            help="Key file the --package was signed with (dyncal export --sign-key): refuse it unless its "
            "signature verifies."
        ),
    ] = None,
    allow_other_model: AllowOtherModelOpt = False,
    overwrite: OverwriteOpt = False,
    json_: JsonOpt = False,
) -> None:
    """Run a real early exit with the thresholds, timed in pairs with the plain model.

    The model's stages run one at a time; samples whose score clears the threshold leave and
    later stages see only the rest. Each batch is timed as pairs: the early exit and the
    plain model back to back, so load on the machine hits both alike and the speed-up is a
    measured ratio with an interval (timing and sampling noise). Reports agreement with
    the simulated exits and predictions, and measured vs predicted milliseconds per batch.

    Example: dyncal verify run --thresholds thresholds.json --batch-size 1,32 --out verify.json
    (or --package DIR from 'dyncal export', to time what ships)
    """
    from dyncal.artifacts.outputs import claim_output_file, output_errors
    from dyncal.artifacts.thresholds import read_thresholds
    from dyncal.verbs.verify import VerifyOptions, verify_run

    with user_errors(ctx), contextlib.ExitStack() as claimed:
        sizes = _parse_int_list(batch_size, "--batch-size", MAX_BATCH_SIZE) or [1]
        if out is not None:
            claimed.enter_context(claim_output_file(out, overwrite=overwrite, kind="verify", protect=(run, thresholds)))
        asked = options(ctx, VerifyOptions, batch_sizes=tuple(sizes))
        with _progress(json_, "verify") as progress:
            result = verify_run(run, read_thresholds(thresholds), asked, progress=progress)
        if out is not None:
            with output_errors(out):
                result.save(out)
        if package is None:
            note_run_code(run, model=model, weights=weights, model_path=model_path, data=data)
    check = result.settings.get("model_check") or {}
    if check.get("allowed"):
        typer.echo(f"note: --allow-other-model: used although {check.get('mismatch')} (recorded)", err=True)
    doc = result.to_dict()
    if json_:
        echo_json(doc)
        return
    _print_verify(doc, ctx)
    if out is not None:
        typer.echo(f"wrote {out}", err=True)


def _print_verify(doc: dict[str, Any], ctx: typer.Context) -> None:
    from rich.console import Console
    from rich.table import Table

    from dyncal.analysis.latency import NOISE_ADVICE, NOISE_IQR_FRACTION

    settings = doc["settings"]
    typer.echo(
        f"{doc['n']} samples on {doc['device']} ({doc['hardware']}), threads: {doc['threads']} "
        f"(from {settings.get('threads_from', '?')}): agreement with the simulation {100 * doc['agreement']:.2f}% "
        f"(exits {100 * doc['exit_agreement']:.2f}%); accuracy runtime {100 * doc['runtime_accuracy']:.2f}% "
        f"vs simulated {100 * doc['simulated_accuracy']:.2f}%"
    )
    table = Table(
        title="ms per batch: early exit and plain model timed in pairs",
        box=None,
        pad_edge=False,
        padding=(0, 1),
        collapse_padding=True,
    )
    for col in ("", "measured", "predicted", "meas/pred", "full model", "speed-up [95%]", "batches"):
        table.add_column(col, justify="right", no_wrap=True)
    coverage = settings.get("coverage", {})
    for t in doc["timings"]:
        pred = t["predicted_ms"]
        ratio = t["measured_over_predicted"]
        cov = coverage.get(t["key"], {})
        lo, hi = t["speedup_ci"]
        table.add_row(
            t["key"],
            f"{t['measured_ms']:.3f}",
            "-" if pred is None else f"{pred:.3f}",
            "-" if ratio is None else f"{ratio:.2f}",
            f"{t['full_model_ms']:.3f}",
            f"{t['speedup']:.2f}x [{lo:.2f}, {hi:.2f}]",
            f"{t['batches']}/{cov.get('batches', t['batches'])}",
        )
    Console().print(table)
    stopped = [k for k, c in coverage.items() if c.get("stopped_early")]
    if stopped:
        typer.echo(
            f"time bound {settings['max_seconds']:g} s: timed part of the batches at {', '.join(stopped)} "
            f"(agreement covers all {doc['n']} samples); raise --max-seconds to time more"
        )
    for t in doc["timings"]:
        if t["timing_spread"] > NOISE_IQR_FRACTION:
            typer.echo(
                f"warning: noisy timing at {t['key']}: the paired speed-up's spread (IQR) is "
                f"{100 * t['timing_spread']:.0f}% of its median (> {100 * NOISE_IQR_FRACTION:.0f}%); "
                f"{render_params(NOISE_ADVICE, lambda name: flag_of(ctx, name))}"
            )


# ----------------------------------------------------------------- export


@app.command("export")
def export_(
    ctx: typer.Context,
    run: RunArg,
    thresholds: ThresholdsOpt,
    out: Annotated[Path, typer.Option(help="Package directory to create.")],
    model: ModelOverrideOpt = None,
    weights: WeightsOverrideOpt = None,
    model_path: ModelPathOpt = None,
    stages: StagesOpt = None,
    input_shape: InputShapeOpt = None,
    input_dtype: InputDtypeOpt = None,
    sign_key: Annotated[
        Path | None,
        typer.Option(
            help="Sign the package with this secret key file (HMAC-SHA256 of its manifest); load it with "
            "load_early_exit(DIR, verify_key=KEYFILE) or verify --package DIR --verify-key KEYFILE."
        ),
    ] = None,
    overwrite: OverwriteOpt = False,
    json_: JsonOpt = False,
) -> None:
    """Write a self-contained early-exit package: stages as torch.export archives plus the exit rule.

    Serve it without the model's code: exits, preds = dyncal.load_early_exit(DIR)(x). The package is
    checked to reproduce every exit of the model before it is published.

    Example: dyncal export run --thresholds thresholds.json --out package
    """
    from dyncal.artifacts.thresholds import read_thresholds
    from dyncal.verbs.export import ExportOptions, export_package

    with user_errors(ctx):
        shape = _parse_int_list(input_shape, "--input-shape", example="3,224,224")
        asked = options(ctx, ExportOptions, input_shape=shape)
        result = export_package(run, read_thresholds(thresholds), out, asked, overwrite=overwrite)
    doc = result.to_dict()
    if json_:
        echo_json(doc)
        return
    typer.echo(
        f"wrote {doc['path']}: K={doc['k']} stages, {doc['size_bytes'] / 1e6:.2f} MB, input "
        f"(B, {', '.join(map(str, doc['input']['shape']))}) {doc['input']['dtype']}, decisions "
        f"{doc['decision_fingerprint'][:12]}, max |logit diff| vs the model "
        f"{max(doc['check']['max_abs_diff']):.2g}"
        + ("" if doc["signature"] is None else f", signed with key {doc['signature']['key_id']}"),
        err=True,
    )


# ----------------------------------------------------------------- demo


@app.command()
def demo(
    ctx: typer.Context,
    out: Annotated[Path, typer.Option(help="Folder for the run, thresholds, frontier and report.")] = Path(
        "dyncal-demo"
    ),
    budget: Annotated[str, typer.Option(help="Budget for the operating point.")] = "0.5x",
    max_drop: Annotated[
        float, typer.Option(help="Report criterion: accuracy drop vs the last exit at most this fraction.")
    ] = 0.01,
    min_speedup: Annotated[float, typer.Option(help="Report criterion: CPU batch-1 latency speed-up.")] = 2.0,
    overwrite: OverwriteOpt = False,
) -> None:
    """Run the whole pipeline on the embedded default: a 4-exit CNN on handwritten digits.

    collect → profile (CPU, batch 1 and 32) → solve → frontier → verify → report, all in OUT.
    Nothing is downloaded: the digits ship with scikit-learn, the weights with dyncal.

    Example: dyncal demo --out dyncal-demo
    """
    from dyncal.verbs.demo import run_demo

    def step(message: str) -> None:
        typer.echo(message, err=True)

    with user_errors(ctx):
        summary = run_demo(
            out, budget=budget, max_drop=max_drop, min_speedup=min_speedup, overwrite=overwrite, log=step
        )
    typer.echo(summary)


# ----------------------------------------------------------------- report / plot


def _print_report(doc: dict[str, Any]) -> None:
    """A short summary of a report for people (percentages here only)."""
    size_kb = doc["size_bytes"] / 1024
    typer.echo(f"wrote {doc['path']} ({len(doc['pages'])} pages, {size_kb:.0f} KB)")
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
    typer.echo(f"decision: {decision}")
    for c in doc["criteria"]:
        pct = c["name"] != "speedup"
        bounds = [c["value"]]
        for name in ("interval", "interval_sampling"):
            if c.get(name) is not None:
                bounds.append(c[name][0 if c["comparison"] == ">=" else 1])
        # enough decimals that the deciding bounds and the requirement print differently
        digits = 2
        scale = 100 if pct else 1
        while digits < 5 and any(
            b != c["required"] and round(b * scale, digits) == round(c["required"] * scale, digits) for b in bounds
        ):
            digits += 1

        def fmt(v: float, pct: bool = pct, digits: int = digits) -> str:
            return f"{100 * v:.{digits}f}%" if pct else f"{v:.{digits}f}x"

        iv = c["interval"]
        iv_txt = "" if iv is None else f" [{fmt(iv[0])}, {fmt(iv[1])}]"
        cost = ""
        if c.get("cost"):
            cost = f" ({c['cost']}" + (f", {c['source']}" if c.get("source") not in (None, "macs") else "") + ")"
        need = f"{c['comparison']} {fmt(c['required'])}"
        verdict = str(c.get("status") or ("pass" if c["passed"] else "fail")).upper()
        typer.echo(f"  {c['name']}{cost}: {fmt(c['value'])}{iv_txt} {need}: {verdict}")
        if verdict == "INCONCLUSIVE":
            s_iv = c.get("interval_sampling")
            spread = c.get("timing_spread")
            typer.echo(
                "    sampling noise alone: "
                + ("n/a" if s_iv is None else f"[{fmt(s_iv[0])}, {fmt(s_iv[1])}]")
                + ("" if spread is None else f"; timing spread {100 * spread:.0f}% of the median")
            )
    if doc["decision"] == "INCONCLUSIVE":
        from dyncal.reports.pdf import REMEDY

        typer.echo(f"  to decide: {REMEDY}")
    held = doc.get("held_out") or {}
    op = doc["operating_point"]
    frac = (op.get("budget") or {}).get("fraction")
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
    if "macs" in doc["speedup"]:
        typer.echo(f"  MACs: {doc['speedup']['macs']:.2f}x fewer than the full model")
    for key, e in doc.get("latency", {}).items():
        typer.echo(
            f"  {key}: early exit {_ms(e['early_exit_ms'])} ({e['source']}), full model {_ms(e['full_model_ms'])}: "
            f"{e['speedup']:.2f}x"
        )
    for a in doc.get("alternatives") or []:
        ci = a["accuracy_difference_ci"]
        cost = a["cost"]
        cost_txt = f"{a['cost_value']:.4g} MACs" if cost == "macs" else f"{_ms(a['cost_value'])} on {cost}"
        typer.echo(
            f"  vs {a['name']} ({a['kind']}, {'paired' if a['paired'] else 'unpaired'}): accuracy "
            f"{100 * a['accuracy']:.2f}%, {100 * a['accuracy_difference']:+.2f} pts"
            + ("" if ci is None else f" [{100 * ci[0]:+.2f}, {100 * ci[1]:+.2f}]")
            + f", {cost_txt}"
            + (": as accurate and cheaper" if a["dominates"] else "")
        )
    for note in doc.get("notes", []):
        typer.echo(f"note: {note}")


def _ms(v: float | None) -> str:
    from dyncal.reports.figures import format_ms

    return format_ms(v)


@app.command()
def report(
    ctx: typer.Context,
    run: RunArg,
    out: Annotated[Path, out_option("PDF file")],
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
    device: LatencyDeviceOpt = None,
    batch_size: LatencyBatchOpt = None,
    title: Annotated[str | None, typer.Option(help="Title on every page.")] = None,
    method: MethodOrDefaultOpt = None,
    temperature: Annotated[
        bool, typer.Option("--temperature", help="Fit one temperature per exit on the fitting half.")
    ] = False,
    holdout: Annotated[
        float | None, typer.Option(help="Fraction held out of fitting, to judge on (default 0.5).")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of the held-out split (default 0).")] = None,
    compare: CompareOpt = None,
    overwrite: OverwriteOpt = False,
    json_: JsonOpt = False,
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
    from dyncal.reports.pdf import ReportOptions, build_report

    with user_errors(ctx):
        asked = options(ctx, ReportOptions, command=command_line(ctx), compare=compared_runs(compare))
        result = build_report(run, out, asked, overwrite=overwrite)
    doc = result.to_dict()
    if json_:
        echo_json(doc)
    else:
        _print_report(doc)


@app.command()
def plot(
    ctx: typer.Context,
    run: RunArg,
    kind: Annotated[str, choice_option(FigureKind, "Which figure.")],
    out: Annotated[Path, out_option("Figure file (.png, .svg or .pdf)")],
    budget: Annotated[
        str | None,
        typer.Option(
            help="Operating point's budget (0.6x, 1.2GMAC, 35ms). Default: the cheapest budget whose fitted "
            "accuracy is within 1 percentage point of the last exit's (the legend says which)."
        ),
    ] = None,
    device: LatencyDeviceOpt = None,
    batch_size: LatencyBatchOpt = None,
    method: MethodOrDefaultOpt = None,
    dpi: Annotated[int, typer.Option(help="Resolution of .png output.")] = 150,
    compare: CompareOpt = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Export one figure of the report alone, with the operating point marked.

    Without --budget the operating point is the cheapest budget within 1 percentage point of
    the last exit's fitted accuracy; the figure's legend names the budget. With --compare the
    other runs are drawn as the report draws them (frontier and latency figures).

    Example: dyncal plot run --kind frontier --out frontier.svg --compare resnet18_run
    """
    from dyncal.artifacts.outputs import claim_output_file
    from dyncal.reports.pdf import ReportOptions, export_figure

    others = compared_runs(compare)
    with user_errors(ctx), claim_output_file(out, overwrite=overwrite, kind="figure", protect=(run, *others)):
        path = export_figure(run, kind, out, options(ctx, ReportOptions, compare=others), dpi=dpi)
    typer.echo(f"wrote {path}", err=True)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
