"""Serving an exported package: :func:`load_early_exit` loads one, :class:`PackageRunner` runs it.

Loading is checked: every file's hash must match the manifest
(:mod:`dyncal.artifacts.package`), every archive is parsed and checked before torch reads it
(:mod:`dyncal.archives`, through :func:`dyncal.models.load_exported`), and the thresholds
must match the decision fingerprint. ``load_early_exit(DIR, verify_key=KEY)`` refuses a
package unless its signature verifies under the key (and refuses an unsigned package).

The runner is an :class:`~dyncal.analysis.early_exit.EarlyExitRunner` over the loaded
stages, so its decisions are the same code path ``dyncal verify`` measures::

    runner = dyncal.load_early_exit("pkg")               # or device="cuda"
    exits, preds = runner(x)                             # int64 (B,) each, exits from 0
    for exits, preds in runner.map(batches):             # the throughput mode, in input order
        ...
    logits = runner.plain_model(x)                       # the plain deployment: last exit only

:meth:`PackageRunner.plain_model` is what the same package would deploy without early
exit: every stage cut to the values the next stage needs (no intermediate head runs),
the last stage whole, no exit decision (:mod:`dyncal.analysis.plain`). ``dyncal verify
--package`` times it as the baseline (:meth:`PackageRunner.plain_runner`).

With ``telemetry=DIR`` every call also records one row per request, and on a ``shadow`` share
the plain model's prediction (:mod:`dyncal.analysis.package_telemetry`).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from dyncal import archives
from dyncal.analysis.early_exit import EarlyExitRunner
from dyncal.analysis.lean import lean_function, plain_call
from dyncal.analysis.package_telemetry import observed_call, open_telemetry
from dyncal.analysis.plain import cut_outputs, plain_runner
from dyncal.analysis.stages import Stages
from dyncal.artifacts import package
from dyncal.artifacts.rundir import PARTIAL_SUFFIX
from dyncal.errors import DyncalError, param
from dyncal.inputs import batch_size
from dyncal.models import load_exported, resolve_device, torch_dtype

if TYPE_CHECKING:
    from dyncal.telemetry import TelemetryWriter

__all__ = ["PackageRunner", "load_early_exit"]


@dataclass(slots=True)
class _Count:
    """A stage's calls and rows, kept outside ``nn.Module``'s attribute machinery (its ``__setattr__`` is slow)."""

    calls: int = 0
    rows: int = 0


class _StageProgram(nn.Module):
    """A loaded stage that counts its calls and the rows it computed.

    It runs the exported program's graph directly with the program's weights passed in,
    which skips the per-call input checks and pytree handling of
    :meth:`torch.export.ExportedProgram.module` (they cost more than a small stage's
    compute); the runner checks the input once, and what later stages receive comes from
    the earlier ones. The graph runs as lean code (:func:`~dyncal.analysis.lean.lean_function`:
    the same ops, weights bound once), and calling the stage skips ``nn.Module``'s hook
    dispatch while no hook is registered (:func:`~dyncal.analysis.lean.plain_call`). Programs
    with state other than weights, buffers and constants run through ``module()``.
    """

    def __init__(
        self,
        program: torch.export.ExportedProgram,
        batch_dims: Sequence[int | None],
        keep: Sequence[int] | None = None,
    ) -> None:
        from torch.export.graph_signature import InputKind, OutputKind

        super().__init__()
        self._where = next(((i, d) for i, d in enumerate(batch_dims) if d is not None), None)
        self.count = _Count()
        sig = program.graph_signature
        slots: list[torch.Tensor | None] = []
        direct = all(o.kind == OutputKind.USER_OUTPUT for o in sig.output_specs)
        for spec in sig.input_specs:
            if spec.kind == InputKind.USER_INPUT:
                slots.append(None)
            elif spec.kind == InputKind.PARAMETER or (spec.kind == InputKind.BUFFER and spec.persistent):
                slots.append(program.state_dict[str(spec.target)].detach())  # inference: no grad (a trace keeps it)
            elif spec.kind in (InputKind.BUFFER, InputKind.CONSTANT_TENSOR):
                value = program.constants[str(spec.target)]
                direct &= isinstance(value, torch.Tensor)
                slots.append(value if isinstance(value, torch.Tensor) else None)
            else:
                direct = False
        self._slots = slots
        self.graph: torch.fx.GraphModule = program.graph_module if direct else program.module()
        self._direct = direct
        if keep is not None:  # only these outputs (the carry, for the plain deployment): nothing else runs
            self.graph = cut_outputs(self.graph, keep, "PlainStage")
        weights = {i: t for i, t in enumerate(slots) if t is not None}
        self._lean = lean_function(self.graph, weights) if direct else None

    def __call__(self, *args: Any) -> Any:
        if plain_call(self):  # what nn.Module.__call__ would do, without its dispatch
            return self.forward(*args)
        return super().__call__(*args)

    def forward(self, *args: Any) -> Any:
        count = self.count
        count.calls += 1
        if self._where is not None:
            i, d = self._where
            count.rows += int(args[i].shape[d])
        if self._lean is not None:
            return self._lean(*args)
        if not self._direct:
            return self.graph(*args)
        it = iter(args)
        return self.graph(*[next(it) if t is None else t for t in self._slots])


class _Chain(nn.Module):
    """Stages cut to their carry, run one after the other: ``x -> (logits of the last exit,)``."""

    def __init__(self, parts: Sequence[nn.Module]) -> None:
        super().__init__()
        self.parts = nn.ModuleList(parts)

    def forward(self, *x: torch.Tensor) -> tuple[Any, ...]:
        carry: tuple[Any, ...] = x
        for part in self.parts:
            carry = tuple(part(*carry))
        return carry


class PackageRunner(EarlyExitRunner):
    """The early exit of an exported package (:func:`load_early_exit` makes one).

    A drop-in :class:`~dyncal.analysis.early_exit.EarlyExitRunner`: ``runner(x)`` takes a batch
    ``(B, *input_shape)`` and returns ``(exits, predictions)``, int64 ``(B,)`` each on the
    runner's device, exits from 0. Rows that leave are cut from the batch; later stages
    never run once nobody is left.

    Attributes:
        path: The package directory.
        manifest: Its manifest.
        manifest_sha256: SHA-256 of ``manifest.json`` as loaded (pin it to pin the package).
        device: Where the stages run.
        key_id: Id of the key whose signature was verified when loading, or None (no ``verify_key``).
        telemetry: The telemetry writer (``load_early_exit(telemetry=DIR)``), or None.
    """

    def __init__(
        self,
        path: Path,
        manifest: package.PackageManifest,
        programs: Sequence[torch.export.ExportedProgram],
        device: torch.device,
        manifest_sha256: str,
    ) -> None:
        self.path = path
        self.manifest = manifest
        self.manifest_sha256 = manifest_sha256
        self.key_id: str | None = None
        self.telemetry: TelemetryWriter | None = None
        self._programs = tuple(programs)
        self._dtype = torch_dtype(manifest.input_dtype, f"package '{path}' input dtype")
        self.device = device
        self._plain: Stages | None = None
        super().__init__(self._stages_on(device), manifest.thresholds, manifest.temperatures, manifest.score)

    def _programs_on(self, device: torch.device, plain: bool = False) -> list[_StageProgram]:
        """Every stage's program on ``device``; ``plain``: each cut to its carry, the last to its logits."""
        from torch.export.passes import move_to_device_pass

        programs = []
        last = len(self._programs) - 1
        inputs = (0,) * (1 if self.manifest.inputs is None else len(self.manifest.inputs.inputs))  # batch-major
        for i, program in enumerate(self._programs):
            ep = program if device.type == "cpu" else move_to_device_pass(program, device)
            dims = inputs if i == 0 else self.manifest.stages[i - 1].carry_batch_dims
            keep = None
            if plain:  # the carry only (no head runs); the last stage its logits
                keep = [0] if i == last else list(range(1, 1 + len(self.manifest.stages[i].carry_batch_dims)))
            programs.append(_StageProgram(ep, dims, keep))
        return programs

    def _stages_on(self, device: torch.device) -> Stages:
        return Stages(
            self._programs_on(device),
            batch_dims=[s.carry_batch_dims for s in self.manifest.stages],
            source="package",
            dynamic_batch=True,
            inputs=self.manifest.inputs,
        )

    def _plain_stages_on(self, device: torch.device) -> Stages:
        """The plain deployment as one stage: each stage cut to its carry, the last whole."""
        chain = _Chain(self._programs_on(device, plain=True))
        return Stages([chain], batch_dims=[()], source="plain", dynamic_batch=True, inputs=self.manifest.inputs)

    def plain_runner(self) -> EarlyExitRunner:
        """The plain deployment's runner (``runner(x) -> (exits, predictions)``, every exit the last).

        The baseline ``dyncal verify --package`` times: the stages without their
        intermediate heads and without exit decisions, on the runner's device.
        """
        return plain_runner(self._plain_stages_on(self.device), self.score)

    @torch.inference_mode()
    def plain_model(self, x: Any) -> torch.Tensor:
        """The last exit's logits ``(B, C)`` computed as the plain deployment (no intermediate head runs).

        What this package would deploy without early exit; compare with :meth:`__call__`'s cost.

        Raises:
            DyncalError: ``x`` does not fit the package's input signature or device.
        """
        self._check_input(x)
        if self._plain is None:
            self._plain = self._plain_stages_on(self.device)
        logits: torch.Tensor = self._plain.run(x)[0]
        return logits

    def to(self, device: torch.device | str) -> PackageRunner:
        """Run the stages on ``device`` (``cpu``, ``cuda``, ``cuda:N``) from now on; returns ``self``."""
        dev = _pinned(str(device))
        self.stages = self._stages_on(dev)
        self.device = dev
        self._plain = None
        return self

    @property
    def stage_rows(self) -> list[int]:
        """Rows each stage has computed since loading (or :meth:`reset_counts`), ``K`` ints.

        With an early exit, stage ``k`` sees only the rows that stayed past exit ``k - 1``.
        """
        return [m.count.rows for m in self._counters()]

    @property
    def stage_calls(self) -> list[int]:
        """Calls of each stage since loading (or :meth:`reset_counts`), ``K`` ints."""
        return [m.count.calls for m in self._counters()]

    def reset_counts(self) -> None:
        """Zero :attr:`stage_rows` and :attr:`stage_calls`."""
        for m in self._counters():
            m.count = _Count()

    def _counters(self) -> list[_StageProgram]:
        return [m for m in self.stages.modules if isinstance(m, _StageProgram)]

    @torch.inference_mode()
    def full_model(self, x: Any) -> list[torch.Tensor]:
        """Every exit's logits for the whole batch, no sample leaving: the package's plain model.

        Returns:
            ``K`` tensors ``(B, C)``, exit 1 first (what the model returns).
        """
        self._check_input(x)
        return self.stages.run(x)

    def _check_input(self, x: Any) -> None:
        """Refuse a batch that does not fit the package's input signature or device (one line)."""
        m = self.manifest
        if m.inputs is not None:  # several inputs: each checked, named in the message
            m.inputs.check(x, what="the package's inputs")
            for spec, t in zip(m.inputs.inputs, m.inputs.flatten(x), strict=True):
                longer = [int(t.shape[d + 1]) for d in spec.dynamic if spec.longest and t.shape[d + 1] > spec.longest]
                if longer:
                    raise DyncalError(
                        f"the package's inputs: input '{spec.name}' has {longer[0]} positions; the model takes at most "
                        f"{spec.longest} (its export proved that bound: shorten or split the sequence)"
                    )
                if t.device != self.device:
                    raise DyncalError(f"input '{spec.name}' on {t.device} but the package runs on {self.device}")
            return
        if not isinstance(x, torch.Tensor):
            raise DyncalError(f"the package takes a tensor (B, {', '.join(map(str, m.input_shape))}), got {type(x)}")
        if tuple(x.shape[1:]) != m.input_shape or x.ndim != len(m.input_shape) + 1:
            raise DyncalError(
                f"input of shape {tuple(x.shape)} but the package takes (B, {', '.join(map(str, m.input_shape))})"
            )
        if x.dtype != self._dtype:
            got = str(x.dtype).replace("torch.", "")
            raise DyncalError(f"input of dtype {got} but the package takes {m.input_dtype}")
        if x.device != self.device:
            raise DyncalError(f"input on {x.device} but the package runs on {self.device}; move it with x.to(...)")

    def __call__(
        self, *args: Any, request_ids: Sequence[str | None] | None = None, **named: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Early-exit a batch ``x`` ``(B, *input_shape)`` on the runner's device: ``runner(x)``.

        ``request_ids`` (one per row, or None; also as the second positional argument of a
        one-tensor package) go into the telemetry, to join labels that arrive later. A package
        of several inputs is called as its model is: ``runner(input_ids=..., attention_mask=...)``
        (dict inputs), ``runner(ids, mask)`` (tuple inputs), or with the tuple or dict itself.

        Returns:
            ``(exits, predictions)``, int64 ``(B,)`` each; exits are 0-based.

        Raises:
            DyncalError: The inputs do not fit the package's input signature or device.
        """
        x, request_ids = self._gather(args, named, request_ids)
        self._check_input(x)
        b = batch_size(x)
        if b == 0:
            empty = torch.empty((0,), dtype=torch.int64, device=self.device)
            return empty, empty.clone()
        if self.telemetry is not None:
            return observed_call(self, self.telemetry, x, request_ids, batch=b)
        return super().__call__(x)

    def _gather(
        self, args: tuple[Any, ...], named: dict[str, Any], request_ids: Sequence[str | None] | None
    ) -> tuple[Any, Sequence[str | None] | None]:
        """The inputs of a call made as the model is called, and the request ids."""
        sig = self.manifest.inputs
        if sig is None:  # one tensor: runner(x) or runner(x, request_ids)
            if named or not 1 <= len(args) <= 2:
                raise DyncalError(f"the package takes one tensor: runner(x), got {len(args)} inputs and {list(named)}")
            return args[0], args[1] if len(args) == 2 else request_ids
        if len(args) == 1 and not named and isinstance(args[0], (Mapping, tuple, list)):
            return (args[0] if isinstance(args[0], Mapping) else tuple(args[0])), request_ids
        if sig.kind == "dict":
            if args:
                raise DyncalError(f"the package takes keyword inputs ({', '.join(sig.names)}); call runner(name=...)")
            return named, request_ids
        if named:
            raise DyncalError(f"the package takes positional inputs ({sig.describe()}), got {', '.join(named)}")
        return args, request_ids

    def map(
        self, batches: Iterable[torch.Tensor], *, batch_size: int | None = None, max_pending: int | None = None
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The throughput mode (:meth:`EarlyExitRunner.map`), each batch checked as :meth:`__call__` checks it.

        Rows that continue past an exit are pooled across input batches, so every stage runs
        on full batches; results come out per input batch, in input order, each row with
        the exit and prediction :meth:`__call__` gives it.

        Raises:
            DyncalError: A batch does not fit the package's input signature or device (raised
                when the stream reaches it).
        """
        return super().map(self._checked(batches), batch_size=batch_size, max_pending=max_pending)

    def _checked(self, batches: Iterable[torch.Tensor]) -> Iterator[torch.Tensor]:
        for x in batches:
            self._check_input(x)
            yield x


def load_early_exit(
    path: str | os.PathLike[str],
    *,
    device: str = "cpu",
    verify_key: str | os.PathLike[str] | bytes | None = None,
    telemetry: str | os.PathLike[str] | None = None,
    shadow: float = 0.0,
    metrics: Any = None,
) -> PackageRunner:
    """Load an exported early-exit package; the model's code is not needed.

    With ``verify_key``, the package's signature (``dyncal export --sign-key``) is checked
    against the manifest's bytes before anything else is read: a package that is unsigned,
    signed with another key, or whose manifest changed since is refused. Then every file's
    SHA-256 is checked against the manifest, every archive is parsed and checked before torch
    reads it (:mod:`dyncal.archives`), and the thresholds against the decision fingerprint.
    Without a key the hashes catch damage but not a consistent forgery: anyone who can
    rewrite the package can rewrite its manifest too.

    Args:
        path: A package directory written by ``dyncal export``.
        device: ``cpu``, ``cuda`` or ``cuda:N`` (:meth:`PackageRunner.to` moves it later).
        verify_key: The key file the package was signed with (or the key itself as bytes).
        telemetry: A folder to write telemetry into (Parquet; needs pyarrow, the ``rollout`` extra),
            one row per request; None writes none.
        shadow: With ``telemetry``, the share of requests whose plain model runs too (the last
            exit's prediction recorded, for ``dyncal monitor``'s drop bound), in [0, 1].
        metrics: With ``telemetry``, Prometheus metrics: True (the global registry) or a registry.

    Returns:
        The runner: ``exits, preds = runner(x)``.

    Raises:
        DyncalError: Not a package, a signature that does not verify, a changed or missing
            file, an archive that is refused, or a manifest that does not hold together.

    Example::

        runner = dyncal.load_early_exit("pkg", verify_key="package.key")
        with torch.inference_mode():
            for x in batches:                     # (B, *runner.manifest.input_shape)
                exits, preds = runner(x)
    """
    path = Path(path)
    if path.name.endswith(PARTIAL_SUFFIX):
        package.read_manifest(path)  # refuses an unfinished export with its own message
    secret = None if verify_key is None else package.read_key(verify_key, "verify_key")
    if telemetry is None and (shadow or metrics is not None):
        raise DyncalError(f"{param('shadow')} and {param('metrics')} need {param('telemetry')}: a folder to write into")
    runner = open_package(path, device, secret)
    if telemetry is not None:
        runner.telemetry = open_telemetry(runner, telemetry, shadow=shadow, metrics=metrics)
    return runner


def _pinned(device: str) -> torch.device:
    """``device`` resolved, a bare ``cuda`` pinned to the current CUDA device (so moves compare equal)."""
    dev = resolve_device(device)
    return torch.device("cuda", torch.cuda.current_device()) if dev.type == "cuda" and dev.index is None else dev


def open_package(path: Path, device: str, secret: bytes | None = None) -> PackageRunner:
    """Load the package in the folder ``path`` as it is, the folder of an export in progress too.

    Args:
        path: The package's folder.
        device: ``cpu``, ``cuda`` or ``cuda:N``.
        secret: The key whose signature must verify, or None.

    Raises:
        DyncalError: See :func:`load_early_exit`.
    """
    raw = package.manifest_bytes(path)
    key_id = None if secret is None else package.verify_signature(path, raw, secret)
    manifest = package.parse_manifest(raw, path / package.MANIFEST)
    dev = _pinned(device)
    stage_files = {s.file for s in manifest.stages}
    for name, sha in sorted(manifest.files.items()):
        if name not in stage_files:  # no other files today; hash anything listed
            data = package.read_package_file(path / name, archives.ARCHIVE_LIMIT_BYTES)
            if hashlib.sha256(data).hexdigest() != sha:
                raise DyncalError(f"package file '{path / name}' does not match its SHA-256 in the manifest")
    programs = [
        load_exported(
            path / s.file, what=f"package stage {i + 1}", sha256=manifest.files[s.file], advice="re-export the package"
        )
        for i, s in enumerate(manifest.stages)
    ]
    runner = PackageRunner(path, manifest, programs, dev, hashlib.sha256(raw).hexdigest())
    runner.key_id = key_id
    return runner
