"""Loading a multi-exit model and checking that it keeps the contract.

The contract (DESIGN.md): ``forward(x)`` returns a list or tuple of ``K >= 2`` logits
tensors of shape ``(B, C)``, exit 1 (the cheapest) first, the same ``C`` for all.

A model is named either as ``pkg.module:factory`` (a callable returning the module; the
module is imported from ``--model-path DIR`` or ``PYTHONPATH``), optionally with
``--weights FILE`` loaded by ``torch.load(weights_only=True)``, or as a ``torch.export``
archive ``FILE.pt2``.

A factory is code and runs as such. A ``.pt2`` archive is treated as data: it is read
once into memory (a regular file of bounded size), checked by :mod:`dyncal.archives` to
hold nothing through which loading or running it could execute code (pickles, expressions
that sympy would evaluate, names pasted into generated code, imports and calls by name),
and only then loaded from the same bytes (:func:`load_exported`).
"""

from __future__ import annotations

import hashlib
import io
import logging
import math
import os
import stat
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from dyncal import archives
from dyncal.archives.files import read_regular_file
from dyncal.errors import DyncalError, ModelError, describe, first_line
from dyncal.specs import call_factory, import_object  # noqa: F401 - importable from here too, as before

if TYPE_CHECKING:
    from dyncal.artifacts.run import Run

log = logging.getLogger(__name__)

__all__ = [
    "LoadedModel",
    "ModelSource",
    "ModelCheck",
    "load_model",
    "load_run_model",
    "run_model_source",
    "check_run_model",
    "logits_difference",
    "load_exported",
    "check_exit_outputs",
    "input_signature",
    "torch_dtype",
    "sha256_file",
]


@dataclass(frozen=True)
class LoadedModel:
    """A model ready to run, with what is needed to name it in provenance.

    Attributes:
        module: The model in eval mode on its device.
        spec: The spec it was loaded from (``pkg.module:factory`` or a ``.pt2`` path).
        weights: Path of the checkpoint, or None.
        weights_sha256: SHA-256 of the checkpoint (or of the ``.pt2`` archive), or None.
        model_path: Folder the module was imported from, or None.
        from_run: Whether the spec came from a run's ``run.json`` (see :func:`load_run_model`).
        check: How it compares with the run's model (:func:`load_run_model`), or None.
    """

    module: nn.Module
    spec: str
    weights: str | None
    weights_sha256: str | None
    model_path: str | None
    from_run: bool = False
    check: ModelCheck | None = None


