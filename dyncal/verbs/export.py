"""``dyncal export``: a self-contained early-exit package of a run's model with its thresholds.

The package's files are described in :mod:`dyncal.artifacts.package`;
:func:`dyncal.analysis.package_runner.load_early_exit` serves it. The package is built in
``OUT.partial``, loaded back the way users load it, proven to reproduce every exit of the
model, and only then published as ``OUT``.
"""

from __future__ import annotations

import datetime as _dt
import errno
import hashlib
import io
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.export import Dim

from dyncal.analysis.graphs import refuse_verify_only_runtime, select_runtime, with_runtime
from dyncal.analysis.package_runner import PackageRunner, open_package
from dyncal.analysis.partition import quiet_export_logs
from dyncal.analysis.stages import (
    EXAMPLE_BATCH,
    Stages,
    checked_stages,
    example_input,
    stages_function,
    verify_stages,
)
from dyncal.archives import check_archive
from dyncal.artifacts import package
from dyncal.artifacts.atomic import atomic_write_bytes, atomic_write_text
from dyncal.artifacts.lock import OutputLock
from dyncal.artifacts.outputs import check_out
from dyncal.artifacts.ownership import discard_built_folder, refuse_foreign, remove_owned_folder
from dyncal.artifacts.run import Run, load_run
from dyncal.artifacts.run_document import library_versions
from dyncal.artifacts.run_writer import publish_dir
from dyncal.artifacts.rundir import PARTIAL_SUFFIX
from dyncal.artifacts.thresholds import ThresholdsDocument, check_thresholds_for_run
from dyncal.errors import DyncalError, ProfileError, describe
from dyncal.models import torch_dtype
from dyncal.options import options_from
from dyncal.run_model import ModelOverrides, RunModel, open_run_model
from dyncal.verbs.profile_inputs import RunBatches, fit_length

__all__ = ["ExportResult", "ExportOptions", "export_package"]

log = logging.getLogger(__name__)

_CHECK_BATCHES = (1, 4)  # the written package is proven against the model at these batch sizes
_GRAPHS_CHECK_BATCHES = (1, 3, 4)  # and, under `runtime` graphs, against itself eagerly (3: padded to 4's bucket)


@dataclass(frozen=True)
class ExportResult:
    """What ``dyncal export`` wrote.

    Attributes:
        path: The package directory.
        manifest: Its manifest.
        manifest_sha256: SHA-256 of ``manifest.json``.
        size_bytes: Total size of the package's files.
        seconds: Wall-clock time of the export.
        key_id: Id of the key that signed it (``sign_key``), or None when unsigned.
        graphs_check: Under ``runtime`` graphs, how the package was proven to replay from CUDA
            graphs as it runs eagerly (:func:`_prove_graphs`); else None.
    """

    path: Path
    manifest: package.PackageManifest
    manifest_sha256: str
    size_bytes: int
    seconds: float
    key_id: str | None = None
    graphs_check: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """The ``dyncal export --json`` document: the manifest plus where, how big and how signed."""
        signature = None if self.key_id is None else {"algorithm": package.SIGNATURE_ALGORITHM, "key_id": self.key_id}
        return {
            "path": str(self.path),
            "manifest_sha256": self.manifest_sha256,
            "size_bytes": self.size_bytes,
            "seconds": self.seconds,
            "signature": signature,
            **self.manifest.to_dict(),
            **({} if self.graphs_check is None else {"graphs_check": self.graphs_check}),
        }


def _check_out(out: Path, partial: Path, overwrite: bool) -> None:
    """Refuse an output that exists (unless ``overwrite`` and all a package's), lies in a run, or has no folder."""
    check_out(
        out,
        overwrite=overwrite,
        what="package",
        is_ours=package.is_package_dir,
        foreign=package.foreign_in_package,
        error=DyncalError,
    )
    if os.path.lexists(partial):
        refuse_foreign(partial, package.partial_export_entry, action="remove", error=DyncalError)
        if not overwrite:
            raise DyncalError(
                f"'{partial}' exists: an earlier export was interrupted or is still running; "
                "pass `overwrite` to discard it"
            )


def _write_error(out: Path, e: OSError) -> DyncalError:
    """One line for a package that could not be written (a full disk, a file too large, no permission)."""
    full = e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
    advice = "free some space or choose another `out`" if full else "choose another `out`"
    return DyncalError(f"cannot write the package '{out}' ({e.strerror or e}); nothing was published: {advice}")


