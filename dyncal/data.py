"""Data set specs: ``imagefolder:DIR``, ``pkg.module:factory`` and ``FILE.npz``.

Every data set yields ``(input, label)`` items in a fixed order; collect stores the
index of each row so results can be traced back to the data.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import Dataset

from dyncal.artifacts.run_import import NPZ_READ_ERRORS
from dyncal.errors import DataError, DyncalError, describe
from dyncal.inputs import InputError, InputSignature, as_inputs, resolve_collate, to_device
from dyncal.specs import call_factory, is_named

if TYPE_CHECKING:
    from dyncal.artifacts.run import Run

log = logging.getLogger(__name__)

__all__ = [
    "ImageTransform",
    "NpzDataset",
    "load_dataset",
    "dataset_for_run",
    "item_signature",
    "run_rows",
    "probe_batch",
    "loader_collate",
    "batch_inputs",
]


@dataclass(frozen=True)
class ImageTransform:
    """The usual evaluation transform for ``imagefolder:`` data.

    Attributes:
        resize: Short side after resizing (default 256).
        crop: Centre crop size (default 224).
        mean: Per-channel mean for normalisation (ImageNet's by default).
        std: Per-channel standard deviation (ImageNet's by default).
    """

    resize: int = 256
    crop: int = 224
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)

    def __post_init__(self) -> None:
        """Check the sizes and the normalisation when built (before any model or data set is loaded)."""
        if self.resize < 1 or self.crop < 1 or self.crop > self.resize:
            raise DataError(f"need 1 <= `crop` <= `resize`, got crop={self.crop}, resize={self.resize}")
        finite = all(math.isfinite(v) for v in (*self.mean, *self.std))
        if len(self.mean) != len(self.std) or not self.mean or not finite or any(not s > 0 for s in self.std):
            raise DataError(
                f"`mean` and `std` need the same number of finite values, std > 0; got {self.mean}, {self.std}"
            )

    def build(self) -> Any:
        """The torchvision transform."""
        from torchvision import transforms

        return transforms.Compose(
            [
                transforms.Resize(self.resize),
                transforms.CenterCrop(self.crop),
                transforms.ToTensor(),
                transforms.Normalize(list(self.mean), list(self.std)),
            ]
        )


class NpzDataset(Dataset[tuple[torch.Tensor, int]]):
    """Items ``(inputs[i], labels[i])`` from an ``.npz`` with arrays ``inputs`` and ``labels``.

    Example:
        >>> import tempfile
        >>> p = tempfile.mktemp(suffix=".npz")
        >>> np.savez(p, inputs=np.zeros((3, 2), np.float32), labels=np.array([0, 1, 1]))
        >>> ds = NpzDataset(p); len(ds), ds[2][1]
        (3, 1)
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        path = Path(path)
        if not path.exists():
            raise DataError(f"data set: no such file '{path}'")
        try:
            with np.load(path, allow_pickle=False) as npz:
                missing = [k for k in ("inputs", "labels") if k not in npz.files]
                if missing:
                    raise DataError(
                        f"data set '{path}' has no array {missing[0]!r} (found: {', '.join(npz.files) or 'none'}); "
                        "it needs 'inputs' (N, ...) and 'labels' (N,)"
                    )
                inputs, labels = npz["inputs"], npz["labels"]
        except NPZ_READ_ERRORS as e:
            raise DataError(
                f"data set: cannot read '{path}' as .npz ({type(e).__name__}: {e}); is the file complete?"
            ) from e
        if labels.ndim != 1 or inputs.shape[0] != labels.shape[0]:
            raise DataError(
                f"data set '{path}': 'inputs' {inputs.shape} and 'labels' {labels.shape} must share N (labels 1-D)"
            )
        if not np.issubdtype(labels.dtype, np.integer):
            raise DataError(f"data set '{path}': 'labels' must be integers, got dtype {labels.dtype}")
        self.inputs = torch.from_numpy(np.ascontiguousarray(inputs))
        if self.inputs.is_floating_point():
            self.inputs = self.inputs.float()
        self.labels = labels.astype(np.int64)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.inputs[i], int(self.labels[i])


def load_dataset(
    spec: str,
    *,
    transform: ImageTransform | None = None,
    search_path: str | os.PathLike[str] | None = None,
) -> Dataset[Any]:
    """Open the data set named by ``spec``.

    Args:
        spec: ``imagefolder:DIR`` (torchvision ImageFolder with ``transform``),
            ``pkg.module:factory`` (a callable returning a ``Dataset`` of ``(input, label)``)
            or ``FILE.npz`` (arrays ``inputs`` and ``labels``).
        transform: Evaluation transform for ``imagefolder:`` (default :class:`ImageTransform`).
        search_path: A folder to import a ``pkg.module:factory`` from (the model's
            ``--model-path``: data and model code often live together).

    Returns:
        A map-style data set with ``len()``.

    Raises:
        DataError: Missing folder or file, nothing to read, or a factory that fails or
            returns something without ``__len__``/``__getitem__``.

    Example:
        >>> len(load_dataset("dyncal.demo:validation"))
        797
    """
    if spec.startswith("imagefolder:"):
        folder = Path(spec[len("imagefolder:") :])
        if not folder.is_dir():
            raise DataError(f"data set imagefolder: no such folder '{folder}'")
        from torchvision.datasets import ImageFolder

        try:
            folder_set: Dataset[Any] = ImageFolder(str(folder), transform=(transform or ImageTransform()).build())
            return folder_set
        except (FileNotFoundError, RuntimeError) as e:
            raise DataError(f"data set '{spec}': {e} (expected DIR/<class>/<image files>)") from e
    if spec.endswith(".npz"):
        return NpzDataset(spec)
    if ":" not in spec:
        raise DataError(f"the data set must be 'imagefolder:DIR', 'pkg.module:factory' or FILE.npz; got {spec!r}")
    dataset = call_factory(spec, what="the data set", search_path=search_path, error=DataError, makes="a Dataset")
    if not (hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__")):
        raise DataError(
            f"the data set: '{spec}()' returned {type(dataset).__name__}; expected a map-style Dataset "
            "with __len__ and __getitem__"
        )
    return dataset  # type: ignore[no-any-return]


def dataset_for_run(
    run: Run,
    *,
    data: str | None = None,
    search_path: str | os.PathLike[str] | None = None,
) -> Dataset[Any]:
    """Open the data set a run was collected from, with the image transform it recorded.

    Args:
        run: An opened run.
        data: Data spec overriding ``provenance.data`` (the recorded transform still applies).
        search_path: Folder to import a data factory from (default: the run's recorded
            ``model_path``, as collect's ``--model-path``).

    Returns:
        The data set; ``dataset[run.indices[i]]`` is row ``i``'s item.

    Raises:
        DataError: The run names no data set (imported runs) and none is given, its
            recorded transform is malformed, or the data set cannot be opened.

    Example:
        >>> import numpy as np, tempfile, pathlib
        >>> from dyncal import Provenance, import_arrays
        >>> prov = Provenance.here(model="m:f", data="dyncal.demo:validation", device="cpu")
        >>> run = import_arrays(np.zeros((2, 4, 10), np.float32), [0, 1],
        ...                     pathlib.Path(tempfile.mkdtemp()) / "r", provenance=prov)
        >>> len(dataset_for_run(run))
        797
    """
    prov = run.provenance
    spec = data or prov.data
    if not is_named(spec):
        raise DataError(f"run '{run.path}' does not name its data set (data: {prov.data!r}); pass `data`")
    tf = prov.extra.get("image_transform")
    transform = None
    if tf:
        try:
            transform = ImageTransform(
                resize=int(tf["resize"]),
                crop=int(tf["crop"]),
                mean=tuple(float(v) for v in tf["mean"]),
                std=tuple(float(v) for v in tf["std"]),
            )
        except (TypeError, KeyError, ValueError) as e:
            raise DataError(f"run '{run.path}' records a malformed image_transform {tf!r}: {e}") from e
    folder = search_path if search_path is not None else prov.extra.get("model_path")
    return load_dataset(spec, transform=transform, search_path=folder)


def item_signature(item: Any, index: int) -> InputSignature:
    """Check that a data set item is ``(inputs, integer label)``; the inputs' signature (one sample, no batch).

    The inputs are a tensor (or array), a tuple of them, or a dict of str to them
    (:mod:`dyncal.inputs`).

    Raises:
        DataError: The item is not a pair, an input is not a tensor/array (naming which),
            or the label is not an integer.

    Example:
        >>> item_signature(({"ids": torch.tensor([4, 9]), "mask": torch.ones(2, dtype=torch.int64)}, 1), 0).describe()
        'ids int64 (B, 2); mask int64 (B, 2)'
    """
    if not isinstance(item, (tuple, list)) or len(item) != 2:
        kind = (
            f"a {type(item).__name__} of length {len(item)}" if isinstance(item, (tuple, list)) else type(item).__name__
        )
        raise DataError(f"data set item {index} is {kind}; every item must be an (input, label) pair")
    x, y = item
    try:
        signature = InputSignature.of_sample(as_inputs(x, what=f"data set item {index}"))
    except InputError as e:
        raise DataError(str(e).replace(f"data set item {index} are ", f"data set item {index}: input is ")) from None
    if isinstance(y, torch.Tensor):
        if y.numel() != 1 or y.is_floating_point() or y.is_complex():
            raise DataError(f"data set item {index}: label {y!r} must be one integer class")
    elif not isinstance(y, (int, np.integer)) or isinstance(y, bool):
        raise DataError(f"data set item {index}: label {y!r} must be an integer class")
    return signature


def run_rows(
    run: Run,
    rows: Any,
    *,
    data: str | None = None,
    search_path: str | os.PathLike[str] | None = None,
    dataset: Dataset[Any] | None = None,
) -> tuple[Any, list[int]]:
    """The run's rows ``rows`` read back from its data set as one batch: ``(inputs, labels)``.

    A single-tensor run's inputs are stacked (as ever); other runs' go through the run's
    collate function (:func:`loader_collate`), so sequences are padded as when collected.

    Raises:
        DataError: The data set cannot be opened or read, or the run reads past its end.
        DyncalError: The recorded collate function cannot be imported.

    Example:
        >>> import tempfile, pathlib
        >>> from dyncal.models import load_model
        >>> from dyncal.verbs.collect import collect_run
        >>> run = collect_run(load_model("dyncal.demo:pretrained"), load_dataset("dyncal.demo:validation"),
        ...                   pathlib.Path(tempfile.mkdtemp()) / "r", data_spec="dyncal.demo:validation", limit=5)
        >>> x, labels = run_rows(run, [0, 3])
        >>> tuple(x.shape), labels == run.labels[[0, 3]].tolist()
        ((2, 1, 8, 8), True)
    """
    dataset = dataset if dataset is not None else dataset_for_run(run, data=data, search_path=search_path)
    where = np.asarray(run.indices[np.asarray(rows, dtype=np.int64)], dtype=np.int64)
    size = len(dataset)  # type: ignore[arg-type]
    if where.size and (where.min() < 0 or where.max() >= size):
        raise DataError(f"the data set has {size} items but the run reads item {int(where.max())}")
    collate = loader_collate(run, search_path)
    try:
        items = [dataset[int(i)] for i in where]
        labels = [int(item[1]) for item in items]
        if collate is None:
            return torch.stack([torch.as_tensor(item[0]) for item in items]), labels
        return collate(items)[0], labels
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001 - anything the user's data set or collate raises
        raise DataError(f"the run's inputs cannot be read ({describe(e)})") from e


def probe_batch(
    run: Run,
    signature: InputSignature,
    rows: int,
    data: str | None = None,
    search_path: str | os.PathLike[str] | None = None,
    device: torch.device | str = "cpu",
) -> tuple[Any, str | None]:
    """A batch of several inputs to probe a run's model with: its first rows read from its data set, else random.

    Real rows come first (token ids a model embeds are not random numbers); when the data
    set cannot be read, random inputs of ``signature`` (:meth:`InputSignature.example`).

    Returns:
        The batch on ``device``, and None for real rows or the signature described for random ones.
    """
    try:
        x, _ = run_rows(run, np.arange(min(rows, run.n)), data=data, search_path=search_path)
        signature.check(x, what="the run's data")
        return to_device(x, device), None
    except DyncalError as e:
        log.info("probing with random inputs of the run's signature: %s", e)
        return signature.example(rows, device=device), signature.describe()


def loader_collate(run: Run, search_path: str | os.PathLike[str] | None = None) -> Any:
    """The ``collate_fn`` to read a run's rows with a ``DataLoader``: the run's own, or None (torch's stacking).

    A single-tensor run collected without ``collate`` is read as ever (None); a multi-input run
    or one with a recorded collate uses that (``provenance.extra["collate"]``, else stacking).

    Raises:
        DyncalError: The recorded ``pkg.module:fn`` cannot be imported.
    """
    extra = run.provenance.extra
    if extra.get("inputs") is None and not extra.get("collate"):
        return None
    folder = search_path if search_path is not None else extra.get("model_path")
    return resolve_collate(extra.get("collate"), folder)


def batch_inputs(item: Any, data_name: str) -> Any:
    """The inputs of a batch a ``DataLoader`` gave (``(inputs, labels)``): a tensor, a tuple or a dict of tensors.

    Raises:
        DataError: They are something else (naming the data set).
    """
    x = item[0] if isinstance(item, (list, tuple)) else item
    try:
        return as_inputs(x, what=f"the data set '{data_name}' gives inputs that")
    except InputError:
        raise DataError(
            f"the data set '{data_name}' gives inputs of type {type(x).__name__}; expected tensors"
        ) from None
