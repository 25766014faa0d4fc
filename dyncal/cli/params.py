"""The verbs' parameters: options declared once, text parsed into values, library names shown as flags.

A verb's Python parameter names equal the library's parameter names, so the options objects
are built from ``ctx.params`` (:func:`options`) and library messages naming a parameter
render as the running verb's flag (:func:`flag_of`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import logging
import shlex
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from dyncal.choices import DEFAULT_METHOD, Choice, Method, Score
from dyncal.constraints import CONSTRAINTS
from dyncal.errors import DyncalError, one_line, render_params

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])


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
DeviceOpt = Annotated[str, typer.Option(help="Device to run the model on: cpu, cuda or cuda:N.")]
TimedBatchesOpt = Annotated[
    str,
    typer.Option(
        "--batch-size",
        help="Batch sizes to time, comma-separated (e.g. 1,32): one latency column ms:DEVICE/bN each.",
    ),
]
RuntimeOpt = Annotated[
    str | None,
    typer.Option(
        metavar="[eager|frozen|compiled|graphs]",
        help="How the stages and the plain deployment run, both alike: eager, frozen (torch.jit.freeze + "
        "optimize_for_inference), compiled (torch.compile) or graphs (CUDA only: per-stage CUDA graphs at "
        "bucketed batch sizes); exits stay exact. Default: graphs on CUDA, else eager.",
        show_default=False,
    ),
]
DataOverrideOpt = Annotated[
    str | None, typer.Option(help="Data spec overriding the run's, to re-run a few recorded rows.")
]
StagesOpt = Annotated[
    str | None,
    typer.Option(help="Declare stages by hand: 'pkg.module:fn', fn(model) -> list of stage modules."),
]
InputShapeOpt = Annotated[str | None, typer.Option(help="Per-sample input shape overriding the run's, e.g. 3,224,224.")]
InputDtypeOpt = Annotated[str | None, typer.Option(help="Input dtype overriding the run's (float32).")]
MethodOrDefaultOpt = Annotated[
    str | None, choice_option(Method, f"Threshold solver (default {DEFAULT_METHOD}).", show_default=False)
]


# ----------------------------------------------------------------- option blocks
# Options several verbs take side by side, declared once as a signature; :func:`with_options`
# splices them into a verb, which reads them from ``ctx.params`` (:func:`options`) or ``**shared``.


def model_overrides(
    model: Annotated[
        str | None, typer.Option(help="Model spec overriding the run's ('pkg.module:factory' or FILE.pt2).")
    ] = None,
    weights: Annotated[Path | None, typer.Option(help="Checkpoint overriding the run's.")] = None,
    model_path: Annotated[Path | None, typer.Option(help="Folder to import the model's module from.")] = None,
) -> None:
    """The model a run names, overridden (profile, verify, export)."""


def run_split(
    score: Annotated[str, choice_option(Score, "Confidence score.")] = Score.MAXPROB,
    temperature: Annotated[
        bool, typer.Option("--temperature/--no-temperature", help="Fit one temperature per exit by NLL first.")
    ] = False,
    holdout: Annotated[
        float, typer.Option(help="Fraction held out (stratified) to report honest accuracy; 0 fits on all.")
    ] = 0.5,
    seed: Annotated[int, typer.Option(help="Seed of the held-out split.")] = 0,
) -> None:
    """How a run is split and scored (solve, frontier)."""


def latency_column(
    device: Annotated[
        str | None,
        typer.Option(
            help="Latency column's device (e.g. cpu), for ms budgets, latency speed-ups, and the budgets of a run "
            "without MACs; with --batch-size."
        ),
    ] = None,
    batch_size: Annotated[
        int | None,
        typer.Option(
            "--batch-size",
            help="Latency column's batch size (with --device; default 1, else the smallest profiled).",
        ),
    ] = None,
) -> None:
    """Where latency was measured (solve, frontier, report, plot)."""


def with_options(*blocks: Callable[..., None], after: str) -> Callable[[F], F]:
    """Give a verb the options of ``blocks``' signatures, listed after its parameter ``after``.

    The verb takes them as keyword arguments (``**shared``); typer reads the spliced
    signature, so ``--help`` lists them in that place.
    """
    spliced = [p for block in blocks for p in inspect.signature(block, eval_str=True).parameters.values()]

    def splice(verb: F) -> F:
        own = [p for p in inspect.signature(verb, eval_str=True).parameters.values() if p.kind is not p.VAR_KEYWORD]
        at = [p.name for p in own].index(after) + 1
        verb.__signature__ = inspect.Signature([*own[:at], *spliced, *own[at:]])  # type: ignore[attr-defined]
        return verb

    return splice


# ----------------------------------------------------------------- library names shown as flags

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
    "seq_lens": "seq_len",  # profile parses --seq-len 32,128 into seq_lens
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
    flags = ((verb, _flag_in(command, name)) for verb, command in verbs.items())
    return next((f"dyncal {verb} {flag}" for verb, flag in flags if flag and flag.startswith("--")), None)


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
        typer.echo(f"error: {one_line(render_params(str(e), lambda name: flag_of(ctx, name)))}", err=True)
        raise typer.Exit(code=1) from None
    finally:
        library_log.removeHandler(handler)


# ----------------------------------------------------------------- from parameters to values


def command_line(ctx: typer.Context) -> str:
    """The verb with the arguments and options the user gave, as a reproducible command (provenance).

    Built from the parsed parameters rather than ``sys.argv``, which belongs to the host
    process (a test runner, torchrun). Options left at their default are not shown: a
    recorded command holds what was typed (the settings that shaped the result are
    recorded beside it, e.g. in thresholds.json).
    """
    parts = ["dyncal", ctx.info_name or ""]
    for param in ctx.command.params:
        value = ctx.params.get(param.name or "")
        if value is None or value is False or param.name in ("json_",):
            continue
        source = ctx.get_parameter_source(param.name or "")
        if source is not None and source.name in ("DEFAULT", "DEFAULT_MAP"):
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


def compared_runs(compare: list[str] | None) -> tuple[str, ...]:
    """The runs of ``--compare``, given comma-separated, repeated, or both."""
    return tuple(part.strip() for item in compare or [] for part in item.split(",") if part.strip())


def float_list(text: str | None, option: str) -> list[float] | None:
    """The numbers of a comma-separated option (``--macs 1.2e8,3.1e8``); None when not given."""
    if text is None:
        return None
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise DyncalError(f"{option} must be comma-separated numbers, e.g. 1.2e8,3.1e8; got {text!r}") from None


def int_list(text: str | None, option: str, maximum: int | None = None, example: str = "1,32") -> list[int] | None:
    """The positive integers of a comma-separated option (``--batch-size 1,32``); None when not given."""
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


def timed_batch_sizes(text: str) -> tuple[int, ...]:
    """The batch sizes ``--batch-size`` asks profile and verify to time."""
    return tuple(int_list(text, "--batch-size", int(CONSTRAINTS["batch_size"].high or 0)) or [1])
