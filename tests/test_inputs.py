"""dyncal.inputs: one tensor, a tuple or a dict of tensors, the same way everywhere."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dyncal.errors import DataError
from dyncal.inputs import (
    InputError,
    InputSignature,
    batch_size,
    call_model,
    default_collate,
    flatten,
    pad_collate,
    resolve_collate,
    take_rows,
    to_device,
)


def _text_batch(b: int = 3, length: int = 5) -> dict[str, torch.Tensor]:
    ids = torch.arange(b * length).reshape(b, length) + 2
    mask = torch.ones(b, length, dtype=torch.int64)
    mask[0, -2:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def test_a_lone_tensor_is_the_image_case() -> None:
    x = torch.randn(4, 3, 8, 8)
    sig = InputSignature.of(x)
    assert sig.single and sig.names == ("input",)
    assert sig.inputs[0].shape == (3, 8, 8) and sig.inputs[0].value_range is None
    assert sig == InputSignature.single_tensor((3, 8, 8), "float32")
    assert call_model(lambda t: t * 2, x).equal(x * 2)
    assert sig.unflatten(sig.flatten(x)) is x


def test_dict_inputs_call_by_keyword_and_flatten_in_signature_order() -> None:
    batch = _text_batch()
    sig = InputSignature.of(batch)
    reordered = {"attention_mask": batch["attention_mask"], "input_ids": batch["input_ids"]}
    flat = sig.flatten(reordered)
    assert flat[0] is batch["input_ids"] and flat[1] is batch["attention_mask"]
    got = sig.call(lambda input_ids, attention_mask: (input_ids * attention_mask).sum(), flat)
    assert int(got) == int((batch["input_ids"] * batch["attention_mask"]).sum())
    assert sig.inputs[1].value_range == (0, 1)


def test_tuple_inputs_call_positionally() -> None:
    a, b = torch.ones(2, 3), torch.zeros(2, 3)
    assert call_model(lambda x, y: x - y, (a, b)).equal(a)
    assert InputSignature.of((a, b)).names == ("0", "1")


def test_rows_drop_from_every_input_together() -> None:
    batch = _text_batch(4)
    keep = torch.tensor([False, True, False, True])
    cut = take_rows(batch, keep)
    assert batch_size(cut) == 2
    assert cut["input_ids"].equal(batch["input_ids"][keep])
    assert cut["attention_mask"].equal(batch["attention_mask"][keep])
    assert to_device(cut, "cpu")["attention_mask"].equal(cut["attention_mask"])


def test_merging_batches_marks_the_varying_length_dynamic() -> None:
    sig = InputSignature.of(_text_batch(3, 5)).merge(InputSignature.of(_text_batch(2, 9)))
    assert [s.dynamic for s in sig.inputs] == [(0,), (0,)]
    assert sig.inputs[0].shape == (9,)
    assert sig.describe() == "input_ids int64 (B, L); attention_mask int64 (B, L)"
    assert InputSignature.from_dict(sig.to_dict()) == sig
    sig.check(_text_batch(7, 31))  # any length in a dynamic dimension


@pytest.mark.parametrize(
    ("batch", "pattern"),
    [
        ({"input_ids": torch.zeros(3, 5, dtype=torch.int64)}, "input 'attention_mask' is missing"),
        ({**_text_batch(), "token_type_ids": torch.zeros(3, 5)}, "unexpected input 'token_type_ids'"),
        (
            {**_text_batch(), "attention_mask": torch.ones(3, 5)},
            "input 'attention_mask' has dtype float32, expected int64",
        ),
        ({**_text_batch(), "input_ids": torch.zeros(3, dtype=torch.int64)}, r"input 'input_ids' has shape \(3,\)"),
        (
            {**_text_batch(), "input_ids": torch.zeros(2, 5, dtype=torch.int64)},
            "'attention_mask' has 3 rows, the others 2",
        ),
        ((torch.zeros(3, 5, dtype=torch.int64),), "are a tuple, expected a dict"),
        ({"input_ids": "text", "attention_mask": torch.zeros(1)}, "input 'input_ids' is str"),
    ],
)
def test_a_refused_batch_names_the_input_and_why(batch: object, pattern: str) -> None:
    sig = InputSignature.of(_text_batch())
    with pytest.raises(InputError, match=pattern) as err:
        sig.check(batch)
    assert len(str(err.value).splitlines()) == 1
    assert isinstance(err.value, DataError)


def test_a_fixed_dimension_is_checked() -> None:
    sig = InputSignature.of((torch.zeros(2, 3, 4),))
    with pytest.raises(InputError, match="input '0' has size 5 in dimension 2, expected 4"):
        sig.check((torch.zeros(2, 3, 5),))


def test_examples_draw_ids_from_the_recorded_range_never_zero_one() -> None:
    sig = InputSignature.of({"ids": torch.tensor([[3, 40], [17, 9]]), "mask": torch.tensor([[1, 1], [1, 0]])})
    x = sig.example(64, seed=1)
    assert x["ids"].min() >= 3 and x["ids"].max() <= 40 and len(x["ids"].unique()) > 2
    assert bool((x["mask"] == 1).all())  # a mask example attends everywhere
    assert tuple(sig.with_dynamic("ids", [0]).with_dynamic("mask", [0]).example(2, seq_len=7)["ids"].shape) == (2, 7)
    assert sig.example(3, seed=5)["ids"].equal(sig.example(3, seed=5)["ids"])


def test_default_collate_stacks_and_refuses_ragged_sequences_with_advice() -> None:
    items = [((torch.tensor([1, 2, 3]), torch.tensor([1, 1, 1])), 0), ((torch.tensor([4]), torch.tensor([1])), 2)]
    with pytest.raises(InputError, match="input '0' has samples of different shapes.*`collate`"):
        default_collate(items)
    (ids, mask), labels = pad_collate(items)
    assert ids.tolist() == [[1, 2, 3], [4, 0, 0]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    assert labels.tolist() == [0, 2]
    x, y = default_collate([(torch.ones(2), 1), (torch.zeros(2), 0)])
    assert x.tolist() == [[1, 1], [0, 0]] and y.dtype == torch.int64


def test_resolve_collate_names_the_parameter() -> None:
    with pytest.raises(DataError, match="`collate`: 'math:pi' is not callable"):
        resolve_collate("math:pi")


@settings(max_examples=40, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 12), min_size=1, max_size=8),
    seed=st.integers(0, 1000),
)
def test_padding_then_cutting_rows_keeps_ids_and_mask_aligned(lengths: list[int], seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    items = [
        ({"ids": torch.randint(1, 50, (n,), generator=g), "mask": torch.ones(n, dtype=torch.int64)}, i % 3)
        for i, n in enumerate(lengths)
    ]
    batch, _ = pad_collate(items)
    keep = torch.randint(0, 2, (len(lengths),), generator=g).bool()
    cut = take_rows(batch, keep)
    # the mask marks exactly the real tokens of each kept row
    kept_lengths = [n for n, k in zip(lengths, keep.tolist(), strict=True) if k]
    assert cut["mask"].sum(1).tolist() == kept_lengths
    assert bool(((cut["ids"] > 0) == (cut["mask"] == 1)).all())
    assert [len(t) for t in flatten(cut)] == [len(kept_lengths)] * 2


def test_a_proven_longest_length_is_kept() -> None:
    """A package's bound on the length round-trips; documents without it read as before (the runner checks it)."""
    from dyncal.inputs import InputSignature, InputSpec

    ids = InputSpec("input_ids", "int64", (12,), dynamic=(0,), value_range=(0, 31), longest=64)
    sig = InputSignature("dict", (ids,))
    assert InputSignature.from_dict(sig.to_dict()) == sig
    assert "longest" not in InputSpec("x", "int64", (12,), dynamic=(0,)).to_dict()
    sig.check({"input_ids": torch.zeros(2, 65, dtype=torch.int64)})  # the signature alone does not refuse it