def _export_stages(stages: Stages, example: Any) -> list[tuple[torch.export.ExportedProgram, tuple[int | None, ...]]]:
    """Each stage as an exported program with a dynamic batch (and sequence length), and the batch dims it hands on."""
    out = []
    carry: tuple[Any, ...] = stages.flat_inputs(example)
    dims: tuple[int | None, ...] = (0,) * len(carry)
    lengths = _length_dims(stages)
    for i, module in enumerate(stages.modules):
        for v in carry:
            if not isinstance(v, torch.Tensor):
                raise ProfileError(
                    f"stage {i} hands stage {i + 1} a {type(v).__name__}, not a tensor; a package carries tensors "
                    "only (declare stages with `stages_spec` that pass tensors)"
                )
        batch = Dim("batch", min=1)
        shapes = tuple(
            None if d is None and not lengths(i, j) else {**lengths(i, j), **({} if d is None else {d: batch})}
            for j, d in enumerate(dims)
        )
        try:
            with quiet_export_logs():
                program = torch.export.export(module, carry, dynamic_shapes=shapes, strict=False)
        except Exception as e:  # noqa: BLE001 - export raises many types
            log.debug("exporting stage %d failed", i + 1, exc_info=True)
            raise ProfileError(
                f"cannot export stage {i + 1} with a dynamic batch dimension ({describe(e)}); the package needs "
                "stages that run at any batch size"
            ) from e
        with torch.no_grad():
            outs = module(*carry)
        carry = tuple(outs[1:])
        if i == stages.k - 1:
            dims = ()
        elif stages.batch_dims is not None:
            dims = stages.batch_dims[i]
        else:  # hand-declared stages carry batch-major tensors
            dims = tuple(0 if isinstance(t, torch.Tensor) and t.ndim > 0 else None for t in carry)
        out.append((program, dims))  # the batch dims this stage hands on
    return out


def _length_dims(stages: Stages) -> Callable[[int, int], dict[int, Any]]:
    """``dims(i, j)``: the dynamic dimensions besides the batch (a sequence length) of value ``j`` stage ``i`` receives.

    Exported stages know them from the graph (:attr:`Stages.dim_symbols`): one ``Dim`` per
    symbol, shared by every value that has it. Stages declared by hand for a model of several
    inputs: the inputs' dynamic dimensions (one shared length); their carry keeps the batch only.
    """
    sig, symbols = stages.inputs, stages.dim_symbols
    if symbols is None:
        first = [] if sig is None else [{d + 1: _LENGTH for d in s.dynamic} for s in sig.inputs]
        return lambda i, j: first[j] if i == 0 and j < len(first) else {}
    batch = symbols[0][0].get(0) if symbols and symbols[0] else None
    named: dict[str, Any] = {}
    most = _largest_sizes(stages.modules)
    table = [
        [
            {
                d: named.setdefault(name, Dim(f"length{len(named)}", min=1, max=most.get(name)))
                for d, name in syms.items()
                if name != batch
            }
            for syms in values
        ]
        for values in symbols
    ]
    return lambda i, j: table[i][j] if i < len(table) and j < len(table[i]) else {}


_LENGTH = Dim("length", min=1)


def _with_longest(opened: RunModel, stages: Stages) -> RunModel:
    """The run's model with each input's proven longest length (the manifest records it, the runner checks it)."""
    sig, symbols = opened.inputs, stages.dim_symbols
    if opened.single_input or sig is None or not symbols:
        return opened
    most = _largest_sizes(stages.modules)
    specs = []
    for spec, dims in zip(sig.inputs, symbols[0], strict=False):
        bounds = [most[name] for d, name in dims.items() if d - 1 in spec.dynamic and name in most]
        specs.append(replace(spec, longest=min(bounds)) if bounds else spec)
    specs += sig.inputs[len(specs) :]
    return replace(opened, inputs=replace(sig, inputs=tuple(specs)))


def _largest_sizes(modules: Sequence[nn.Module]) -> dict[str, int]:
    """The upper bound the model's export proved for each symbolic size its stages receive, where it has one.

    A model that slices a table by the sequence length (position embeddings of 512 rows)
    runs only up to that length; exporting a stage again must keep the bound or export
    refuses the unbounded dimension.
    """
    most: dict[str, int] = {}
    for module in modules:
        nodes = module.graph.nodes if isinstance(module, torch.fx.GraphModule) else ()
        for node in nodes:
            val = node.meta.get("val") if node.op == "placeholder" else None
            for size in val.shape if isinstance(val, torch.Tensor) else ():
                expr = size.node.expr if isinstance(size, torch.SymInt) else None
                if expr is None or not getattr(expr, "is_Symbol", False):
                    continue
                upper = size.node.shape_env.var_to_range[expr].upper
                if getattr(upper, "is_Integer", False) or type(upper) is int:
                    most[str(expr)] = int(upper)
    return most


