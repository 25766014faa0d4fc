"""A model's inputs: one tensor, a tuple of tensors, or a dict of named tensors.

This module is the one place that knows input structures. A *batch* of inputs is

- a tensor ``(B, ...)`` (an image model: ``model(x)``),
- a tuple of tensors, each ``(B, ...)`` (``model(*inputs)``), or
- a dict ``{name: (B, ...)}`` (``model(**inputs)``, e.g. ``input_ids`` and ``attention_mask``).

:class:`InputSignature` describes such a batch per input (name, dtype, per-sample shape,
which dimensions vary, the value range of integer inputs) and is what a run records. Every
other module calls a model, flattens inputs to positional tensors (the order stages and
``torch.export`` see), cuts rows, moves to a device and checks batches through it.

Names: ``input`` for a lone tensor, ``0, 1, ...`` for a tuple, the keys for a dict.

Example:
    >>> import torch
    >>> ids, mask = torch.tensor([[5, 7, 0], [3, 0, 0]]), torch.tensor([[1, 1, 0], [1, 0, 0]])
    >>> batch = {"input_ids": ids, "attention_mask": mask}
    >>> sig = InputSignature.of(batch)
    >>> sig.kind, sig.names
    ('dict', ('input_ids', 'attention_mask'))
    >>> flat = sig.flatten(batch); len(flat), sig.unflatten(flat).keys() == batch.keys()
    (2, True)
    >>> batch_size(take_rows(batch, torch.tensor([1])))
    1
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np
import torch

from dyncal.errors import DataError, param

__all__ = [
    "Inputs",
    "InputError",
    "InputSpec",
    "InputSignature",
    "as_inputs",
    "call_model",
    "flatten",
    "batch_size",
    "take_rows",
    "to_device",
    "is_single",
    "describe_inputs",
    "default_collate",
    "pad_collate",
    "resolve_collate",
]

Inputs = Any
"""A batch's inputs: ``torch.Tensor``, ``tuple[torch.Tensor, ...]`` or ``dict[str, torch.Tensor]``."""

Kind = Literal["tensor", "tuple", "dict"]

SINGLE_NAME = "input"
"""The name of a lone tensor input."""


class InputError(DataError):
    """A batch does not match the inputs a model takes (the message names the input and why)."""


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def _torch_dtype(name: str) -> torch.dtype:
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise InputError(f"unknown input dtype {name!r} in the input signature")
    return dtype


def as_inputs(x: Any, *, what: str = "the inputs") -> Inputs:
    """``x`` as inputs: numpy arrays become tensors, lists become tuples; anything else is refused.

    Raises:
        InputError: ``x`` is not a tensor/array, a tuple/list of them, or a dict of str to them.

    Example:
        >>> as_inputs((np.zeros(2), torch.ones(1)))[0].dtype
        torch.float64
        >>> as_inputs({"ids": "hello"})
        Traceback (most recent call last):
        ...
        dyncal.inputs.InputError: the inputs: input 'ids' is str, expected a tensor (add a transform)
    """

    def one(v: Any, name: str) -> torch.Tensor:
        if isinstance(v, np.ndarray):
            return torch.from_numpy(v)
        if isinstance(v, torch.Tensor):
            return v
        raise InputError(f"{what}: input '{name}' is {type(v).__name__}, expected a tensor (add a transform)")

    if isinstance(x, (torch.Tensor, np.ndarray)):
        return one(x, SINGLE_NAME)
    if isinstance(x, (tuple, list)):
        if not x:
            raise InputError(f"{what}: an empty {type(x).__name__}; expected a tensor, a tuple or a dict of tensors")
        return tuple(one(v, str(i)) for i, v in enumerate(x))
    if isinstance(x, Mapping):
        if not x or not all(isinstance(k, str) and k.isidentifier() for k in x):
            raise InputError(f"{what}: a dict needs keys that are argument names, got {list(x)[:4]}")
        return {k: one(v, k) for k, v in x.items()}
    raise InputError(
        f"{what} are {type(x).__name__}; expected a tensor, a tuple of tensors or a dict of str to tensors"
    )


