"""The verbs that build or measure a run: collect, import, info, profile, verify, export, demo."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
from pathlib import Path
from typing import Annotated, Any

import typer

from dyncal.choices import Layout
from dyncal.cli import params, render, render_verify

RunDirOpt = Annotated[Path, typer.Option(help="Run directory to create.")]


def collect(
    ctx: typer.Context,
    model: Annotated[str, typer.Option(help="Model: 'pkg.module:factory' or a torch.export archive FILE.pt2.")],
    data: Annotated[
        str,
        typer.Option(help="Data: 'imagefolder:DIR', 'pkg.module:factory' (returns a Dataset) or FILE.npz."),
    ],
    out: RunDirOpt,
    weights: Annotated[Path | None, typer.Option(help="Checkpoint loaded with torch.load(weights_only=True).")] = None,
    model_path: Annotated[
        Path | None, typer.Option(help="Folder to import the model's module from (else PYTHONPATH).")
    ] = None,
    batch_size: Annotated[
        int, typer.Option("--batch-size", help="Samples per forward while collecting (memory, not results).")
    ] = 64,
    workers: Annotated[int, typer.Option(help="DataLoader worker processes.")] = 0,
    limit: Annotated[int | None, typer.Option(help="Use only the first N samples.")] = None,
    device: params.DeviceOpt = "cpu",
    resize: Annotated[int, typer.Option(help="imagefolder: resize the short side to this.")] = 256,
    crop: Annotated[int, typer.Option(help="imagefolder: centre crop size.")] = 224,
    mean: Annotated[str, typer.Option(help="imagefolder: normalisation mean.")] = "0.485,0.456,0.406",
    std: Annotated[str, typer.Option(help="imagefolder: normalisation std.")] = "0.229,0.224,0.225",
    overwrite: params.OverwriteOpt = False,
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
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    perturb: Annotated[
        list[str] | None,
        typer.Option(
            help="Also collect the data corrupted: NAME:SEVERITY[,SEVERITY...] (gaussian_noise, blur, jpeg, "
            "contrast, brightness, shift), repeatable; each severity becomes its own run OUT-NAME-SEVERITY."
        ),
    ] = None,
    perturb_seed: Annotated[int, typer.Option(help="--perturb: seed of the corruptions' random draws.")] = 0,
    collate: Annotated[
        str | None,
        typer.Option(
            help="'pkg.module:fn' making a batch (inputs, labels) from a list of items, e.g. to pad sequences "
            "(dyncal.inputs:pad_collate); default: stack."
        ),
    ] = None,
    pixel_mean: Annotated[
        str | None,
        typer.Option(help="--perturb: normalisation mean of the inputs (pixel = x * std + mean; imagefolder: --mean)."),
    ] = None,
    pixel_std: Annotated[
        str | None, typer.Option(help="--perturb: normalisation std of the inputs (imagefolder: --std).")
    ] = None,
) -> None:
    """Run a multi-exit model over a data set and store every exit's logits.

    Works under torchrun too: each process collects its share, rank 0 assembles the run.
    The run appears only once complete; a second writer of the same --out fails at once;
    a collect that was interrupted (kill -9 included) continues with --resume.
    With --perturb, each corruption and severity is collected too, as its own run beside the
    clean one (OUT-gaussian_noise-0.25, ...), for 'dyncal evaluate' and 'report --robustness'.

    Example: dyncal collect --model dyncal.demo:pretrained --data dyncal.demo:validation --out run
    """
    from dyncal.data import ImageTransform, load_dataset
    from dyncal.models import load_model
    from dyncal.perturb import parse_perturbations
    from dyncal.verbs.collect import CollectOptions
    from dyncal.verbs.rollout import perturbed_run_path

    with params.user_errors(ctx):
        collecting = params.options(ctx, CollectOptions, data_spec=data, checkpoint_s=checkpoint_every)  # checked first
        if perturb:
            parse_perturbations(perturb)  # a malformed --perturb before any loading
        means = params.float_list(mean, "--mean") or []
        stds = params.float_list(std, "--std") or []
        transform = ImageTransform(resize=resize, crop=crop, mean=tuple(means), std=tuple(stds))
        dataset = load_dataset(data, transform=transform, search_path=model_path)
        stressed = _perturbed(dataset, data, perturb, perturb_seed, (pixel_mean, pixel_std), (mean, std))
        loaded = load_model(model, weights=weights, model_path=model_path, device=device)
        partial = out.parent / (out.name + ".partial")  # `out` itself is checked by collect_run
        had_progress = (partial / "progress.0.json").is_file()
        image_transform = dataclasses.asdict(transform) if data.startswith("imagefolder:") else None
        result = _collect_one(ctx, loaded, dataset, out, collecting, quiet, image_transform=image_transform)
    if result is not None:
        if resume:
            what = f"continued the interrupted collect in '{partial}'" if had_progress else "nothing to resume"
            typer.echo(f"note: --resume: {what}", err=True)
        typer.echo(f"wrote {result.path}: N={result.n}, K={result.k}, C={result.c}", err=True)
    with params.user_errors(ctx):
        for p, perturbed, spec in stressed:  # --perturb: each its own run OUT-NAME-SEVERITY
            target = perturbed_run_path(out, p)
            _collect_one(ctx, loaded, perturbed, target, dataclasses.replace(collecting, data_spec=spec), quiet, p)
            typer.echo(f"wrote {target}: {p}", err=True)


def _collect_one(
    ctx: typer.Context,
    loaded: Any,
    dataset: Any,
    out: Path,
    collecting: Any,
    quiet: bool,
    what: object = "",
    **extra: Any,
) -> Any:
    """Collect ``dataset`` into the run ``out`` behind a progress bar named ``collect [what]``."""
    from dyncal.verbs.collect import collect_run

    with render.progress(quiet, f"collect {what}".rstrip()) as bar:
        progress = None if bar is None else functools.partial(bar, "")
        return collect_run(
            loaded, dataset, out, collecting, progress=progress, command=params.command_line(ctx), **extra
        )


def _perturbed(
    dataset: Any,
    data: str,
    specs: list[str] | None,
    seed: int,
    pixels: tuple[str | None, str | None],
    normalised: tuple[str, str],
) -> list[Any]:
    """``collect --perturb``: one (perturbation, data set, data spec) per severity, checked on the first item.

    The pixels' normalisation is ``--pixel-mean/--pixel-std``, else imagefolder's ``--mean/--std``, else none.
    """
    if not specs:
        return []
    from dyncal.verbs.rollout import perturbed_datasets

    folder = data.startswith("imagefolder:")
    pixel: dict[str, float | list[float]] = {}
    for given, imagefolder, (name, unchanged) in zip(pixels, normalised, (("mean", 0.0), ("std", 1.0)), strict=True):
        text = given or (imagefolder if folder else str(unchanged))
        values = params.float_list(text, f"--pixel-{name}") or [unchanged]
        pixel[f"pixel_{name}"] = values[0] if len(values) == 1 else values
    return perturbed_datasets(dataset, data, specs, seed=seed, **pixel)


def import_(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(help=".npz with 'logits' (N,K,C) and 'labels' (N,).", show_default=False)],
    out: RunDirOpt,
    macs: Annotated[
        str | None, typer.Option(help="Cumulative MACs per exit, comma-separated (e.g. 1.2e8,3.1e8).")
    ] = None,
    layout: Annotated[
        str, params.choice_option(Layout, "Array layout of 'logits': nkc, or knc as MSDNet-style code stores it.")
    ] = Layout.NKC,
    overwrite: params.OverwriteOpt = False,
) -> None:
    """Build a run from logits you already have, skipping collect.

    Example: dyncal import msdnet_logits.npz --layout knc --macs 6.86e6,1.4e7,2.1e7 --out run
    """
    from dyncal.artifacts.run_import import import_npz

    with params.user_errors(ctx):
        run = import_npz(file, out, macs=params.float_list(macs, "--macs"), layout=layout, overwrite=overwrite)
    typer.echo(f"wrote {run.path}: N={run.n}, K={run.k}, C={run.c}", err=True)


def info(ctx: typer.Context, run: params.RunArg, json_: params.JsonOpt = False) -> None:
    """Show a run: N, K, C and per exit accuracy, confidence, ECE, MACs and latency.

    Example: dyncal info run --json
    """
    from dyncal.artifacts.run import load_run
    from dyncal.verbs.info import run_info

    with params.user_errors(ctx):
        doc = run_info(load_run(run))
    render.show(doc, json_, render.print_info)


@params.with_options(params.model_overrides, after="threads")
def profile(
    ctx: typer.Context,
    run: params.RunArg,
    device: Annotated[
        list[str] | None,
        typer.Option("--device", help="Device to time on: cpu, cuda or cuda:N (repeat for several)."),
    ] = None,
    batch_size: params.TimedBatchesOpt = "1",
    threads: Annotated[
        int,
        typer.Option(
            help="CPU threads pinned while timing. Default 1: steady figures on a busy or shared machine, "
            "where threads wait on each other; give your deployment's count to time that.",
        ),
    ] = 1,
    input_shape: params.InputShapeOpt = None,
    input_dtype: params.InputDtypeOpt = None,
    stages: params.StagesOpt = None,
    runtime: params.RuntimeOpt = None,
    data: params.DataOverrideOpt = None,
    allow_other_model: Annotated[
        bool,
        typer.Option(
            "--allow-other-model",
            help="Use a model that is not the run's (other weights, or other logits on recorded rows), and replace "
            "latency timed on another model; recorded.",
        ),
    ] = False,
    check_rows: Annotated[
        int, typer.Option(help="Recorded rows re-run to check the model is the run's (0: its hash only).")
    ] = 8,
    macs_only: Annotated[bool, typer.Option("--macs-only", help="Count MACs; measure no latency.")] = False,
    seq_len: Annotated[
        str | None,
        typer.Option(
            help="Models of several inputs: also MACs and latency at these sequence lengths (e.g. 32,128), "
            "the run's rows padded or cut to each."
        ),
    ] = None,
    repeats: Annotated[int, typer.Option(help="Timed replicates per stage.")] = 25,
    warmup: Annotated[int, typer.Option(help="Untimed calls before timing.")] = 5,
    json_: params.JsonOpt = False,
    **overrides: Any,
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

    with params.user_errors(ctx):
        asked = params.options(
            ctx,
            ProfileOptions,
            devices=tuple(device or ["cpu"]),
            batch_sizes=params.timed_batch_sizes(batch_size),
            input_shape=params.int_list(input_shape, "--input-shape", example="3,224,224"),
            latency=not macs_only,
            seq_lens=tuple(params.int_list(seq_len, "--seq-len", example="32,128") or ()),
        )
        result = profile_run_full(run, options=asked)
        render.note_run_code(run, data=data, check_rows=check_rows, **overrides)
    render.note_model_check(result.model_check)
    if result.replaced:
        typer.echo(
            f"note: replaced latency {', '.join(result.replaced)} timed on another model ({result.replaced_model})",
            err=True,
        )
    render.show({"path": str(run), **result.to_dict()}, json_, render.print_profile)


def _verify_modes(
    throughput: Annotated[
        bool,
        typer.Option(
            "--throughput",
            help="Also measure samples/s of per-batch early exit, the throughput mode (runner.map: continuing rows "
            "pooled into full batches) and the plain deployment over the same rows, at each --batch-size; says "
            "which to deploy.",
        ),
    ] = False,
    estimator: Annotated[
        str,
        typer.Option(
            help="Speed-up estimator: auto (the fastest pairs where the machine repeats them, else the ratio of "
            "means), min, mean or median-ratio; the one used is recorded."
        ),
    ] = "auto",
) -> None:
    """What verify measures beyond paired latency: the throughput modes, and the speed-up estimator."""


@params.with_options(_verify_modes, after="runtime")
@params.with_options(params.model_overrides, after="repeats")
def verify(
    ctx: typer.Context,
    run: params.RunArg,
    thresholds: params.ThresholdsOpt,
    out: Annotated[
        Path | None, typer.Option(help="Write the result here (verify.json), for 'dyncal report --verify'.")
    ] = None,
    device: params.DeviceOpt = "cpu",
    batch_size: params.TimedBatchesOpt = "1",
    limit: Annotated[int | None, typer.Option(help="Replay only the first N rows of the run.")] = None,
    threads: Annotated[
        int | None,
        typer.Option(help="CPU threads pinned while timing (default: those the run's profile timed with)."),
    ] = None,
    max_seconds: Annotated[
        float,
        typer.Option(
            help="Time bound of the timing in seconds, all batch sizes together; agreement covers every "
            "sample. A speed-up timed on too few samples is inconclusive.",
        ),
    ] = 60.0,
    repeats: Annotated[int, typer.Option(help="Pairs (early exit, plain model) timed per batch.")] = 5,
    data: params.DataOverrideOpt = None,
    stages: params.StagesOpt = None,
    runtime: params.RuntimeOpt = None,
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
    allow_other_model: Annotated[
        bool,
        typer.Option(
            "--allow-other-model",
            help="Use a model that is not the run's (other weights, or other logits on recorded rows); recorded.",
        ),
    ] = False,
    overwrite: params.OverwriteOpt = False,
    json_: params.JsonOpt = False,
    **overrides: Any,
) -> None:
    """Run a real early exit with the thresholds, timed in pairs with the plain model.

    The model's stages run one at a time; samples whose score clears the threshold leave and
    later stages see only the rest. Each batch is timed as pairs: the early exit and the
    plain model back to back, so load on the machine hits both alike and the speed-up is a
    measured ratio with an interval (timing and sampling noise). The plain model is the
    plain deployment: the stages and the last head only, no exit decision, same runtime.
    Reports agreement with the simulated exits and predictions, measured vs predicted
    milliseconds per batch, and the latency distribution per request at batch 1 (mean,
    std, p50..p99, max; fastest of the pairs and raw; by exit) with 95% intervals.

    With --throughput it also measures samples/s of per-batch early exit, the throughput mode
    (runner.map: rows that continue pooled into full batches) and the plain deployment over
    the same rows, and says which to deploy. --runtime says how the stages run (graphs: CUDA only).

    Example: dyncal verify run --thresholds thresholds.json --batch-size 1,32 --out verify.json
    (or --package DIR from 'dyncal export', to time what ships)
    """
    from dyncal.artifacts.outputs import claim_output_file, output_errors
    from dyncal.artifacts.thresholds import read_thresholds
    from dyncal.verbs.verify import VerifyOptions, verify_run

    with params.user_errors(ctx), contextlib.ExitStack() as claimed:
        sizes = params.timed_batch_sizes(batch_size)
        if out is not None:
            claimed.enter_context(claim_output_file(out, overwrite=overwrite, kind="verify", protect=(run, thresholds)))
        asked = params.options(ctx, VerifyOptions, batch_sizes=sizes)
        with render.progress(json_, "verify") as on_progress:
            result = verify_run(run, read_thresholds(thresholds), asked, progress=on_progress)
        if out is not None:
            with output_errors(out):
                result.save(out)
        if package is None:
            modes = inspect.signature(_verify_modes).parameters
            render.note_run_code(run, data=data, **{k: v for k, v in overrides.items() if k not in modes})
    check = result.settings.get("model_check") or {}
    if check.get("allowed"):
        typer.echo(f"note: --allow-other-model: used although {check.get('mismatch')} (recorded)", err=True)
    render.show(result.to_dict(), json_, functools.partial(render_verify.print_verify, ctx=ctx))
    if out is not None and not json_:
        typer.echo(f"wrote {out}", err=True)


@params.with_options(params.model_overrides, after="out")
def export_(
    ctx: typer.Context,
    run: params.RunArg,
    thresholds: params.ThresholdsOpt,
    out: Annotated[Path, typer.Option(help="Package directory to create.")],
    stages: params.StagesOpt = None,
    input_shape: params.InputShapeOpt = None,
    input_dtype: params.InputDtypeOpt = None,
    runtime: params.RuntimeOpt = None,
    sign_key: Annotated[
        Path | None,
        typer.Option(
            help="Sign the package with this secret key file (HMAC-SHA256 of its manifest); load it with "
            "load_early_exit(DIR, verify_key=KEYFILE) or verify --package DIR --verify-key KEYFILE."
        ),
    ] = None,
    overwrite: params.OverwriteOpt = False,
    json_: params.JsonOpt = False,
    **overrides: Any,
) -> None:
    """Write a self-contained early-exit package: stages as torch.export archives plus the exit rule.

    Serve it without the model's code: exits, preds = dyncal.load_early_exit(DIR)(x). The package is
    checked to reproduce every exit of the model before it is published.

    Example: dyncal export run --thresholds thresholds.json --out package
    """
    from dyncal.artifacts.thresholds import read_thresholds
    from dyncal.verbs.export import ExportOptions, export_package

    with params.user_errors(ctx):
        shape = params.int_list(input_shape, "--input-shape", example="3,224,224")
        asked = params.options(ctx, ExportOptions, input_shape=shape)
        result = export_package(run, read_thresholds(thresholds), out, asked, overwrite=overwrite)
    render.show(result.to_dict(), json_, render.print_export)


def demo(
    ctx: typer.Context,
    out: Annotated[Path, typer.Option(help="Folder for the run, thresholds, frontier and report.")] = Path(
        "dyncal-demo"
    ),
    budget: Annotated[str, typer.Option(help="Budget for the operating point.")] = "0.5x",
    max_drop: Annotated[
        float,
        typer.Option(
            help="Report criterion: accuracy drop vs the last exit at most this fraction (399 held-out digits "
            "resolve about 2 points)."
        ),
    ] = 0.02,
    min_speedup: Annotated[float, typer.Option(help="Report criterion: CPU batch-1 latency speed-up.")] = 2.0,
    overwrite: params.OverwriteOpt = False,
) -> None:
    """Run the whole pipeline on the embedded default: a 4-exit CNN on handwritten digits.

    collect → profile (CPU, batch 1 and 32) → solve → frontier → verify → report, all in OUT.
    Nothing is downloaded: the digits ship with scikit-learn, the weights with dyncal.

    Example: dyncal demo --out dyncal-demo
    """
    from dyncal.verbs.demo import run_demo

    step = functools.partial(typer.echo, err=True)
    with params.user_errors(ctx):
        summary = run_demo(
            out, budget=budget, max_drop=max_drop, min_speedup=min_speedup, overwrite=overwrite, log=step
        )
    typer.echo(summary)
