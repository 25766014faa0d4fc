"""Deterministic image corruptions with severities: stress thresholds before a rollout.

``collect --perturb gaussian_noise:0.25,0.5 --perturb blur:1`` collects one run per
(corruption, severity) beside the clean one; this module holds the corruptions, the parser of
those specs and the data set wrapper that applies them. The families follow ImageNet-C
(Hendrycks & Dietterich, 2019), each with a physical severity rather than ImageNet-C's 1-5 levels:

==================  ======================================================  ================
name                what the severity is                                     allowed
==================  ======================================================  ================
``gaussian_noise``  standard deviation of added N(0, s²) noise, in pixels   (0, 10]
``blur``            standard deviation of a Gaussian blur, in pixels        (0, 50]
``jpeg``            JPEG quality (lower is worse; needs Pillow)             integer 1..100
``contrast``        factor on the distance from the image's mean           (0, 10], not 1
``brightness``      value added to every pixel (negative darkens)           [-1, 1], not 0
``shift``           translation in whole pixels, empty border filled black  integer 1..1000
==================  ======================================================  ================

Corruptions work on pixels in ``[0, 1]`` and clip their result to that range. Data sets
usually yield normalised tensors, so :class:`PerturbedDataset` takes the normalisation the
items carry (``pixel_mean``, ``pixel_std``: ``pixel = x * std + mean``), undoes it, corrupts,
and normalises again; an item whose pixels fall outside ``[0, 1]`` is refused with a line
naming those parameters, rather than corrupted on a wrong scale. Items are ``(C, H, W)`` (or
``(H, W)``) floating-point tensors; JPEG needs ``C`` of 1 or 3.

Every random draw (the noise, the shift's direction) comes from a generator seeded by
``(seed, item index, corruption)``, so a re-run, or the same item read by another worker,
is bit-identical.
"""

from __future__ import annotations

import difflib
import math
import numbers
import re
import zlib
from collections.abc import Sequence
from dataclasses import KW_ONLY, dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from dyncal.constraints import check
from dyncal.errors import DataError, DyncalError, param

__all__ = [
    "PERTURBATIONS",
    "Perturbation",
    "parse_perturbation",
    "parse_perturbations",
    "PerturbedDataset",
    "perturb_image",
    "perturb_batch",
    "perturbed_data_spec",
    "perturbation_of",
]

PERTURBATIONS: tuple[str, ...] = ("gaussian_noise", "blur", "jpeg", "contrast", "brightness", "shift")
"""The corruption families, in the order the report lists them."""

# (low, high, low included, integer) per family; "identity" severities are refused separately.
_RANGES: dict[str, tuple[float, float, bool, bool]] = {
    "gaussian_noise": (0.0, 10.0, False, False),
    "blur": (0.0, 50.0, False, False),
    "jpeg": (1.0, 100.0, True, True),
    "contrast": (0.0, 10.0, False, False),
    "brightness": (-1.0, 1.0, True, False),
    "shift": (1.0, 1000.0, True, True),
}
_IDENTITY = {"contrast": 1.0, "brightness": 0.0}
_EXAMPLE = "gaussian_noise:0.25,0.5"