def _kind(x: Inputs) -> Kind:
    return "tensor" if isinstance(x, torch.Tensor) else "dict" if isinstance(x, Mapping) else "tuple"


def _named(x: Inputs) -> list[tuple[str, torch.Tensor]]:
    if isinstance(x, torch.Tensor):
        return [(SINGLE_NAME, x)]
    if isinstance(x, Mapping):
        return list(x.items())
    return [(str(i), t) for i, t in enumerate(x)]


def flatten(x: Inputs) -> tuple[torch.Tensor, ...]:
    """The tensors of ``x`` in order (a dict's in its key order).

    Example:
        >>> [t.tolist() for t in flatten({"a": torch.tensor([1]), "b": torch.tensor([2])})]
        [[1], [2]]
    """
    return tuple(t for _, t in _named(x))


def is_single(x: Inputs) -> bool:
    """Whether ``x`` is one tensor (the image-model case).

    Example:
        >>> is_single(torch.zeros(2)), is_single((torch.zeros(2),))
        (True, False)
    """
    return isinstance(x, torch.Tensor)


def call_model(model: Callable[..., Any], x: Inputs) -> Any:
    """``model(x)``, ``model(*x)`` or ``model(**x)`` by the structure of ``x``.

    Example:
        >>> call_model(lambda a, b: a + b, (torch.tensor(1), torch.tensor(2))).item()
        3
    """
    if isinstance(x, torch.Tensor):
        return model(x)
    if isinstance(x, Mapping):
        return model(**x)
    return model(*x)


def batch_size(x: Inputs) -> int:
    """Rows of the batch (the first dimension of its first tensor).

    Example:
        >>> batch_size((torch.zeros(3, 4), torch.zeros(3)))
        3
    """
    first = flatten(x)[0]
    if first.ndim == 0:
        raise InputError("an input is a scalar; every input needs the batch as its first dimension")
    return int(first.shape[0])


def _assemble(kind: Kind, names: Sequence[str], tensors: Sequence[torch.Tensor]) -> Inputs:
    """Tensors in the structure ``kind``: the lone tensor, a tuple, or a dict keyed by ``names``."""
    if kind == "tensor":
        return tensors[0]
    return dict(zip(names, tensors, strict=True)) if kind == "dict" else tuple(tensors)


def _rebuild(x: Inputs, fn: Callable[[torch.Tensor], torch.Tensor]) -> Inputs:
    named = _named(x)
    return _assemble(_kind(x), [n for n, _ in named], [fn(t) for _, t in named])


def take_rows(x: Inputs, rows: torch.Tensor | slice) -> Inputs:
    """The rows ``rows`` (indices, a bool mask or a slice) of every input together.

    Example:
        >>> ids, mask = take_rows((torch.tensor([[1, 2], [3, 0]]), torch.tensor([[1, 1], [1, 0]])), torch.tensor([1]))
        >>> ids.tolist(), mask.tolist()
        ([[3, 0]], [[1, 0]])
    """
    return _rebuild(x, lambda t: t[rows])


def to_device(x: Inputs, device: torch.device | str, *, non_blocking: bool = False) -> Inputs:
    """Every input moved to ``device``.

    Example:
        >>> to_device({"a": torch.zeros(1)}, "cpu")["a"].device.type
        'cpu'
    """
    return _rebuild(x, lambda t: t.to(device, non_blocking=non_blocking))


def describe_inputs(x: Inputs) -> str:
    """The inputs' shapes and dtypes in a few words, for messages.

    Example:
        >>> describe_inputs({"ids": torch.zeros(2, 5, dtype=torch.int64)})
        'ids (2, 5) int64'
    """
    if isinstance(x, torch.Tensor):
        return f"{tuple(x.shape)} {_dtype_name(x.dtype)}"
    return ", ".join(f"{n} {tuple(t.shape)} {_dtype_name(t.dtype)}" for n, t in _named(x))


