"""Loading a multi-exit model and checking that it keeps the contract.

The contract (DESIGN.md): ``forward(x)`` returns a list or tuple of ``K >= 2`` logits
tensors of shape ``(B, C)``, exit 1 (the cheapest) first, the same ``C`` for all.

A model is named either as ``pkg.module:factory`` (a callable returning the module; the
module is imported from ``--model-path DIR`` or ``PYTHONPATH``), optionally with
``--weights FILE`` loaded by ``torch.load(weights_only=True)``, or as a ``torch.export``
archive ``FILE.pt2``.

A factory is code and runs as such. A ``.pt2`` archive is treated as data: it is read
once into memory, checked by :func:`load_exported` to hold no pickled entry that
``torch.export.load`` would unpickle without restriction, and only then loaded from
the same bytes.
"""

from __future__ import annotations

import hashlib
import importlib
import io
import json
import os
import sys
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dyncal.errors import DyncalError, ModelError

__all__ = [
    "LoadedModel",
    "load_model",
    "load_exported",
    "check_exit_outputs",
    "import_object",
    "call_factory",
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
    """

    module: nn.Module
    spec: str
    weights: str | None
    weights_sha256: str | None
    model_path: str | None


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


def import_object(spec: str, *, what: str, search_path: str | os.PathLike[str] | None = None) -> Any:
    """Import ``obj`` from a ``pkg.module:obj`` spec.

    Args:
        spec: ``"pkg.module:name"``.
        what: The option it came from, for messages (``"--model"``).
        search_path: A folder put first on ``sys.path`` while importing.

    Raises:
        DyncalError: Malformed spec, module not importable, or name missing.

    Example:
        >>> import_object("math:sqrt", what="--x")(9.0)
        3.0
    """
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise DyncalError(f"{what} must look like 'pkg.module:factory', got {spec!r}")
    added = False
    if search_path is not None:
        folder = str(Path(search_path).resolve())
        if not Path(folder).is_dir():
            raise DyncalError(f"--model-path '{search_path}' is not a folder")
        if folder not in sys.path:
            sys.path.insert(0, folder)
            added = True
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        hint = (
            " (give its folder with --model-path or add it to PYTHONPATH)"
            if e.name == module_name.split(".")[0]
            else ""
        )
        raise DyncalError(f"{what}: cannot import module '{module_name}': {e}{hint}") from e
    finally:
        if added:
            sys.path.remove(str(Path(search_path).resolve()))  # type: ignore[arg-type]
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise DyncalError(f"{what}: module '{module_name}' has no attribute '{attr}'")
        obj = getattr(obj, part)
    return obj


def call_factory(
    spec: str,
    *,
    what: str,
    search_path: str | os.PathLike[str] | None = None,
    error: type[DyncalError] = DyncalError,
    makes: str = "the object",
) -> Any:
    """Import the ``pkg.module:factory`` named by ``spec`` and call it with no arguments.

    Args:
        spec: ``"pkg.module:factory"``.
        what: The option it came from, for messages (``"--model"``).
        search_path: A folder put first on ``sys.path`` while importing.
        error: The error class to raise.
        makes: What the factory should return, for messages.

    Raises:
        DyncalError: (as ``error``) the spec cannot be imported, is not callable, or the
            call fails; the message has the factory's exception in one line.

    Example:
        >>> call_factory("collections:OrderedDict", what="--x")
        OrderedDict()
    """
    try:
        factory = import_object(spec, what=what, search_path=search_path)
    except DyncalError as e:
        raise (e if isinstance(e, error) else error(str(e))) from e
    if not callable(factory):
        raise error(f"{what}: '{spec}' is not callable; name a function that returns {makes}")
    try:
        return factory()
    except DyncalError:
        raise
    except Exception as e:  # noqa: BLE001 - the user's factory may raise anything
        first = (str(e).splitlines() or [""])[0]
        raise error(f"{what}: calling '{spec}()' failed: {type(e).__name__}: {first}") from e


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
        f"--weights '{path}' holds no state dict (a mapping of names to tensors, possibly under "
        "'state_dict' or 'model'); save one with torch.save(model.state_dict(), path)"
    )


def _load_weights(module: nn.Module, path: Path) -> None:
    if not path.exists():
        raise ModelError(f"--weights: no such file '{path}'")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types for unreadable files
        first = (str(e).splitlines() or [""])[0][:200]
        raise ModelError(
            f"--weights: cannot read '{path}' with torch.load(weights_only=True) "
            f"({type(e).__name__}: {first}); is it a PyTorch checkpoint saved with torch.save?"
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
        raise ModelError(f"--weights '{path}' does not fit the model ({'; '.join(parts)})")
    shapes = [k for k in own if tuple(own[k].shape) != tuple(state[k].shape)]
    if shapes:
        k = shapes[0]
        raise ModelError(
            f"--weights '{path}': '{k}' has shape {tuple(state[k].shape)} in the checkpoint "
            f"but {tuple(own[k].shape)} in the model ({len(shapes)} mismatched)"
        )
    module.load_state_dict(state, strict=True)


def _short_list(items: Sequence[str], n: int = 6) -> str:
    shown = ", ".join(items[:n])
    return shown + (f" and {len(items) - n} more" if len(items) > n else "")


def resolve_device(device: str) -> torch.device:
    """Parse ``cpu``, ``cuda`` or ``cuda:N`` and check that it exists here.

    Example:
        >>> resolve_device("cpu")
        device(type='cpu')
    """
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise DyncalError(f"--device must be cpu, cuda or cuda:N; got {device!r}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise DyncalError(f"--device {device}: CUDA is not available on this machine; use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise DyncalError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type != "cpu":
        raise DyncalError(f"--device must be cpu, cuda or cuda:N; got {device!r}")
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
            raise ModelError(f"--model: no such file '{spec}'")
        if weights is not None:
            raise ModelError("--weights does not apply to a .pt2 archive (its weights are inside)")
        program = load_exported(path, what="--model")
        module: nn.Module = program.module()
        weights_sha = sha256_file(path)
    else:
        module = call_factory(
            spec, what="--model", search_path=model_path, error=ModelError, makes="the model (a class works too)"
        )
        if not isinstance(module, nn.Module):
            raise ModelError(f"--model: '{spec}()' returned {type(module).__name__}, not a torch.nn.Module")
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


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:300]


def _loads_restricted(data: bytes) -> bool:
    """Whether ``data`` unpickles with torch's restricted unpickler (tensors and containers only)."""
    try:
        torch.load(io.BytesIO(data), weights_only=True)
    except Exception:  # noqa: BLE001 - any failure means torch would fall back to plain pickle
        return False
    return True


def check_exported_archive(data: bytes, name: str) -> None:
    """Refuse a ``torch.export`` archive that would run pickled code when loaded.

    ``torch.export.load`` unpickles without restriction every payload marked
    ``use_pickle`` (tensor subclasses, script and opaque objects), compiled AOTInductor
    packages, and falls back to plain pickle for sample inputs or legacy weight files that
    torch's restricted unpickler rejects. An archive is accepted only when none of these
    can happen.

    Args:
        data: The archive's bytes.
        name: How to name the archive in messages.

    Raises:
        ModelError: Not a zip archive, or an entry that would be unpickled unrestricted.
    """
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile as e:
        raise ModelError(
            f"'{name}' is not a torch.export archive (not a zip file); save it with torch.export.save"
        ) from e
    refuse = (
        f"'{name}' holds pickled data that loading would execute ({{}}); "
        "re-export it with torch.export.save from plain tensors"
    )
    with archive:
        for entry in archive.namelist():
            parts = entry.split("/")
            inner = "/".join(parts[1:])  # entries sit below one root folder
            if inner.startswith("data/aotinductor/"):
                raise ModelError(refuse.format(f"compiled AOTInductor package {entry!r}"))
            if inner.endswith("_config.json") and inner.startswith(("data/weights/", "data/constants/")):
                try:
                    config = json.loads(archive.read(entry)).get("config", {})
                    pickled = [fqn for fqn, meta in config.items() if meta.get("use_pickle")]
                except (ValueError, AttributeError) as e:
                    raise ModelError(f"'{name}': unreadable payload table {entry!r}: {_first_line(e)}") from e
                if pickled:
                    raise ModelError(refuse.format(f"{', '.join(pickled[:3])} in {entry!r}"))
            elif inner.endswith(".pt") and inner.startswith(
                ("data/sample_inputs/", "data/weights/", "data/constants/")
            ):
                if not _loads_restricted(archive.read(entry)):
                    raise ModelError(refuse.format(f"{entry!r} needs the unrestricted unpickler"))


def load_exported(
    path: str | os.PathLike[str], *, what: str = "--model", sha256: str | None = None
) -> torch.export.ExportedProgram:
    """Load a ``torch.export`` archive once it is known to hold no pickled code.

    The file is read once; the bytes that were checked (:func:`check_exported_archive`,
    and the hash when ``sha256`` is given) are the bytes that are loaded.

    Args:
        path: A ``.pt2`` file written by ``torch.export.save``.
        what: The option or artifact to name in messages.
        sha256: The file's expected SHA-256 (e.g. from a package manifest); other bytes are refused.

    Returns:
        The exported program.

    Raises:
        ModelError: Missing, unreadable, not the expected bytes, carrying pickled entries, or
            not loadable.

    Example:
        >>> import tempfile, pathlib
        >>> from dyncal.demo import pretrained
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "demo.pt2"
        >>> torch.export.save(torch.export.export(pretrained(), (torch.zeros(2, 1, 8, 8),)), path)
        >>> load_exported(path).module()(torch.zeros(2, 1, 8, 8))[0].shape
        torch.Size([2, 10])
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ModelError(f"{what}: cannot read '{path}': {e.strerror or e}") from e
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        raise ModelError(
            f"{what}: '{path}' has SHA-256 {hashlib.sha256(data).hexdigest()[:12]} but {sha256[:12]} was recorded; "
            "the file was changed or damaged: re-create it"
        )
    check_exported_archive(data, str(path))
    try:
        return torch.export.load(io.BytesIO(data))
    except Exception as e:  # noqa: BLE001 - torch raises many kinds for a damaged archive
        raise ModelError(f"{what}: cannot load '{path}' as a torch.export archive: {_first_line(e)}") from e


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
        if out.ndim != 2 or out.shape[0] != batch_size:
            raise ModelError(f"exit {i + 1} has shape {tuple(out.shape)}; expected (B, C) with B={batch_size}")
        shapes.append(int(out.shape[1]))
    if len(set(shapes)) != 1:
        raise ModelError(f"exits disagree on the number of classes C: {shapes}; all exits need the same C")
    return len(outputs), shapes[0]
