"""The ``dyncal`` command line: a thin face over the library.

Each verb parses options, calls the library, and prints. Library errors
(:class:`dyncal.errors.DyncalError`) become one line on stderr and exit status 1;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from dyncal.errors import DyncalError

app = typer.Typer(
    name="dyncal",
    help="Measure, calibrate and verify early-exit (multi-exit) classifiers.",
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_enable=False,
    add_completion=False,
    no_args_is_help=True,
)

# ----------------------------------------------------------------- shared options

JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document instead of tables.")]
OverwriteOpt = Annotated[
    bool, typer.Option("--overwrite", help="Replace an existing output (only once the new one is complete).")
]
RunArg = Annotated[Path, typer.Argument(help="A run directory (from collect or import).", show_default=False)]


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn a DyncalError into one line on stderr and exit status 1."""
    try:
        yield
    except DyncalError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(code=1) from None


def echo_json(doc: Any) -> None:
    """Print one JSON document (NaN becomes null, as JSON has no NaN)."""
    typer.echo(json.dumps(_json_safe(doc), indent=2))


def _json_safe(x: Any) -> Any:
    if isinstance(x, float) and x != x:  # NaN
        return None
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    return x


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
    model: Annotated[str, typer.Option(help="Model: 'pkg.module:factory' or a torch.export archive FILE.pt2.")],
    data: Annotated[
        str,
        typer.Option(help="Data: 'imagefolder:DIR', 'pkg.module:factory' (returns a Dataset) or FILE.npz."),
    ],
    out: Annotated[Path, typer.Option(help="Run directory to create.")],
    weights: Annotated[Optional[Path], typer.Option(help="Checkpoint loaded with torch.load(weights_only=True).")] = None,
    model_path: Annotated[
        Optional[Path], typer.Option(help="Folder to import the model's module from (else PYTHONPATH).")
    ] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Samples per forward.")] = 64,
    workers: Annotated[int, typer.Option(min=0, help="DataLoader worker processes.")] = 0,
    limit: Annotated[Optional[int], typer.Option(min=1, help="Use only the first N samples.")] = None,
    device: Annotated[str, typer.Option(help="cpu, cuda or cuda:N.")] = "cpu",
    resize: Annotated[int, typer.Option(help="imagefolder: resize the short side to this.")] = 256,
    crop: Annotated[int, typer.Option(help="imagefolder: centre crop size.")] = 224,
    mean: Annotated[str, typer.Option(help="imagefolder: normalisation mean.")] = "0.485,0.456,0.406",
    std: Annotated[str, typer.Option(help="imagefolder: normalisation std.")] = "0.229,0.224,0.225",
    overwrite: OverwriteOpt = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Run a multi-exit model over a data set and store every exit's logits.

    Works under torchrun too: each process collects its share, rank 0 assembles the run.

    Example: dyncal collect --model dyncal.demo:pretrained --data dyncal.demo:validation --out run
    """
    from dyncal.collect import collect_run
    from dyncal.data import ImageTransform, load_dataset
    from dyncal.models import load_model

    with user_errors():
        means = _parse_float_list(mean, "--mean") or []
        stds = _parse_float_list(std, "--std") or []
        dataset = load_dataset(
            data, transform=ImageTransform(resize=resize, crop=crop, mean=tuple(means), std=tuple(stds))
        )
        loaded = load_model(model, weights=weights, model_path=model_path, device=device)
        with _progress(quiet) as progress:
            result = collect_run(
                loaded,
                dataset,
                out,
                data_spec=data,
                batch_size=batch_size,
                workers=workers,
                limit=limit,
                device=device,
                overwrite=overwrite,
                progress=progress,
            )
    if result is not None:
        typer.echo(f"wrote {result.path}: N={result.n}, K={result.k}, C={result.c}", err=True)


@contextlib.contextmanager
def _progress(quiet: bool) -> Iterator[Any]:
    """A callback ``progress(done, total)`` drawing a rich progress bar on stderr."""
    if quiet or not sys.stderr.isatty():
        yield None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    columns = (
        TextColumn("collect"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=Console(stderr=True), transient=False) as bar:
        task = bar.add_task("collect", total=None, rate="")

        def update(done: int, total: int, items_per_s: float) -> None:
            bar.update(task, completed=done, total=total, rate=f"{items_per_s:,.0f} items/s")

        yield update


# ----------------------------------------------------------------- import


@app.command("import")
def import_(
    file: Annotated[Path, typer.Argument(help=".npz with 'logits' (N,K,C) and 'labels' (N,).", show_default=False)],
    out: Annotated[Path, typer.Option(help="Run directory to create.")],
    macs: Annotated[
        Optional[str], typer.Option(help="Cumulative MACs per exit, comma-separated (e.g. 1.2e8,3.1e8).")
    ] = None,
    layout: Annotated[
        str, typer.Option(help="Array layout of 'logits': nkc, or knc as MSDNet-style code stores it.")
    ] = "nkc",
    overwrite: OverwriteOpt = False,
) -> None:
    """Build a run from logits you already have, skipping collect.

    Example: dyncal import msdnet_logits.npz --layout knc --macs 6.86e6,1.4e7,2.1e7 --out run
    """
    from dyncal.run import import_npz

    with user_errors():
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
def info(run: RunArg, json_: JsonOpt = False) -> None:
    """Show a run: N, K, C and per exit accuracy, confidence, ECE, MACs and latency.

    Example: dyncal info run --json
    """
    from dyncal.run import load_run

    with user_errors():
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


# ----------------------------------------------------------------- profile


def _parse_int_list(text: str | None, option: str) -> list[int] | None:
    if text is None:
        return None
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise DyncalError(f"{option} must be comma-separated integers, e.g. 1,32; got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise DyncalError(f"{option} must be positive integers, e.g. 1,32; got {text!r}")
    return values


@app.command()
def profile(
    run: RunArg,
    device: Annotated[
        Optional[list[str]], typer.Option("--device", help="Device to time on: cpu, cuda or cuda:N (repeat for several).")
    ] = None,
    batch_size: Annotated[str, typer.Option(help="Batch sizes to time, comma-separated (e.g. 1,32).")] = "1",
    threads: Annotated[
        Optional[int], typer.Option(min=1, help="CPU threads pinned while timing (default: torch's current setting).")
    ] = None,
    model: Annotated[
        Optional[str], typer.Option(help="Model spec overriding the run's ('pkg.module:factory' or FILE.pt2).")
    ] = None,
    weights: Annotated[Optional[Path], typer.Option(help="Checkpoint overriding the run's.")] = None,
    model_path: Annotated[Optional[Path], typer.Option(help="Folder to import the model's module from.")] = None,
    input_shape: Annotated[
        Optional[str], typer.Option(help="Per-sample input shape overriding the run's, e.g. 3,224,224.")
    ] = None,
    input_dtype: Annotated[Optional[str], typer.Option(help="Input dtype overriding the run's (float32).")] = None,
    stages: Annotated[
        Optional[str],
        typer.Option(help="Declare stages by hand: 'pkg.module:fn', fn(model) -> list of stage modules."),
    ] = None,
    macs_only: Annotated[bool, typer.Option("--macs-only", help="Count MACs; measure no latency.")] = False,
    repeats: Annotated[int, typer.Option(min=3, help="Timed replicates per stage.")] = 25,
    warmup: Annotated[int, typer.Option(min=0, help="Untimed calls before timing.")] = 5,
    json_: JsonOpt = False,
) -> None:
    """Per-exit cost of a run's model: stages from its graph, fvcore MACs, measured latency.

    The model is exported and split into one stage per exit (stage k = what exit k needs
    beyond exits 1..k-1); the stages are checked to reproduce every exit's logits, counted
    with fvcore, and timed per device and batch size. Results go into the run's cost table.

    Example: dyncal profile run --device cpu --batch-size 1,32 --threads 4
    """
    from dyncal.profile import ProfileOptions, profile_run_full

    with user_errors():
        shape = _parse_int_list(input_shape, "--input-shape")
        options = ProfileOptions(
            devices=tuple(device or ["cpu"]),
            batch_sizes=tuple(_parse_int_list(batch_size, "--batch-size") or [1]),
            threads=threads,
            model=model,
            weights=None if weights is None else str(weights),
            model_path=None if model_path is None else str(model_path),
            input_shape=None if shape is None else tuple(shape),
            input_dtype=input_dtype,
            stages=stages,
            latency=not macs_only,
            repeats=repeats,
            warmup=warmup,
        )
        result = profile_run_full(run, options=options)
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


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