@dataclass(frozen=True)
class InputSpec:
    """One input of a model.

    Attributes:
        name: ``input`` (a lone tensor), ``0, 1, ...`` (a tuple) or the dict key.
        dtype: Dtype name (``float32``, ``int64``).
        shape: Per-sample shape (without the batch); a dynamic dimension holds the largest size seen.
        dynamic: The per-sample dimensions whose size varies (a sequence length), 0-based
            after the batch; the batch dimension is always dynamic.
        value_range: ``(low, high)``, the smallest and largest value seen, for integer inputs
            (token ids: probes draw from it); None for floating inputs or when not known.
        longest: The largest size of the dynamic dimensions where the model's export proved a
            bound (512 positions); None: none. A package's runner refuses longer inputs.

    Example:
        >>> InputSpec("input_ids", "int64", (32,), dynamic=(0,), value_range=(0, 99)).batch_shape()
        'B, L'
    """

    name: str
    dtype: str
    shape: tuple[int, ...]
    dynamic: tuple[int, ...] = ()
    value_range: tuple[int, int] | None = None
    longest: int | None = None

    def batch_shape(self) -> str:
        """The batch shape in symbols: ``B`` for the batch, ``L`` for a dynamic dimension."""
        return ", ".join(["B", *("L" if d in self.dynamic else str(s) for d, s in enumerate(self.shape))])

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "name": self.name,
            "dtype": self.dtype,
            "shape": list(self.shape),
            "dynamic": list(self.dynamic),
            "value_range": None if self.value_range is None else list(self.value_range),
            **({} if self.longest is None else {"longest": self.longest}),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> InputSpec:
        """Read :meth:`to_dict`'s form; a malformed one is an :class:`InputError`."""
        try:
            low_high = d.get("value_range")
            spec = cls(
                name=str(d["name"]),
                dtype=str(d["dtype"]),
                shape=tuple(int(v) for v in d["shape"]),
                dynamic=tuple(int(v) for v in d.get("dynamic") or ()),
                value_range=None if low_high is None else (int(low_high[0]), int(low_high[1])),
                longest=None if d.get("longest") is None else int(d["longest"]),
            )
        except (KeyError, TypeError, ValueError, IndexError) as e:
            raise InputError(f"a malformed input signature entry {dict(d)!r}: {type(e).__name__}: {e}") from None
        _torch_dtype(spec.dtype)
        if any(s < 1 for s in spec.shape) or any(not 0 <= v < len(spec.shape) for v in spec.dynamic):
            raise InputError(f"input '{spec.name}': malformed shape {list(spec.shape)} / dynamic {list(spec.dynamic)}")
        return spec


def _value_range(t: torch.Tensor) -> tuple[int, int] | None:
    if t.dtype.is_floating_point or t.dtype.is_complex or t.numel() == 0:
        return None
    return int(t.min()), int(t.max())