def _stages_for(opened: RunModel, example: Any, probe: Any, stages_spec: str | None) -> Stages:
    """The model's stages, proven on ``probe`` and able to let rows leave a batch."""
    stages_fn = stages_function(stages_spec, opened.model_path)
    signature = None if opened.single_input else opened.inputs
    stages, _ = checked_stages(opened.module, probe, example=example, stages_fn=stages_fn, signature=signature)
    if not stages.dynamic_batch or not stages.can_drop_rows:
        raise ProfileError(
            f"samples cannot leave this model's batch early ({stages.drop_rows_reason}); an early-exit package "
            "needs stages that do: declare them with `stages_spec` or fix the model"
        )
    return stages


def _prove(model: nn.Module, runner: PackageRunner, batches: Callable[[int], Any]) -> dict[str, Any]:
    """The loaded package reproduces every exit of the model at batch sizes 1 and 4, rows leaving included.

    ``batches(b)`` gives the inputs (a model of several inputs: real rows of the run, and at
    batch 4 a sequence length longer than any the export saw).
    """
    diffs = [0.0] * runner.k
    for b in _CHECK_BATCHES:
        x = batches(b)
        try:
            check = verify_stages(model, runner.stages, x)
        except ProfileError as e:
            raise ProfileError(f"the exported package does not reproduce the model at batch size {b}: {e}") from e
        if not runner.stages.can_drop_rows:
            raise ProfileError(f"the exported package cannot let rows leave a batch: {runner.stages.drop_rows_reason}")
        diffs = [max(a, d) for a, d in zip(diffs, check.max_abs_diff, strict=True)]
    return {"batch_sizes": list(_CHECK_BATCHES), "max_abs_diff": diffs, "rows_can_leave": True}


def _prove_graphs(path: Path, shape: Sequence[int], dtype: torch.dtype) -> dict[str, Any]:
    """Load the package at ``path`` on the GPU and check it gives the same exits and predictions under graphs.

    The package's own thresholds decide who leaves; the eager and the graph-replayed runner
    must answer every row alike at each of ``_GRAPHS_CHECK_BATCHES`` (a padded bucket included).

    Raises:
        ProfileError: The stages cannot be captured, or the answers differ.
    """
    eager = open_package(path, "cuda")
    graphed = with_runtime(eager, "graphs", max_batch_size=max(_GRAPHS_CHECK_BATCHES))
    for b in _GRAPHS_CHECK_BATCHES:
        x = example_input(shape, dtype, b, seed=2, device=eager.device)
        e0, p0 = eager(x)
        e1, p1 = graphed(x)
        if not (torch.equal(e0, e1) and torch.equal(p0, p1)):
            raise ProfileError(
                f"the package answers differently under `runtime` graphs at batch size {b} than eagerly; "
                "export with `runtime` eager"
            )
    info = graphed.stages.info.to_dict()  # type: ignore[attr-defined]
    return {"runtime": "graphs", "batch_sizes": list(_GRAPHS_CHECK_BATCHES), "capture": info}


def _batches(run: Run, opened: RunModel) -> Callable[[int], Any]:
    """``batches(b)``: random inputs of the model's shape (one tensor), else ``b`` real rows of the run's data."""
    if opened.single_input:
        shape, dtype = opened.input_shape, torch_dtype(opened.input_dtype)
        return lambda b: example_input(shape, dtype, b, seed=1)
    assert opened.inputs is not None
    rows = RunBatches(run, opened.inputs, data=None, search_path=opened.model_path, seed=1)
    return lambda b: rows(b, torch.device("cpu"))


def _proof_batches(opened: RunModel, batches: Callable[[int], Any]) -> Callable[[int], Any]:
    """The proof's inputs: at batch 4 a model of several inputs gets a sequence length the export never saw."""
    sig = opened.inputs
    if opened.single_input or sig is None or not sig.has_dynamic:
        return batches
    unseen = max(s.shape[d] for s in sig.inputs for d in s.dynamic) + 3
    unseen = min([unseen, *(s.longest for s in sig.inputs if s.longest is not None)])
    return lambda b: batches(b) if b == 1 else fit_length(batches(b), sig, unseen)