def sha256_file(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a file, read in 1 MiB blocks.

    Example:
        >>> import tempfile
        >>> p = tempfile.mktemp(); _ = open(p, "wb").write(b"abc")
        >>> sha256_file(p)[:12]
        'ba7816bf8f01'
    """
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _strip_prefix(state: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    if state and all(k.startswith(prefix) for k in state):
        return {k[len(prefix) :]: v for k, v in state.items()}
    return dict(state)


def _state_dict_from_checkpoint(ckpt: Any, path: Path) -> dict[str, torch.Tensor]:
    """Find the state dict inside the usual checkpoint wrappers."""
    if isinstance(ckpt, Mapping):
        for key in ("state_dict", "model_state_dict", "model", "net"):
            inner = ckpt.get(key)
            if isinstance(inner, Mapping) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
                ckpt = inner
                break
        if ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
            state = _strip_prefix(ckpt, "module.")
            return _strip_prefix(state, "_orig_mod.")
    raise ModelError(
        f"`weights` '{path}' holds no state dict (a mapping of names to tensors, possibly under "
        "'state_dict' or 'model'); save one with torch.save(model.state_dict(), path)"
    )


def _load_weights(module: nn.Module, path: Path) -> None:
    if not path.exists():
        raise ModelError(f"`weights`: no such file '{path}'")
    mode = path.stat().st_mode
    if not stat.S_ISREG(mode):  # torch.load would read a device or a pipe forever
        raise ModelError(f"`weights`: '{path}' is not a regular file; give the path of the checkpoint file itself")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types for unreadable files
        raise ModelError(
            f"`weights`: cannot read '{path}' with torch.load(weights_only=True) "
            f"({describe(e, 200)}); is it a PyTorch checkpoint saved with torch.save?"
        ) from e
    state = _state_dict_from_checkpoint(ckpt, path)
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys: {_short_list(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {_short_list(unexpected)}")
        raise ModelError(f"`weights` '{path}' does not fit the model ({'; '.join(parts)})")
    shapes = [k for k in own if tuple(own[k].shape) != tuple(state[k].shape)]
    if shapes:
        k = shapes[0]
        raise ModelError(
            f"`weights` '{path}': '{k}' has shape {tuple(state[k].shape)} in the checkpoint "
            f"but {tuple(own[k].shape)} in the model ({len(shapes)} mismatched)"
        )
    module.load_state_dict(state, strict=True)


def _short_list(items: Sequence[str], n: int = 6) -> str:
    shown = ", ".join(items[:n])
    return shown + (f" and {len(items) - n} more" if len(items) > n else "")


def resolve_device(device: str) -> torch.device:
    """Parse ``cpu``, ``cuda`` or ``cuda:N`` (:func:`dyncal.artifacts.costs.device_name`) and check it exists here.

    Example:
        >>> resolve_device("cpu")
        device(type='cpu')
    """
    from dyncal.artifacts.costs import device_name

    try:
        dev = torch.device(device_name(device))  # cpu:N (N > 0) and other spellings refused
    except (RuntimeError, ValueError):
        raise DyncalError(f"`device` must be cpu, cuda or cuda:N; got {device!r}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise DyncalError(f"`device` {device}: CUDA is not available on this machine; use `device` cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise DyncalError(f"`device` {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type != "cpu":
        raise DyncalError(f"`device` must be cpu, cuda or cuda:N; got {device!r}")
    return dev


def load_model(
    spec: str,
    *,
    weights: str | os.PathLike[str] | None = None,
    model_path: str | os.PathLike[str] | None = None,
    device: str = "cpu",
) -> LoadedModel:
    """Load a multi-exit model from a spec.

    Args:
        spec: ``pkg.module:factory`` or a ``torch.export`` archive path ending in ``.pt2``.
        weights: Optional checkpoint (plain state dict, or under ``state_dict``/``model``,
            ``module.`` prefixes from DataParallel removed).
        model_path: Folder to import the factory's module from.
        device: ``cpu``, ``cuda`` or ``cuda:N``.

    Returns:
        The model in eval mode on ``device``.

    Raises:
        ModelError: The spec cannot be imported, the factory fails or returns no module,
            the archive cannot be loaded, or the weights do not fit (keys listed).

    Example:
        >>> m = load_model("dyncal.demo:pretrained")
        >>> type(m.module).__name__
        'DigitsExitNet'
    """
    dev = resolve_device(device)
    weights_sha = None
    if spec.endswith(".pt2"):
        path = Path(spec)
        if not path.exists():
            raise ModelError(f"the model archive '{spec}' does not exist")
        if weights is not None:
            raise ModelError("`weights` does not apply to a .pt2 archive (its weights are inside)")
        program, weights_sha = _load_exported(path, what="the model archive", sha256=None)
        module: nn.Module = program.module()
    else:
        module = call_factory(
            spec, what="the model", search_path=model_path, error=ModelError, makes="the model (a class works too)"
        )
        if not isinstance(module, nn.Module):
            raise ModelError(f"the model: '{spec}()' returned {type(module).__name__}, not a torch.nn.Module")
        if weights is not None:
            _load_weights(module, Path(weights))
            weights_sha = sha256_file(weights)
        module.eval()
    module.to(dev)
    return LoadedModel(
        module=module,
        spec=spec,
        weights=None if weights is None else str(Path(weights).resolve()),
        weights_sha256=weights_sha,
        model_path=None if model_path is None else str(Path(model_path).resolve()),
    )


def check_exported_archive(data: bytes, name: str) -> None:
    """Refuse a ``torch.export`` archive that loading or running could make execute code.

    The checks, and every route through ``torch.export.load`` they cover, are those of
    :func:`dyncal.archives.check_archive`: the zip is parsed by dyncal (no duplicate or
    case-folded names, no data outside the archive, CRCs and sizes checked, bounded), only
    entries ``torch.export.save`` writes for tensors are accepted (no ``use_pickle`` payload,
    no ``opaque_obj_*``/``custom_obj_*`` constant whatever its flag, no AOTInductor package,
    no sample inputs the restricted unpickler refuses), and every string of the program that
    torch evaluates, pastes into generated code or resolves by name is checked.

    Args:
        data: The archive's bytes.
        name: How to name the archive in messages.

    Raises:
        ModelError: Not a zip archive, or anything refused (one line naming the entry).
    """
    archives.check_archive(data, name)


def _load_exported(
    path: str | os.PathLike[str], *, what: str, sha256: str | None, advice: str = "give the path of a .pt2 file"
) -> tuple[torch.export.ExportedProgram, str]:
    """The program in ``path`` and the SHA-256 of the bytes it was checked and loaded from."""
    path = Path(path)
    limit = archives.ARCHIVE_LIMIT_BYTES
    data = read_regular_file(path, what=what, limit=limit, error=ModelError, advice=advice)
    digest = hashlib.sha256(data).hexdigest()
    if sha256 is not None and digest != sha256:
        raise ModelError(
            f"{what}: '{path}' has SHA-256 {digest[:12]} but {sha256[:12]} was recorded; "
            "the file was changed or damaged: re-create it"
        )
    check_exported_archive(data, str(path))
    try:
        return torch.export.load(io.BytesIO(data)), digest
    except Exception as e:  # noqa: BLE001 - torch raises many kinds for a damaged archive
        raise ModelError(f"{what}: cannot load '{path}' as a torch.export archive: {first_line(e)}") from e


def load_exported(
    path: str | os.PathLike[str],
    *,
    what: str = "the model archive",
    sha256: str | None = None,
    advice: str = "give the path of a .pt2 file",
) -> torch.export.ExportedProgram:
    """Load a ``torch.export`` archive once it is known to hold nothing that would execute.

    The file is read once (a regular file, at most :data:`dyncal.archives.ARCHIVE_LIMIT_BYTES`;
    pipes, devices and directories are refused before reading); the bytes that were checked
    (:func:`check_exported_archive`, and the hash when ``sha256`` is given) are the bytes
    that are loaded.

    Args:
        path: A ``.pt2`` file written by ``torch.export.save``.
        what: The option or artifact to name in messages.
        sha256: The file's expected SHA-256 (e.g. from a package manifest); other bytes are refused.
        advice: What to do when the file is missing, not a regular file or too large.

    Returns:
        The exported program.

    Raises:
        ModelError: Missing, not a regular file, too large, unreadable, not the expected
            bytes, refused by the checks, or not loadable.

    Example:
        >>> import tempfile, pathlib
        >>> from dyncal.demo import pretrained
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "demo.pt2"
        >>> torch.export.save(torch.export.export(pretrained(), (torch.zeros(2, 1, 8, 8),)), path)
        >>> load_exported(path).module()(torch.zeros(2, 1, 8, 8))[0].shape
        torch.Size([2, 10])
    """
    return _load_exported(path, what=what, sha256=sha256, advice=advice)[0]


def torch_dtype(name: str, what: str = "the input dtype") -> torch.dtype:
    """The torch dtype called ``name`` (``"float32"`` or ``"torch.float32"``).

    Example:
        >>> torch_dtype("torch.float16")
        torch.float16

    Raises:
        ModelError: No such dtype (``what`` names the option or file it came from).
    """
    dt = getattr(torch, name.replace("torch.", ""), None)
    if not isinstance(dt, torch.dtype):
        raise ModelError(f"{what}: {name!r} is not a torch dtype (e.g. float32)")
    return dt


MAX_SAMPLE_VALUES = 1 << 28
"""Most values one input sample may have (1 GiB of float32): a larger `input_shape` is a typo."""


def input_signature(
    run: Any, shape: Sequence[int] | None = None, dtype: str | None = None
) -> tuple[tuple[int, ...], str]:
    """A model's per-sample input shape and dtype name: as given, else as the run recorded them.

    Args:
        run: An opened run (:class:`dyncal.run.Run`).
        shape: ``--input-shape`` (per sample, without the batch), or None.
        dtype: ``--input-dtype``, or None (the run's, else ``float32``).

    Raises:
        ModelError: No shape recorded or given, a malformed one, or an unknown dtype.
    """
    extra = run.provenance.extra
    raw = shape if shape is not None else extra.get("input_shape")
    if not raw:
        raise ModelError(
            f"run '{run.path}' does not record its input shape; pass `input_shape` with the per-sample shape, "
            "e.g. 3,224,224"
        )
    try:
        shape_t = tuple(int(v) for v in raw)
    except (TypeError, ValueError):
        raise ModelError(f"the input shape {raw!r} is not a list of integers; pass `input_shape`") from None
    if any(v < 1 for v in shape_t):
        raise ModelError(f"`input_shape` must be positive integers per sample, got {list(shape_t)}")
    values = math.prod(shape_t)
    if values > MAX_SAMPLE_VALUES:
        raise ModelError(
            f"`input_shape` {','.join(map(str, shape_t))} has {values:.3g} values per sample, more than the "
            f"{MAX_SAMPLE_VALUES:,} dyncal accepts (a 4K video frame has 25 million); give the per-sample shape "
            "without the batch, e.g. 3,224,224"
        )
    name = str(dtype or extra.get("input_dtype") or "float32").replace("torch.", "")
    torch_dtype(name)
    return shape_t, name


def check_exit_outputs(outputs: Any, batch_size: int, *, static_ok: bool = False) -> tuple[int, int]:
    """Check a forward's outputs against the multi-exit contract.

    Args:
        outputs: What ``model(x)`` returned.
        batch_size: Rows of the input batch.
        static_ok: Also accept a static model (``K = 1``): one ``(B, C)`` tensor, or a list
            of one (collect and profile measure static models for comparison).

    Returns:
        ``(K, C)``.

    Raises:
        ModelError: Not a list/tuple, fewer than two exits, a non-tensor, a wrong shape,
            or exits with different ``C``.

    Example:
        >>> check_exit_outputs([torch.zeros(2, 5), torch.zeros(2, 5)], 2)
        (2, 5)
        >>> check_exit_outputs(torch.zeros(2, 5), 2, static_ok=True)
        (1, 5)
    """
    if isinstance(outputs, torch.Tensor) and static_ok:
        outputs = [outputs]
    if isinstance(outputs, torch.Tensor):
        raise ModelError(
            f"the model returned one tensor of shape {tuple(outputs.shape)}; a multi-exit model "
            "must return a list or tuple of K >= 2 logits tensors (B, C), exit 1 first"
        )
    if not isinstance(outputs, (list, tuple)):
        raise ModelError(
            f"the model returned {type(outputs).__name__}; expected a list or tuple of K >= 2 logits tensors (B, C)"
        )
    if len(outputs) < (1 if static_ok else 2):
        raise ModelError(f"the model returned {len(outputs)} exit(s); a multi-exit model needs K >= 2")
    shapes = []
    for i, out in enumerate(outputs):
        if not isinstance(out, torch.Tensor):
            raise ModelError(f"exit {i + 1} is {type(out).__name__}, not a tensor")
        if out.is_meta or out.layout != torch.strided:
            what = "on the meta device (a tensor without values)" if out.is_meta else f"a {out.layout} tensor"
            raise ModelError(
                f"exit {i + 1} is {what}; the model must return dense logits it computed (were its weights "
                "left on the meta device? load them, e.g. with `weights`)"
            )
        if out.ndim != 2 or out.shape[0] != batch_size:
            raise ModelError(f"exit {i + 1} has shape {tuple(out.shape)}; expected (B, C) with B={batch_size}")
        shapes.append(int(out.shape[1]))
    if len(set(shapes)) != 1:
        raise ModelError(f"exits disagree on the number of classes C: {shapes}; all exits need the same C")
    return len(outputs), shapes[0]


# --------------------------------------------------------------------------- the run's model

ROWS_RTOL = 1e-2
"""Tolerance of the re-run rows: ``|new - stored| <= ROWS_RTOL * max(1, max |stored logits of that exit|)``.

Loose enough for float32 on another device or batch size (TF32 convolutions on CUDA), tight
enough that other weights, another model or other inputs show: those move logits by about
their own scale.
"""


@dataclass(frozen=True)
class ModelSource:
    """Which model a verb loads for a run: the one ``run.json`` names, or the user's overrides.

    Attributes:
        spec: ``pkg.module:factory`` or a ``.pt2`` path.
        weights: Checkpoint path, or None.
        model_path: Folder the factory's module is imported from, or None.
        from_run: Whether ``spec`` comes from ``run.json`` (no ``--model`` given): code the
            run names, which the command line should say it imports.
    """

    spec: str
    weights: str | None
    model_path: str | None
    from_run: bool

    def describe(self) -> str:
        """One phrase naming the model, its checkpoint and where its code comes from."""
        parts = [self.spec]
        if self.weights:
            parts.append(f"weights {self.weights}")
        if self.model_path and not self.spec.endswith(".pt2"):
            parts.append(f"code from {self.model_path}")
        return ", ".join(parts)


@dataclass(frozen=True)
class ModelCheck:
    """How a loaded model compares with the one a run was collected with.

    Attributes:
        weights: ``"match"``, ``"differ"``, ``"not recorded"`` (the run records no SHA-256)
            or ``"none given"`` (it does, but the model has no checkpoint file).
        rows_checked: Recorded rows re-run through the model (0: none could be).
        max_abs_diff: Largest logit difference over those rows, or None.
        rows_note: Why no rows were re-run, or None.
        mismatch: What differs from the run's model, or None when nothing does (as far as
            checked).
        allowed: The model was used although it differs (``allow_other_model``).
    """

    weights: str
    rows_checked: int
    max_abs_diff: float | None
    rows_note: str | None
    mismatch: str | None
    allowed: bool = False

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return asdict(self)


def _names_model(spec: str) -> bool:
    return bool(spec) and not spec.startswith("(")


def run_model_source(
    run: Run,
    *,
    model: str | None = None,
    weights: str | os.PathLike[str] | None = None,
    model_path: str | os.PathLike[str] | None = None,
) -> ModelSource:
    """Resolve the model of ``run`` from its provenance, or from the overrides given.

    The recorded checkpoint goes with the recorded spec only: ``model`` naming another
    spec drops it unless ``weights`` is given too. Nothing is imported here.

    Args:
        run: An opened run.
        model: Spec overriding ``provenance.model``.
        weights: Checkpoint overriding ``provenance.extra["weights"]``.
        model_path: Import folder overriding ``provenance.extra["model_path"]``.

    Raises:
        ModelError: The run names no model and none is given, or its checkpoint is missing.

    Example:
        >>> import numpy as np, tempfile, pathlib
        >>> from dyncal.run import Provenance, import_arrays
        >>> prov = Provenance.here(model="dyncal.demo:pretrained", data="x", device="cpu")
        >>> run = import_arrays(np.zeros((2, 4, 10), np.float32), [0, 1],
        ...                     pathlib.Path(tempfile.mkdtemp()) / "r", provenance=prov)
        >>> run_model_source(run).describe(), run_model_source(run).from_run
        ('dyncal.demo:pretrained', True)
    """
    prov = run.provenance
    extra = prov.extra
    spec = model or (prov.model if _names_model(prov.model) else None)
    if not spec:
        raise ModelError(
            f"run '{run.path}' does not name its model (model: {prov.model!r}); pass "
            "`model` pkg.module:factory (or FILE.pt2)"
        )
    recorded_weights = extra.get("weights") if spec == prov.model else None
    chosen = str(weights) if weights is not None else recorded_weights
    if weights is None and chosen is not None and not os.path.exists(chosen):
        raise ModelError(f"the run's weights '{chosen}' do not exist on this machine; pass `weights` FILE")
    folder = model_path if model_path is not None else extra.get("model_path")
    return ModelSource(
        spec=spec,
        weights=None if chosen is None else str(chosen),
        model_path=None if folder is None else str(folder),
        from_run=model is None,
    )


def logits_difference(new: np.ndarray, stored: np.ndarray) -> tuple[float, bool]:
    """Largest ``|new - stored|`` of ``(B, K, C)`` logits and whether it is within :data:`ROWS_RTOL`.

    Example:
        >>> a = np.ones((2, 2, 3), np.float32)
        >>> logits_difference(a + 1e-4, a)[1], logits_difference(a + 0.5, a)[1]
        (True, False)
    """
    new = np.asarray(new, dtype=np.float64)
    stored = np.asarray(stored, dtype=np.float64)
    if new.shape != stored.shape:
        return float("inf"), False
    diff = np.abs(new - stored)
    scale = np.maximum(1.0, np.abs(stored).max(axis=-1, keepdims=True))
    ok = bool(np.all(diff <= ROWS_RTOL * scale))
    return float(diff.max()) if diff.size else 0.0, ok


def _recheck_rows(
    run: Run,
    module: nn.Module,
    *,
    data: str | None,
    search_path: str | None,
    device: torch.device,
    count: int,
) -> tuple[int, float | None, str | None, str | None]:
    """Re-run up to ``count`` recorded rows: ``(rows, max |diff|, why not checked, mismatch)``."""
    from dyncal.data import dataset_for_run

    if count < 1:
        return 0, None, "not asked to re-run rows", None
    try:
        dataset = dataset_for_run(run, data=data, search_path=search_path)
    except DyncalError as e:
        return 0, None, f"the run's data set cannot be opened ({e})", None
    rows = np.unique(np.linspace(0, run.n - 1, min(count, run.n)).round().astype(np.int64))
    where = np.asarray(run.indices[rows], dtype=np.int64)
    try:
        size = len(dataset)  # type: ignore[arg-type]
        if where.min() < 0 or where.max() >= size:
            return 0, None, f"the data set has {size} items but the run reads item {int(where.max())}", None
        items = [dataset[int(i)] for i in where]
        x = torch.stack([torch.as_tensor(item[0]) for item in items])
        labels = [int(item[1]) for item in items]
    except Exception as e:  # noqa: BLE001 - anything the user's data set raises
        return 0, None, f"the run's inputs cannot be read ({describe(e)})", None
    if labels != [int(v) for v in run.labels[rows]]:
        return (
            0,
            None,
            None,
            (
                f"the data set's labels at rows {rows[:4].tolist()} are {labels[:4]}, the run's "
                f"{[int(v) for v in run.labels[rows[:4]]]}: the data is not the run's"
            ),
        )
    try:
        with torch.inference_mode():
            outs = module(x.to(device))
        outs = [outs] if isinstance(outs, torch.Tensor) else outs  # a static model: one exit
        k, c = check_exit_outputs(outs, int(x.shape[0]), static_ok=True)
    except Exception as e:  # noqa: BLE001 - the user's model may raise anything
        return 0, None, None, f"the model fails on the run's recorded inputs ({describe(e)})"
    if (k, c) != (run.k, run.c):
        return 0, None, None, f"the model has K={k} exits and C={c} classes, the run K={run.k}, C={run.c}"
    new = torch.stack([o.float() for o in outs], dim=1).cpu().numpy()
    diff, ok = logits_difference(new, np.asarray(run.logits[rows]))
    if not ok:
        return (
            len(rows),
            diff,
            None,
            (
                f"re-running {len(rows)} recorded rows gives logits up to {diff:.3g} away from the run's "
                "(the model or the data is not the run's)"
            ),
        )
    return len(rows), diff, None, None


def check_run_model(
    run: Run,
    loaded: LoadedModel,
    *,
    source: ModelSource | None = None,
    data: str | None = None,
    device: str = "cpu",
    check_rows: int = 8,
) -> ModelCheck:
    """Compare ``loaded`` with the model ``run`` was collected with.

    Evidence, strongest first: the checkpoint's SHA-256 against the run's
    ``weights_sha256``, and up to ``check_rows`` recorded rows (``run.indices`` read back
    from the run's data set) re-run and compared with the stored logits (see
    :data:`ROWS_RTOL`). Hashes that differ, or rows that differ, are a mismatch; a spec
    other than the one the run names, or a checkpoint given where the run had none (or
    the other way round), is one too unless the hash matches or the rows agree.

    Args:
        run: An opened run.
        loaded: The model to compare, on ``device``.
        source: How it was resolved (:func:`run_model_source`); by default from ``loaded``.
        data: Data spec overriding the run's, for the rows.
        device: Where ``loaded`` runs.
        check_rows: Rows to re-run (0: none).

    Returns:
        The comparison; :attr:`ModelCheck.mismatch` says what differs.
    """
    prov = run.provenance
    source = source or ModelSource(loaded.spec, loaded.weights, loaded.model_path, from_run=False)
    run_sha, new_sha = prov.weights_sha256, loaded.weights_sha256
    mismatch = None
    if run_sha and new_sha == run_sha:
        weights = "match"
    elif run_sha and new_sha:
        weights = "differ"
        mismatch = (
            f"the SHA-256 of '{loaded.weights or loaded.spec}' is {new_sha[:12]}…, "
            f"the run's weights had {run_sha[:12]}…"
        )
    else:
        weights = "not recorded" if not run_sha else "none given"
    rows, diff, note, rows_mismatch = _recheck_rows(
        run, loaded.module, data=data, search_path=source.model_path, device=resolve_device(device), count=check_rows
    )
    mismatch = mismatch or rows_mismatch
    # Without a matching hash or rows that agree, anything else that differs from what the
    # run records cannot be shown harmless.
    if mismatch is None and weights != "match" and rows == 0 and _names_model(prov.model):
        if source.spec != prov.model:
            mismatch = f"the run was collected with '{prov.model}', not '{source.spec}', and no rows could be re-run"
        elif run_sha and not new_sha:
            mismatch = f"the run was collected with a checkpoint (SHA-256 {run_sha[:12]}…) and none is given"
        elif new_sha and not run_sha:
            mismatch = "the run was collected without a checkpoint and one is given"
        if mismatch is not None:
            mismatch += f" ({note})"
    return ModelCheck(weights=weights, rows_checked=rows, max_abs_diff=diff, rows_note=note, mismatch=mismatch)


def load_run_model(
    run: Run,
    *,
    model: str | None = None,
    weights: str | os.PathLike[str] | None = None,
    model_path: str | os.PathLike[str] | None = None,
    data: str | None = None,
    device: str = "cpu",
    allow_other_model: bool = False,
    check_rows: int = 8,
    other_model_allowed: bool = True,
) -> LoadedModel:
    """Load the model ``run`` was collected with, and check that it is that model.

    The model comes from the run's provenance unless overridden
    (:func:`run_model_source`), and is compared with the run by :func:`check_run_model`.
    A mismatch is refused unless ``allow_other_model``; the verb should then record
    ``loaded.check`` in what it writes.

    Args:
        run: An opened run.
        model: Spec overriding the run's.
        weights: Checkpoint overriding the run's.
        model_path: Import folder overriding the run's.
        data: Data spec overriding the run's, for re-running rows.
        device: ``cpu``, ``cuda`` or ``cuda:N``.
        allow_other_model: Use a model that differs from the run's (recorded in ``check``).
        check_rows: Recorded rows to re-run (0: compare the checkpoint's hash only).
        other_model_allowed: Whether the caller may use another model at all; when not
            (an exported package ships the run's model only), the error offers no override.

    Returns:
        The model, with :attr:`LoadedModel.check` and :attr:`LoadedModel.from_run` set.

    Raises:
        ModelError: The run names no model, the model cannot be loaded, or it is not the
            run's model (what differs, and what to do) and ``allow_other_model`` is False.

    Example:
        >>> import tempfile, pathlib
        >>> from dyncal.collect import collect_run
        >>> from dyncal.data import load_dataset
        >>> out = pathlib.Path(tempfile.mkdtemp()) / "run"
        >>> run = collect_run(load_model("dyncal.demo:pretrained"), load_dataset("dyncal.demo:validation"),
        ...                   out, data_spec="dyncal.demo:validation", limit=40)
        >>> loaded = load_run_model(run)
        >>> loaded.from_run, loaded.check.rows_checked, loaded.check.mismatch
        (True, 8, None)
    """
    source = run_model_source(run, model=model, weights=weights, model_path=model_path)
    if source.from_run:
        log.info("loading the model run '%s' names: %s", run.path, source.describe())
    loaded = load_model(source.spec, weights=source.weights, model_path=source.model_path, device=device)
    check = check_run_model(run, loaded, source=source, data=data, device=device, check_rows=check_rows)
    if check.mismatch is not None:
        if not allow_other_model:
            override = ", or pass `allow_other_model` to use it anyway (recorded)" if other_model_allowed else ""
            raise ModelError(
                f"'{source.spec}' is not the model run '{run.path}' was collected with: {check.mismatch}; "
                f"re-collect the run with this model{override}"
            )
        check = replace(check, allowed=True)
    return replace(loaded, check=check, from_run=source.from_run)
