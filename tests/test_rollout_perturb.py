"""Image corruptions for stress tests before a rollout: parsed in one line, applied deterministically."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dyncal.demo import validation
from dyncal.errors import DataError, DyncalError
from dyncal.perturb import (
    PERTURBATIONS,
    Perturbation,
    PerturbedDataset,
    parse_perturbation,
    parse_perturbations,
    perturb_batch,
    perturb_image,
    perturbed_data_spec,
)

DIGITS = {"pixel_mean": 0.5, "pixel_std": 0.5}  # dyncal.demo's normalisation: (pixel - 0.5) / 0.5


def test_specs_parse_into_one_perturbation_per_severity():
    got = parse_perturbations(["gaussian_noise:0.25, 0.5", "blur:1", "jpeg:30", "shift:2", "brightness:-0.1"])
    assert [str(p) for p in got] == [
        "gaussian_noise:0.25",
        "gaussian_noise:0.5",
        "blur:1",
        "jpeg:30",
        "shift:2",
        "brightness:-0.1",
    ]
    assert [p.slug for p in got][:2] == ["gaussian_noise-0.25", "gaussian_noise-0.5"]
    assert got[0].to_dict() == {"name": "gaussian_noise", "severity": 0.25}


@pytest.mark.parametrize(
    ("spec", "pattern"),
    [
        ("gausian_noise:0.1", r"unknown perturbation 'gausian_noise' \(did you mean gaussian_noise\?\)"),
        ("fog:1", r"unknown perturbation 'fog'; choose from gaussian_noise, blur, jpeg"),
        ("blur", r"gives no severity; write NAME:SEVERITY"),
        ("blur:", r"gives no severity"),
        ("blur:one", r"severity 'one' is not a number"),
        ("blur:-1", r"blur severity must be a number in \(0, 50\], got -1"),
        ("jpeg:0", r"jpeg severity must be an integer in \[1, 100\], got 0"),
        ("jpeg:10.5", r"must be an integer"),
        ("shift:0", r"shift severity must be an integer in \[1, 1000\]"),
        ("gaussian_noise:nan", r"must be a finite number"),
        ("contrast:1", r"contrast:1 changes nothing"),
        ("brightness:0", r"changes nothing"),
        ("blur:1,1", r"gives severity 1 twice"),
    ],
)
def test_a_bad_spec_is_refused_in_one_line(spec, pattern):
    with pytest.raises(DyncalError, match=pattern) as info:
        parse_perturbation(spec)
    assert "\n" not in str(info.value)
    assert str(info.value).startswith(f"`perturb` {spec.strip()!r}")


def test_the_same_corruption_twice_across_specs_is_refused():
    with pytest.raises(DyncalError, match=r"`perturb` gives blur:1 twice"):
        parse_perturbations(["blur:1,2", "blur:1"])


def test_items_are_bit_identical_on_a_rerun_and_differ_by_seed_and_index():
    base = validation()
    noise = Perturbation("gaussian_noise", 0.2)
    a, b = PerturbedDataset(base, noise, **DIGITS), PerturbedDataset(base, noise, **DIGITS)
    other_seed = PerturbedDataset(base, noise, seed=1, **DIGITS)
    for i in (0, 5, 796):
        assert torch.equal(a[i][0], b[i][0])
        assert a[i][0].dtype == base[i][0].dtype and a[i][0].shape == base[i][0].shape
        assert int(a[i][1]) == int(base[i][1])
        assert not torch.equal(a[i][0], other_seed[i][0])
    # same clean image at two indices: different draws
    same = torch.stack([base[0][0], base[0][0]])
    out = perturb_batch(same, noise, [0, 1], **DIGITS)
    assert not torch.equal(out[0], out[1])
    assert torch.equal(out[0], a[0][0])
    assert len(a) == len(base)


def test_brightness_and_contrast_act_on_pixels_not_on_normalised_values():
    x = torch.full((1, 4, 4), 0.0)  # pixel 0.5 under (p - 0.5) / 0.5
    bright = perturb_image(x, Perturbation("brightness", 0.2), index=0, **DIGITS)
    assert torch.allclose(bright, torch.full_like(x, 0.4))  # pixel 0.7 -> (0.7 - 0.5) / 0.5
    clipped = perturb_image(x, Perturbation("brightness", 0.9), index=0, **DIGITS)
    assert torch.allclose(clipped, torch.ones_like(x))  # pixel 1.4 clipped to 1
    img = torch.tensor([[[-1.0, 0.0], [0.0, 1.0]]])  # pixels 0, 0.5, 0.5, 1: mean 0.5
    half = perturb_image(img, Perturbation("contrast", 0.5), index=0, **DIGITS)
    assert torch.allclose(half, img * 0.5)  # distance from the mean halved, mean kept


def test_shift_moves_the_image_whole_pixels_and_fills_black():
    img = torch.arange(1.0, 17.0).reshape(1, 4, 4) / 16.0
    moved = perturb_image(img, Perturbation("shift", 1), index=3)[0].numpy()
    src = img[0].numpy()
    candidates = {
        "right": np.pad(src[:, :-1], ((0, 0), (1, 0))),
        "left": np.pad(src[:, 1:], ((0, 0), (0, 1))),
        "down": np.pad(src[:-1, :], ((1, 0), (0, 0))),
        "up": np.pad(src[1:, :], ((0, 1), (0, 0))),
    }
    assert sum(np.array_equal(moved, c) for c in candidates.values()) == 1
    directions = {
        next(
            k
            for k, c in candidates.items()
            if np.array_equal(perturb_image(img, Perturbation("shift", 1), index=i)[0].numpy(), c)
        )
        for i in range(40)
    }
    assert directions == set(candidates)  # each direction is drawn for some item


def test_noise_has_the_severity_as_its_standard_deviation():
    x = torch.full((1, 64, 64), 0.5)
    out = perturb_image(x, Perturbation("gaussian_noise", 0.05), index=0)
    assert abs(float((out - x).std()) - 0.05) < 0.005
    assert abs(float((out - x).mean())) < 0.005


def test_blur_smooths_and_keeps_the_mean():
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.random((3, 16, 16)).astype(np.float32))
    out = perturb_image(x, Perturbation("blur", 1.5), index=0)
    assert out.shape == x.shape and out.dtype == torch.float32
    assert float(out.std()) < 0.5 * float(x.std())
    assert torch.allclose(out.mean(dim=(1, 2)), x.mean(dim=(1, 2)), atol=0.02)


def test_jpeg_round_trips_through_the_codec():
    pytest.importorskip("PIL")
    rng = np.random.default_rng(1)
    x = torch.from_numpy(rng.random((3, 16, 16)).astype(np.float32))
    low = perturb_image(x, Perturbation("jpeg", 5), index=0)
    high = perturb_image(x, Perturbation("jpeg", 95), index=0)
    assert low.shape == x.shape
    assert np.allclose(low.numpy() * 255, np.round(low.numpy() * 255), atol=1e-3)  # 8-bit levels
    assert float((high - x).abs().mean()) < float((low - x).abs().mean())
    grey = perturb_image(x[:1], Perturbation("jpeg", 50), index=0)
    assert grey.shape == (1, 16, 16)
    with pytest.raises(DataError, match="the jpeg perturbation needs 1 or 3 channels"):
        perturb_image(x[:2], Perturbation("jpeg", 50), index=0)


def test_two_dimensional_images_keep_their_shape():
    x = torch.zeros(5, 6)
    assert perturb_image(x, Perturbation("blur", 1), index=0).shape == (5, 6)


@pytest.mark.parametrize(
    ("x", "kwargs", "pattern"),
    [
        (
            torch.zeros(4),
            {},
            r"perturbations apply to images \(C, H, W\) or \(H, W\) of floats; item 7 is \(4,\) float32",
        ),
        (torch.zeros(1, 2, 2, dtype=torch.int64), {}, r"item 7 is \(1, 2, 2\) int64"),
        (
            torch.full((1, 2, 2), -1.0),
            {},
            r"pixels in \[-1, -1\].*give the normalisation the data set applies as `pixel_mean` and `pixel_std`",
        ),
        (torch.zeros(1, 2, 2), {"pixel_std": 0.0}, r"`pixel_std` must be positive"),
        (torch.zeros(2, 2, 2), {"pixel_mean": [0.1, 0.2, 0.3]}, r"`pixel_mean` must be one number or 2"),
    ],
)
def test_inputs_that_are_not_pixel_images_are_refused(x, kwargs, pattern):
    with pytest.raises(DataError, match=pattern):
        perturb_image(x, Perturbation("blur", 1), index=7, **kwargs)


def test_a_data_set_of_non_pairs_or_non_tensors_is_refused():
    with pytest.raises(DataError, match="item 0 is not an \\(input, label\\) pair"):
        PerturbedDataset([torch.zeros(1, 2, 2)], Perturbation("blur", 1))[0]  # type: ignore[arg-type]
    with pytest.raises(DataError, match="input is str"):
        PerturbedDataset([("x", 1)], Perturbation("blur", 1))[0]  # type: ignore[arg-type]
    with pytest.raises(DyncalError, match="`seed` must be a non-negative integer"):
        PerturbedDataset(validation(), Perturbation("blur", 1), seed=-1)


def test_the_data_spec_names_the_corruption_and_seed():
    p = Perturbation("gaussian_noise", 0.5)
    assert perturbed_data_spec("imagefolder:/d", p, seed=3) == "imagefolder:/d [perturbed gaussian_noise:0.5 seed 3]"


@settings(max_examples=60, deadline=None)
@given(
    name=st.sampled_from(PERTURBATIONS),
    level=st.floats(0.05, 1.0),
    seed=st.integers(0, 2**31),
    index=st.integers(0, 10**6),
)
def test_every_corruption_stays_in_the_pixel_range_and_repeats_exactly(name, level, seed, index):
    severity = {
        "gaussian_noise": level,
        "blur": 3 * level,
        "jpeg": round(1 + 99 * level),
        "contrast": 2 * level if abs(2 * level - 1) > 1e-9 else 0.5,
        "brightness": level - 0.5 if abs(level - 0.5) > 1e-9 else 0.25,
        "shift": 1 + int(3 * level),
    }[name]
    p = Perturbation(name, severity)
    x = torch.from_numpy(np.random.default_rng(seed % 1000).random((3, 8, 8)).astype(np.float32)) * 2 - 1
    a = perturb_image(x, p, index=index, seed=seed, **DIGITS)
    b = perturb_image(x, p, index=index, seed=seed, **DIGITS)
    assert torch.equal(a, b)
    assert float(a.min()) >= -1.0 - 1e-6 and float(a.max()) <= 1.0 + 1e-6