@dataclass(frozen=True, kw_only=True)
class ExportOptions(ModelOverrides):
    """Which model ``dyncal export`` packages (:class:`~dyncal.run_model.ModelOverrides`), and how it is signed.

    Attributes:
        sign_key: A key file (at least :data:`MIN_KEY_BYTES` bytes, e.g. 64 hex digits) to
            sign the package with: ``signature.json`` holds an HMAC-SHA256 of the manifest,
            checked by ``load_early_exit(DIR, verify_key=...)``. None: unsigned.
        runtime: ``graphs`` also proves that the package replays from per-stage CUDA graphs
            exactly as it runs eagerly (needs CUDA); ``eager`` or None: no such check.

    Example:
        >>> ExportOptions(input_shape=[3, 8, 8]).input_shape
        (3, 8, 8)
    """

    sign_key: str | None = None
    runtime: str | None = None

    def __post_init__(self) -> None:
        """Refuse ``runtime`` graphs on a machine without CUDA before anything is exported."""
        super().__post_init__()
        refuse_verify_only_runtime(self.runtime, "export")
        select_runtime(self.runtime, "cuda" if self.runtime == "graphs" else "cpu")  # None is eager: nothing to refuse


def export_package(
    run_path: str | os.PathLike[str],
    thresholds: ThresholdsDocument,
    out: str | os.PathLike[str],
    options: ExportOptions | None = None,
    *,
    overwrite: bool = False,
    **fields: Any,
) -> ExportResult:
    """Write a self-contained early-exit package of a run's model with its thresholds.

    The model (from the run's provenance unless overridden) is split into stages, each
    stage is exported with :func:`torch.export.export` and a dynamic batch dimension, and
    the package is built in ``OUT.partial``, loaded back the way users load it, proven to
    reproduce every exit of the model (batch sizes 1 and 4, rows leaving between stages),
    and only then renamed to ``OUT``.

    Args:
        run_path: A complete run with K >= 2 exits.
        thresholds: Solved on this run (:func:`~dyncal.artifacts.thresholds.read_thresholds`).
        out: The package directory to create.
        overwrite: Replace an existing package at ``out`` (never anything else).
        options: Which model to package and the key to sign it with (:class:`ExportOptions`;
            default: the run's model, unsigned).
        **fields: The fields of :class:`ExportOptions` as keywords instead of ``options``.

    Returns:
        Where the package is, its manifest and size.

    Raises:
        DyncalError: Thresholds of another run, a static run, an existing ``out``, weights
            that are not the run's, a model whose stages cannot be exported with a dynamic
            batch or cannot drop rows, or a package that does not reproduce the model.

    Example::

        th = dyncal.artifacts.thresholds.read_thresholds("thresholds.json")
        export_package("run", th, "pkg")          # then dyncal.load_early_exit("pkg")
    """
    opts = options_from(ExportOptions, options, fields, "export")
    t0 = time.perf_counter()
    run = load_run(run_path)
    check_thresholds_for_run(thresholds, run)
    if run.k < 2:
        raise DyncalError(
            f"run '{run.path}' has K=1 exit (a static model): there is no early exit to export; compare it with "
            "an early-exit run in 'dyncal report --compare'"
        )
    package.check_exit_rule(
        thresholds.score, thresholds.temperatures, thresholds.thresholds, run.k, what="the thresholds"
    )
    out = Path(out)
    partial = out.parent / (out.name + PARTIAL_SUFFIX)  # `out` itself is checked by _check_out
    _check_out(out, partial, overwrite)  # before the lock file is made: never inside a run
    secret = None if opts.sign_key is None else package.read_key(opts.sign_key, "sign_key")
    with OutputLock(out, error=DyncalError):
        _check_out(out, partial, overwrite)  # again, now that no other export can change it
        return _write_package(run, thresholds, opts, out, partial, t0, secret)