@dataclass(frozen=True)
class InputSignature:
    """The inputs a model takes: their structure and, per input, an :class:`InputSpec`.

    Attributes:
        kind: ``"tensor"``, ``"tuple"`` or ``"dict"``.
        inputs: One spec per input, in call order (a dict's key order).

    Example:
        >>> sig = InputSignature.of((torch.zeros(4, 3), torch.ones(4, 7, dtype=torch.int64)))
        >>> sig = sig.merge(InputSignature.of((torch.zeros(2, 3), torch.ones(2, 5, dtype=torch.int64))))
        >>> sig.describe()
        '0 float32 (B, 3); 1 int64 (B, L)'
        >>> InputSignature.from_dict(sig.to_dict()) == sig
        True
    """

    kind: Kind
    inputs: tuple[InputSpec, ...] = field(default=())

    @property
    def names(self) -> tuple[str, ...]:
        """The inputs' names, in order."""
        return tuple(s.name for s in self.inputs)

    @property
    def single(self) -> bool:
        """Whether the model takes one tensor."""
        return self.kind == "tensor"

    @property
    def has_dynamic(self) -> bool:
        """Whether any input has a dynamic dimension besides the batch."""
        return any(s.dynamic for s in self.inputs)

    def describe(self) -> str:
        """The inputs in one line: ``name dtype (B, L)`` each."""
        return "; ".join(f"{s.name} {s.dtype} ({s.batch_shape()})" for s in self.inputs)

    @classmethod
    def of(cls, x: Inputs) -> InputSignature:
        """The signature of one batch (nothing dynamic but the batch yet: see :meth:`merge`)."""
        x = as_inputs(x)
        specs = []
        for name, t in _named(x):
            if t.ndim == 0:
                raise InputError(f"input '{name}' is a scalar; every input needs the batch as its first dimension")
            specs.append(InputSpec(name, _dtype_name(t.dtype), tuple(int(s) for s in t.shape[1:]), (), _value_range(t)))
        return cls(_kind(x), tuple(specs))

    @classmethod
    def of_sample(cls, x: Inputs) -> InputSignature:
        """The signature of one data set item's inputs (no batch dimension)."""
        return cls.of(_rebuild(as_inputs(x), lambda t: t.unsqueeze(0)))

    def merge(self, other: InputSignature) -> InputSignature:
        """Both signatures as one: sizes that differ become dynamic, value ranges join.

        Raises:
            InputError: The structure, names, dtypes or ranks differ (naming the input).
        """
        if (self.kind, self.names) != (other.kind, other.names):
            raise InputError(
                f"the inputs changed from {self.kind} ({', '.join(self.names)}) to {other.kind} "
                f"({', '.join(other.names)}); every batch must have the same inputs"
            )
        merged = []
        for a, b in zip(self.inputs, other.inputs, strict=True):
            if a.dtype != b.dtype or len(a.shape) != len(b.shape):
                raise InputError(
                    f"input '{a.name}' changed from {a.dtype} {list(a.shape)} to {b.dtype} {list(b.shape)} "
                    "per sample; every batch must give each input the same dtype and rank"
                )
            dynamic = tuple(
                d for d in range(len(a.shape)) if d in a.dynamic or d in b.dynamic or a.shape[d] != b.shape[d]
            )
            shape = tuple(max(p, q) for p, q in zip(a.shape, b.shape, strict=True))
            ranges = [r for r in (a.value_range, b.value_range) if r is not None]
            value_range = (min(r[0] for r in ranges), max(r[1] for r in ranges)) if ranges else None
            merged.append(InputSpec(a.name, a.dtype, shape, dynamic, value_range))
        return InputSignature(self.kind, tuple(merged))

    def check(self, x: Inputs, *, what: str = "the inputs") -> None:
        """Refuse a batch that does not fit: one line naming the input and why.

        Raises:
            InputError: Another structure, a missing or extra input, another dtype or rank,
                another size in a fixed dimension, or inputs with different batch sizes.

        Example:
            >>> sig = InputSignature.of({"ids": torch.zeros(2, 4, dtype=torch.int64)})
            >>> sig.check({"ids": torch.zeros(2, 4)})
            Traceback (most recent call last):
            ...
            dyncal.inputs.InputError: the inputs: input 'ids' has dtype float32, expected int64
        """
        x = as_inputs(x, what=what)
        if _kind(x) != self.kind:
            raise InputError(f"{what} are a {_kind(x)}, expected a {self.kind} ({self.describe()})")
        got = dict(_named(x))
        for name in self.names:
            if name not in got:
                raise InputError(f"{what}: input '{name}' is missing (expected {self.describe()})")
        extra = [n for n in got if n not in self.names]
        if extra:
            raise InputError(f"{what}: unexpected input '{extra[0]}' (expected {self.describe()})")
        rows = None
        for spec in self.inputs:
            t = got[spec.name]
            if _dtype_name(t.dtype) != spec.dtype:
                raise InputError(f"{what}: input '{spec.name}' has dtype {_dtype_name(t.dtype)}, expected {spec.dtype}")
            if t.ndim != len(spec.shape) + 1:
                raise InputError(
                    f"{what}: input '{spec.name}' has shape {tuple(t.shape)}, expected ({spec.batch_shape()})"
                )
            for d, size in enumerate(spec.shape):
                if d not in spec.dynamic and int(t.shape[d + 1]) != size:
                    raise InputError(
                        f"{what}: input '{spec.name}' has size {int(t.shape[d + 1])} in dimension {d + 1}, "
                        f"expected {size} (shape ({spec.batch_shape()}))"
                    )
            if rows is not None and int(t.shape[0]) != rows:
                raise InputError(f"{what}: input '{spec.name}' has {int(t.shape[0])} rows, the others {rows}")
            rows = int(t.shape[0])

    def flatten(self, x: Inputs) -> tuple[torch.Tensor, ...]:
        """The tensors of ``x`` in the signature's order (what stages and ``torch.export`` take)."""
        if isinstance(x, Mapping):
            return tuple(x[n] for n in self.names)
        return flatten(x)

    def unflatten(self, flat: Sequence[torch.Tensor]) -> Inputs:
        """Positional tensors back into the model's structure."""
        if len(flat) != len(self.inputs):
            raise InputError(f"got {len(flat)} input tensors, expected {len(self.inputs)} ({self.describe()})")
        return _assemble(self.kind, self.names, flat)

    def call(self, model: Callable[..., Any], flat: Sequence[torch.Tensor]) -> Any:
        """``model`` called on positional tensors, in the model's own structure."""
        return call_model(model, self.unflatten(flat))

    def example(
        self,
        batch_size: int,
        *,
        seq_len: int | None = None,
        seed: int = 0,
        device: torch.device | str = "cpu",
    ) -> Inputs:
        """A reproducible random batch of this signature.

        Floating inputs are normal; integer inputs are uniform over their recorded
        ``value_range`` (an input that only held two adjacent values, a mask, is all its
        larger value: every position attended), else 1. Dynamic dimensions get ``seq_len``
        (default: the largest size seen).

        Example:
            >>> ids = InputSpec("ids", "int64", (8,), dynamic=(0,), value_range=(5, 99))
            >>> mask = InputSpec("mask", "int64", (8,), dynamic=(0,), value_range=(0, 1))
            >>> sig = InputSignature("dict", (ids, mask))
            >>> x = sig.example(2, seq_len=3)
            >>> tuple(x["ids"].shape), bool((x["ids"] >= 5).all()), x["mask"].tolist()
            ((2, 3), True, [[1, 1, 1], [1, 1, 1]])
        """
        g = torch.Generator().manual_seed(seed + batch_size)
        out = []
        for spec in self.inputs:
            shape = (batch_size, *(seq_len if seq_len and d in spec.dynamic else s for d, s in enumerate(spec.shape)))
            dtype = _torch_dtype(spec.dtype)
            if dtype.is_floating_point:
                t = torch.randn(shape, generator=g).to(dtype)
            elif spec.value_range is None or spec.value_range[1] - spec.value_range[0] <= 1:
                fill = 1 if spec.value_range is None else spec.value_range[1]
                t = torch.full(shape, fill, dtype=dtype)
            else:
                low, high = spec.value_range
                t = torch.randint(low, high + 1, shape, generator=g).to(dtype)
            out.append(t.to(device))
        return self.unflatten(out)

    def with_dynamic(self, name: str, dims: Sequence[int]) -> InputSignature:
        """The signature with ``dims`` (per-sample) of input ``name`` marked dynamic."""
        specs = [replace(s, dynamic=tuple(sorted({*s.dynamic, *dims}))) if s.name == name else s for s in self.inputs]
        return replace(self, inputs=tuple(specs))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (``run.json``'s ``inputs``)."""
        return {"kind": self.kind, "inputs": [s.to_dict() for s in self.inputs]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> InputSignature:
        """Read :meth:`to_dict`'s form; a malformed one is an :class:`InputError`."""
        kind = d.get("kind") if isinstance(d, Mapping) else None
        raw = d.get("inputs") if isinstance(d, Mapping) else None
        if kind not in ("tensor", "tuple", "dict") or not isinstance(raw, list) or not raw:
            raise InputError(f"a malformed input signature {d!r}; expected kind tensor/tuple/dict and inputs")
        if not all(isinstance(s, Mapping) for s in raw):
            raise InputError(f"a malformed input signature {d!r}; each input must be a dict")
        specs = tuple(InputSpec.from_dict(s) for s in raw)
        if (kind == "tensor" and len(specs) != 1) or len({s.name for s in specs}) != len(specs):
            raise InputError(f"a malformed input signature: kind {kind} with inputs {[s.name for s in specs]}")
        return cls(kind, specs)

    @classmethod
    def single_tensor(cls, shape: Sequence[int], dtype: str) -> InputSignature:
        """The signature of a model taking one tensor ``(B, *shape)`` of ``dtype`` (an image model)."""
        return cls("tensor", (InputSpec(SINGLE_NAME, dtype, tuple(int(s) for s in shape)),))


# --------------------------------------------------------------------------- collation


def _stack(name: str, tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    shapes = {tuple(t.shape) for t in tensors}
    if len(shapes) > 1:
        raise InputError(
            f"input '{name}' has samples of different shapes ({', '.join(map(str, sorted(shapes)[:3]))}); pad them "
            f"to one length in the data set, or pass `collate` pkg.module:fn that pads each batch "
            "(dyncal.inputs:pad_collate right-pads 1-D sequences with 0)"
        )
    return torch.stack(list(tensors))


def _collate(items: Sequence[Any], combine: Callable[[str, Sequence[torch.Tensor]], torch.Tensor]) -> tuple[Any, Any]:
    if not items:
        raise InputError("cannot collate an empty batch")
    first = as_inputs(items[0][0], what="data set item inputs")
    columns: dict[str, list[torch.Tensor]] = {name: [] for name, _ in _named(first)}
    for item in items:
        x = as_inputs(item[0], what="data set item inputs")
        named = dict(_named(x))
        if _kind(x) != _kind(first) or named.keys() != columns.keys():
            raise InputError("data set items have different inputs; every item must have the same structure")
        for name in columns:
            columns[name].append(named[name])
    stacked = [combine(name, ts) for name, ts in columns.items()]
    labels = torch.as_tensor([int(item[1]) for item in items], dtype=torch.int64)
    return _assemble(_kind(first), list(columns), stacked), labels


def default_collate(items: Sequence[Any]) -> tuple[Inputs, torch.Tensor]:
    """``[(inputs, label), ...]`` as one batch ``(inputs, labels)``: every input stacked.

    Samples of one input must have one shape; otherwise the error says to pass a collate
    function (``--collate pkg.module:fn``) that pads them.

    Example:
        >>> x, y = default_collate([({"ids": torch.tensor([1, 2])}, 0), ({"ids": torch.tensor([3, 4])}, 1)])
        >>> x["ids"].tolist(), y.tolist()
        ([[1, 2], [3, 4]], [0, 1])
    """
    return _collate(items, _stack)


def _pad(name: str, tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    if all(t.ndim == 1 for t in tensors) and len({int(t.shape[0]) for t in tensors}) > 1:
        return torch.nn.utils.rnn.pad_sequence(list(tensors), batch_first=True)  # zeros, the first one's dtype
    return _stack(name, tensors)


def pad_collate(items: Sequence[Any]) -> tuple[Inputs, torch.Tensor]:
    """Like :func:`default_collate`, but 1-D inputs of different lengths are right-padded with 0 to the longest.

    Ids and an attention mask padded together stay aligned (the mask's padding is 0: not
    attended). Use it as ``--collate dyncal.inputs:pad_collate``.

    Example:
        >>> a = (torch.tensor([5, 6, 7]), torch.tensor([1, 1, 1]))
        >>> items = [(a, 0), ((torch.tensor([8]), torch.tensor([1])), 1)]
        >>> (ids, mask), y = pad_collate(items)
        >>> ids.tolist(), mask.tolist()
        ([[5, 6, 7], [8, 0, 0]], [[1, 1, 1], [1, 0, 0]])
    """
    return _collate(items, _pad)


def resolve_collate(spec: str | None, search_path: Any = None) -> Callable[[Sequence[Any]], Any]:
    """The collate function named by ``collate`` (``pkg.module:fn``), else :func:`default_collate`.

    Raises:
        DyncalError: It cannot be imported or is not callable.

    Example:
        >>> resolve_collate("dyncal.inputs:pad_collate") is pad_collate, resolve_collate(None) is default_collate
        (True, True)
    """
    if spec is None:
        return default_collate
    from dyncal.specs import import_object

    fn = import_object(spec, what=param("collate"), search_path=search_path)
    if not callable(fn):
        raise DataError(f"{param('collate')}: '{spec}' is not callable; name a function fn(items) -> (inputs, labels)")
    return fn  # type: ignore[no-any-return]