@dataclass(frozen=True)
class Perturbation:
    """One corruption at one severity.

    Attributes:
        name: One of :data:`PERTURBATIONS`.
        severity: Its severity, in the family's unit (module docstring).

    Example:
        >>> p = Perturbation("gaussian_noise", 0.25)
        >>> str(p), p.slug
        ('gaussian_noise:0.25', 'gaussian_noise-0.25')
    """

    name: str
    severity: float

    def __post_init__(self) -> None:
        """Check the family and the severity's range."""
        if self.name not in _RANGES:
            raise DyncalError(_unknown(self.name))
        low, high, low_ok, integer = _RANGES[self.name]
        s = self.severity
        if isinstance(s, bool) or not isinstance(s, numbers.Real) or not math.isfinite(s):
            raise DyncalError(f"{self.name} severity must be a finite number, got {s!r}")
        if not ((low <= s if low_ok else low < s) and s <= high) or (integer and s != int(s)):
            kind = "an integer" if integer else "a number"
            span = f"{'[' if low_ok else '('}{low:g}, {high:g}]"
            raise DyncalError(f"{self.name} severity must be {kind} in {span}, got {s:g}")
        if _IDENTITY.get(self.name) == s:
            raise DyncalError(f"{self} changes nothing (the clean run is collected anyway); give another severity")
        object.__setattr__(self, "severity", float(s))

    def __str__(self) -> str:
        return f"{self.name}:{self.severity:g}"

    @property
    def slug(self) -> str:
        """A file-name-safe name, ``gaussian_noise-0.25``: the suffix of the run collected with it."""
        return f"{self.name}-{self.severity:g}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ``{"name": ..., "severity": ...}``."""
        return {"name": self.name, "severity": self.severity}

    def apply(self, pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """The corrupted image: ``pixels`` ``(C, H, W)`` float in ``[0, 1]``, result clipped to ``[0, 1]``.

        Example:
            >>> img = np.full((1, 4, 4), 0.5)
            >>> float(Perturbation("brightness", 0.25).apply(img, np.random.default_rng(0)).max())
            0.75
        """
        x = np.asarray(pixels, dtype=np.float64)
        s = self.severity
        if self.name == "gaussian_noise":
            out = x + s * rng.standard_normal(x.shape)
        elif self.name == "blur":
            from scipy.ndimage import gaussian_filter

            out = gaussian_filter(x, sigma=(0.0, s, s), mode="reflect")
        elif self.name == "jpeg":
            out = _jpeg(x, int(s))
        elif self.name == "contrast":
            mean = x.mean(axis=(1, 2), keepdims=True)
            out = (x - mean) * s + mean
        elif self.name == "brightness":
            out = x + s
        else:
            out = _shift(x, int(s), int(rng.integers(4)))
        return np.clip(out, 0.0, 1.0)


def _unknown(name: str) -> str:
    close = difflib.get_close_matches(name, PERTURBATIONS, n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return f"unknown perturbation {name!r}{hint}; choose from {', '.join(PERTURBATIONS)}"


def _jpeg(x: np.ndarray, quality: int) -> np.ndarray:
    """Encode and decode ``x`` ``(C, H, W)`` as JPEG at ``quality`` (Pillow)."""
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - torchvision depends on Pillow
        raise DyncalError("the jpeg perturbation needs Pillow: pip install pillow") from None
    import io

    c = x.shape[0]
    if c not in (1, 3):
        raise DataError(f"the jpeg perturbation needs 1 or 3 channels (grey or RGB), the item has {c}")
    u8 = np.round(x * 255.0).astype(np.uint8)
    image = Image.fromarray(u8[0] if c == 1 else np.moveaxis(u8, 0, -1), mode="L" if c == 1 else "RGB")
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=quality)
    buf.seek(0)
    decoded = np.asarray(Image.open(buf).convert("L" if c == 1 else "RGB"), dtype=np.float64) / 255.0
    return decoded[None] if c == 1 else np.moveaxis(decoded, -1, 0)


def _shift(x: np.ndarray, pixels: int, direction: int) -> np.ndarray:
    """``x`` moved ``pixels`` right, left, down or up (``direction`` 0-3), the uncovered border 0."""
    out = np.zeros_like(x)
    axis = 2 if direction < 2 else 1  # right and left move along the width, down and up along the height
    size = x.shape[axis]
    if pixels < size:
        moved, kept = slice(pixels, None), slice(None, size - pixels)
        dst, src = (moved, kept) if direction % 2 == 0 else (kept, moved)
        out[(slice(None),) * axis + (dst,)] = x[(slice(None),) * axis + (src,)]
    return out


def parse_perturbation(spec: str) -> list[Perturbation]:
    """Read one ``name:s1,s2,...`` spec into one :class:`Perturbation` per severity.

    Raises:
        DyncalError: One line: an unknown name (with the closest known one), no or a
            malformed severity, a severity out of range, or one given twice.

    Example:
        >>> [str(p) for p in parse_perturbation("gaussian_noise:0.25,0.5")]
        ['gaussian_noise:0.25', 'gaussian_noise:0.5']
        >>> parse_perturbation("blurr:1")
        Traceback (most recent call last):
        ...
        dyncal.errors.DyncalError: `perturb` 'blurr:1': unknown perturbation 'blurr' (did you mean blur?); \
choose from gaussian_noise, blur, jpeg, contrast, brightness, shift
    """
    text = str(spec).strip()
    where = f"{param('perturb')} {text!r}"
    name, sep, rest = text.partition(":")
    name = name.strip()
    if name not in _RANGES:
        raise DyncalError(f"{where}: {_unknown(name)}")
    if not sep or not rest.strip():
        raise DyncalError(f"{where} gives no severity; write NAME:SEVERITY[,SEVERITY...], e.g. {_EXAMPLE}")
    out: list[Perturbation] = []
    for part in rest.split(","):
        try:
            p = Perturbation(name, float(part.strip()))
        except ValueError:
            raise DyncalError(f"{where}: severity {part.strip()!r} is not a number; e.g. {_EXAMPLE}") from None
        except DyncalError as e:
            raise DyncalError(f"{where}: {e}") from None
        if p in out:
            raise DyncalError(f"{where} gives severity {p.severity:g} twice")
        out.append(p)
    return out


def parse_perturbations(specs: Sequence[str]) -> list[Perturbation]:
    """Every perturbation of several ``name:s1,s2`` specs (one ``--perturb`` each), in order.

    Raises:
        DyncalError: A malformed spec (:func:`parse_perturbation`) or the same corruption twice.

    Example:
        >>> [p.slug for p in parse_perturbations(["blur:1", "shift:1,2"])]
        ['blur-1', 'shift-1', 'shift-2']
    """
    out: list[Perturbation] = []
    for spec in specs:
        for p in parse_perturbation(spec):
            if p in out:
                raise DyncalError(f"{param('perturb')} gives {p} twice")
            out.append(p)
    return out


def _channel_values(value: float | Sequence[float], c: int, name: str) -> np.ndarray:
    arr = np.atleast_1d(np.asarray(value, dtype=np.float64))
    if arr.ndim != 1 or arr.size not in (1, c) or not np.all(np.isfinite(arr)):
        raise DataError(f"{param(name)} must be one number or {c} (one per channel), got {np.asarray(value).tolist()}")
    return np.broadcast_to(arr, (c,)).reshape(c, 1, 1)


def _seed_for(seed: int, index: int, perturbation: Perturbation) -> np.random.Generator:
    """The generator of one item: a function of (seed, index, corruption) alone."""
    family = zlib.crc32(str(perturbation).encode("utf-8"))
    return np.random.default_rng([int(seed), int(index), family])


def perturb_image(
    x: torch.Tensor | np.ndarray,
    perturbation: Perturbation,
    *,
    index: int,
    seed: int = 0,
    pixel_mean: float | Sequence[float] = 0.0,
    pixel_std: float | Sequence[float] = 1.0,
) -> torch.Tensor:
    """One item's input corrupted: undo the normalisation, corrupt, clip, normalise again.

    Args:
        x: ``(C, H, W)`` or ``(H, W)`` floating-point image, normalised as ``(pixel - mean) / std``.
        perturbation: The corruption.
        index: The item's index in its data set (seeds its random draws).
        seed: Seed of the whole perturbed data set.
        pixel_mean: Normalisation mean, one number or one per channel (default 0: ``x`` is pixels).
        pixel_std: Normalisation standard deviation, likewise (default 1).

    Returns:
        A tensor of ``x``'s shape and dtype.

    Raises:
        DataError: Not a floating-point image, or pixels outside ``[0, 1]`` once the
            normalisation is undone (wrong `pixel_mean` / `pixel_std`).

    Example:
        >>> x = torch.zeros(1, 2, 2)
        >>> perturb_image(x, Perturbation("brightness", 0.5), index=0).tolist()
        [[[0.5, 0.5], [0.5, 0.5]]]
    """
    t = torch.as_tensor(x)
    if not t.is_floating_point() or t.ndim not in (2, 3) or t.numel() == 0:
        raise DataError(
            f"perturbations apply to images (C, H, W) or (H, W) of floats; item {index} is "
            f"{tuple(t.shape)} {str(t.dtype).replace('torch.', '')}"
        )
    img = t.detach().cpu().numpy().astype(np.float64).reshape(-1, *t.shape[-2:])  # (H, W) as one channel
    mean = _channel_values(pixel_mean, img.shape[0], "pixel_mean")
    std = _channel_values(pixel_std, img.shape[0], "pixel_std")
    if np.any(std <= 0):
        raise DataError(f"{param('pixel_std')} must be positive, got {np.ravel(std).tolist()}")
    pixels = img * std + mean
    lo, hi = float(pixels.min()), float(pixels.max())
    if lo < -1e-3 or hi > 1 + 1e-3 or not (math.isfinite(lo) and math.isfinite(hi)):
        raise DataError(
            f"item {index} has pixels in [{lo:.3g}, {hi:.3g}] after undoing the normalisation "
            f"(mean {np.ravel(mean)[0]:g}, std {np.ravel(std)[0]:g}); corruptions need pixels in [0, 1]: give the "
            f"normalisation the data set applies as {param('pixel_mean')} and {param('pixel_std')}"
        )
    out = (perturbation.apply(np.clip(pixels, 0.0, 1.0), _seed_for(seed, index, perturbation)) - mean) / std
    return torch.from_numpy(out.reshape(t.shape)).to(t.dtype)


def perturb_batch(
    x: torch.Tensor,
    perturbation: Perturbation,
    indices: Sequence[int] | np.ndarray,
    **kwargs: Any,
) -> torch.Tensor:
    """Corrupt a batch ``(B, C, H, W)`` item by item, item ``i`` seeded by ``indices[i]`` (:func:`perturb_image`).

    Example:
        >>> out = perturb_batch(torch.zeros(2, 1, 3, 3), Perturbation("gaussian_noise", 0.1), [0, 1])
        >>> out.shape, bool((out[0] != out[1]).any())
        (torch.Size([2, 1, 3, 3]), True)
    """
    idx = [int(i) for i in indices]
    if x.shape[0] != len(idx):
        raise DataError(f"a batch of {x.shape[0]} items needs as many indices, got {len(idx)}")
    return torch.stack([perturb_image(x[j], perturbation, index=i, **kwargs) for j, i in enumerate(idx)])


@dataclass(eq=False)
class PerturbedDataset(Dataset[tuple[torch.Tensor, Any]]):
    """A data set whose inputs are corrupted, labels untouched: item ``i`` is ``(perturb(x_i), y_i)``.

    Args:
        base: A map-style data set of ``(input, label)`` items.
        perturbation: The corruption.
        seed: Seed of the random draws (each item's generator is seeded by ``(seed, i, corruption)``).
        pixel_mean: Normalisation mean of the inputs (``pixel = x * std + mean``), one number or one per channel.
        pixel_std: Normalisation standard deviation, likewise.

    Example:
        >>> from dyncal.demo import validation
        >>> ds = PerturbedDataset(validation(), Perturbation("shift", 1), pixel_mean=0.5, pixel_std=0.5)
        >>> x, y = ds[3]
        >>> x.shape, int(y) == int(validation()[3][1]), bool(torch.equal(ds[3][0], x))
        (torch.Size([1, 8, 8]), True, True)
    """

    base: Dataset[Any]
    perturbation: Perturbation
    _: KW_ONLY
    seed: int = 0
    pixel_mean: float | Sequence[float] = 0.0
    pixel_std: float | Sequence[float] = 1.0

    def __post_init__(self) -> None:
        """Check the seed."""
        self.seed = int(check("seed", self.seed))

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, Any]:
        item = self.base[i]
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            raise DataError(f"data set item {i} is not an (input, label) pair; perturbations need one")
        x, y = item
        if not isinstance(x, (torch.Tensor, np.ndarray)):
            raise DataError(f"data set item {i}: input is {type(x).__name__}, perturbations need an image tensor")
        out = perturb_image(
            x, self.perturbation, index=i, seed=self.seed, pixel_mean=self.pixel_mean, pixel_std=self.pixel_std
        )
        return out, y