def _write_package(
    run: Run,
    thresholds: ThresholdsDocument,
    opts: ExportOptions,
    out: Path,
    partial: Path,
    t0: float,
    secret: bytes | None,
) -> ExportResult:
    """Export the model's stages, build the package in ``partial``, prove it and publish it as ``out``."""
    # the run's model, checked by hash and by re-running recorded rows: a package ships the model it measured
    opened = open_run_model(run, opts, probe=4, other_model_allowed=False)
    shape, dtype = opened.input_shape, torch_dtype(opened.input_dtype or "float32")
    batches = _batches(run, opened)
    stages = _stages_for(opened, batches(EXAMPLE_BATCH), batches(4), opts.stages)
    exported = _export_stages(stages, batches(EXAMPLE_BATCH))
    opened = _with_longest(opened, stages)
    try:
        if os.path.lexists(partial):  # an interrupted export's, checked under the lock
            remove_owned_folder(partial, package.partial_export_entry, action="remove", error=DyncalError)
        partial.mkdir()
    except OSError as e:
        raise _write_error(out, e) from e
    try:
        manifest = _manifest(run, thresholds, opened, stages.source, *_write_stages(partial, exported))
        manifest, text = _write_manifest(partial, manifest, opened.module, secret, _proof_batches(opened, batches))
        graphs_check = None if opts.runtime != "graphs" else _prove_graphs(partial, shape, dtype)
        size = sum(p.stat().st_size for p in partial.iterdir() if p.is_file())
        publish_dir(partial, out, foreign=package.foreign_in_package, error=DyncalError)
    except BaseException as e:
        discard_built_folder(partial, package.partial_export_entry)
        if isinstance(e, OSError):
            raise _write_error(out, e) from e
        raise
    return ExportResult(
        path=out,
        manifest=manifest,
        manifest_sha256=hashlib.sha256(text.encode("utf-8")).hexdigest(),
        size_bytes=size,
        seconds=time.perf_counter() - t0,
        key_id=None if secret is None else package.key_id(secret),
        graphs_check=graphs_check,
    )


def _write_stages(
    partial: Path, exported: Sequence[tuple[torch.export.ExportedProgram, tuple[int | None, ...]]]
) -> tuple[dict[str, str], tuple[package.PackageStage, ...]]:
    """Save every stage's archive in ``partial``, checked as a loader checks it; their SHA-256 and entries."""
    files: dict[str, str] = {}
    stage_docs = []
    for i, (program, carry_dims) in enumerate(exported):
        name = f"stage_{i + 1}.pt2"
        buf = io.BytesIO()
        torch.export.save(program, buf)
        data = buf.getvalue()
        check_archive(data, name)
        atomic_write_bytes(partial / name, data)
        files[name] = hashlib.sha256(data).hexdigest()
        stage_docs.append(package.PackageStage(file=name, carry_batch_dims=carry_dims))
    return files, tuple(stage_docs)


def _manifest(
    run: Run,
    thresholds: ThresholdsDocument,
    opened: RunModel,
    stages_source: str,
    files: dict[str, str],
    stages: tuple[package.PackageStage, ...],
) -> package.PackageManifest:
    """The manifest of the package: its exit rule, stage files, and the run, model and thresholds it is bound to."""
    th = thresholds.to_dict()
    first = None if opened.single_input or opened.inputs is None else opened.inputs.inputs[0]
    solve_keys = (
        "method",
        "budget",
        "calibration_accuracy",
        "holdout_accuracy",
        "holdout_ci",
        "expected_macs",
        "expected_ms",
        "exit_shares",
    )
    return package.PackageManifest(
        k=run.k,
        c=run.c,
        score=thresholds.score,
        temperatures=tuple(float(t) for t in thresholds.temperatures),
        thresholds=tuple(None if t is None else float(t) for t in thresholds.thresholds),
        decision_fingerprint=thresholds.decision_fingerprint,
        input_shape=opened.input_shape if first is None else first.shape,
        input_dtype=opened.input_dtype if first is None else first.dtype,
        inputs=None if opened.single_input else opened.inputs,
        stages=stages,
        files=files,
        run_fingerprint=run.fingerprint,
        run=str(run.path),
        model={
            "spec": opened.spec,
            "weights_sha256": opened.weights_sha256,
            "state_sha256": opened.state_sha256,
            "stages_source": stages_source,
        },
        solve={key: th.get(key) for key in solve_keys},
        created=_dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
        versions=library_versions(),
    )


def _write_manifest(
    partial: Path,
    manifest: package.PackageManifest,
    model: nn.Module,
    secret: bytes | None,
    batches: Callable[[int], Any],
) -> tuple[package.PackageManifest, str]:
    """Write the manifest, prove the package loaded back from ``partial`` against ``model``, record the proof, sign.

    Returns:
        The manifest as written, with its check, and its text.
    """
    manifest.validate()
    atomic_write_text(partial / package.MANIFEST, json.dumps(manifest.to_dict(), indent=2, allow_nan=False) + "\n")
    manifest = replace(manifest, check=_prove(model, open_package(partial, "cpu"), batches))
    text = json.dumps(manifest.to_dict(), indent=2, allow_nan=False) + "\n"
    atomic_write_text(partial / package.MANIFEST, text)
    if secret is not None:  # signed inside the partial folder: published with the package or not at all
        atomic_write_text(
            partial / package.SIGNATURE,
            json.dumps(package.sign_manifest(secret, text.encode("utf-8")), indent=2) + "\n",
        )
    return manifest, text
