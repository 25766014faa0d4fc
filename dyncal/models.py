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
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dyncal import archives
from dyncal.archives.files import read_regular_file
from dyncal.errors import DyncalError, ModelError, describe, first_line, short_list
from dyncal.specs import call_factory

__all__ = [
    "LoadedModel",
    "load_model",
    "load_exported",
    "check_exit_outputs",
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


def _strip_prefix(state: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    if state and all(k.startswith(prefix) for k in state):
        return {k[len(prefix) :]: v for k, v in state.items()}
    return dict(state)


def _is_state_dict(value: Any) -> bool:
    return isinstance(value, Mapping) and bool(value) and all(isinstance(v, torch.Tensor) for v in value.values())


def _state_dict_from_checkpoint(ckpt: Any, path: Path) -> dict[str, torch.Tensor]:
    """Find the state dict inside the usual checkpoint wrappers."""
    if isinstance(ckpt, Mapping):
        wrapped = (ckpt[k] for k in ("state_dict", "model_state_dict", "model", "net") if _is_state_dict(ckpt.get(k)))
        ckpt = next(wrapped, ckpt)
    if _is_state_dict(ckpt):
        return _strip_prefix(_strip_prefix(ckpt, "module."), "_orig_mod.")
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
    keys = {"missing": [k for k in own if k not in state], "unexpected": [k for k in state if k not in own]}
    parts = [f"{what} keys: {short_list(names)}" for what, names in keys.items() if names]
    if parts:
        raise ModelError(f"`weights` '{path}' does not fit the model ({'; '.join(parts)})")
    shapes = [k for k in own if tuple(own[k].shape) != tuple(state[k].shape)]
    if shapes:
        k = shapes[0]
        raise ModelError(
            f"`weights` '{path}': '{k}' has shape {tuple(state[k].shape)} in the checkpoint "
            f"but {tuple(own[k].shape)} in the model ({len(shapes)} mismatched)"
        )
    module.load_state_dict(state, strict=True)


def resolve_device(device: str) -> torch.device:
    """Parse ``cpu``, ``cuda`` or ``cuda:N`` (:func:`dyncal.artifacts.costs.device_name`) and check it exists here.

    Example:
        >>> resolve_device("cpu")
        device(type='cpu')
    """
    from dyncal.artifacts.costs import device_name

    try:
        dev: torch.device | None = torch.device(device_name(device))  # cpu:N (N > 0) and other spellings refused
    except (RuntimeError, ValueError):
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise DyncalError(f"`device` must be cpu, cuda or cuda:N; got {device!r}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DyncalError(f"`device` {device}: CUDA is not available on this machine; use `device` cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise DyncalError(f"`device` {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
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
    archives.check_archive(data, str(path))
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
    (:func:`dyncal.archives.check_archive`, and the hash when ``sha256`` is given) are the bytes
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