def perturbed_data_spec(data: str, perturbation: Perturbation, seed: int = 0) -> str:
    """The data spec a perturbed run records: the clean spec, the corruption and its seed.

    ``dyncal evaluate`` reads it to say that the data differ from the thresholds' run.

    Example:
        >>> perturbed_data_spec("dyncal.demo:validation", Perturbation("blur", 1))
        'dyncal.demo:validation [perturbed blur:1 seed 0]'
    """
    return f"{data} [perturbed {perturbation} seed {int(seed)}]"


_PERTURBED = re.compile(r"^(?P<data>.*) \[perturbed (?P<name>[a-z_]+):(?P<severity>[^ ]+) seed (?P<seed>\d+)\]$")


def perturbation_of(data: str) -> tuple[str, Perturbation | None, int | None]:
    """Read back :func:`perturbed_data_spec`: ``(clean spec, perturbation, seed)``; ``(spec, None, None)`` if clean.

    Example:
        >>> perturbation_of("d [perturbed blur:1 seed 2]")
        ('d', Perturbation(name='blur', severity=1.0), 2)
        >>> perturbation_of("dyncal.demo:validation")
        ('dyncal.demo:validation', None, None)
    """
    m = _PERTURBED.match(str(data))
    if m is None:
        return str(data), None, None
    try:
        p = Perturbation(m.group("name"), float(m.group("severity")))
    except (DyncalError, ValueError):
        return str(data), None, None
    return m.group("data"), p, int(m.group("seed"))
