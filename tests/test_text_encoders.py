"""The text encoders, data and trainer the text tests and benchmarks/text_exits.py rely on."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from dyncal.inputs import pad_collate
from tests import text_encoders as tm


def test_text_data_is_generated_deterministically_with_the_promised_shape() -> None:
    a, b = tm.text_data(), tm.text_data()
    assert len(a) == 600 and a.labels == b.labels
    assert all(torch.equal(x, y) for x, y in zip(a.tokens, b.tokens, strict=True))
    lengths = [len(t) for t in a.tokens]
    assert min(lengths) >= tm.MIN_LEN and max(lengths) <= tm.MAX_LEN and len(set(lengths)) > 20
    assert min(Counter(a.labels).values()) > 150  # three balanced classes
    (ids, mask), label = a[0]
    assert ids.dtype == mask.dtype == torch.int64 and ids.shape == mask.shape and int(mask.sum()) == len(ids)
    as_dict, same_label = tm.text_data_dict()[0]
    assert torch.equal(as_dict["input_ids"], ids) and same_label == label
    assert not set(tm.text_data_train().labels[:5]) - {0, 1, 2}


def test_labels_follow_the_rule_and_hard_rows_fool_a_bag_of_words() -> None:
    data = tm.text_data()
    fooled = 0
    for tokens, label in zip(data.tokens, data.labels, strict=True):
        t = tokens.tolist()
        counted = Counter(m for i, m in enumerate(t) if m in tm.MARKERS and (i == 0 or t[i - 1] != tm.NOT))
        raw = Counter(m for m in t if m in tm.MARKERS)
        winner, lead = counted.most_common(1)[0]
        assert winner == tm.MARKERS[label] and all(lead > n for m, n in counted.items() if m != winner)
        fooled += raw.most_common(1)[0][0] != winner
    assert 0.3 < fooled / len(data) < 0.7  # about half the rows are hard


@pytest.mark.parametrize("make", [tm.text_data, tm.text_data_dict])
def test_pad_collate_pads_to_the_longest_row_of_the_batch(make) -> None:  # noqa: ANN001
    data = make()
    inputs, labels = pad_collate([data[i] for i in range(5)])
    ids, mask = (inputs["input_ids"], inputs["attention_mask"]) if isinstance(inputs, dict) else inputs
    longest = max(len(data.tokens[i]) for i in range(5))
    assert ids.shape == mask.shape == (5, longest) and labels.tolist() == data.labels[:5]
    assert mask.sum(1).tolist() == [len(data.tokens[i]) for i in range(5)]
    assert int(ids[mask == 0].abs().sum()) == 0  # padding is PAD


def test_padding_does_not_change_a_rows_logits() -> None:
    """Masked attention and masked mean pooling: a row padded in a batch gives its logits alone."""
    model = tm.text_encoder().eval()
    data = tm.text_data()
    (ids, mask), _ = pad_collate([data[i] for i in range(8)])
    with torch.inference_mode():
        batch = model(ids, mask)
        for i in range(8):
            n = int(mask[i].sum())
            alone = model(ids[i : i + 1, :n], mask[i : i + 1, :n])
            for k in range(3):
                torch.testing.assert_close(batch[k][i : i + 1], alone[k], rtol=1e-4, atol=1e-5)


@pytest.mark.integration
def test_trained_exits_learn_and_depth_helps(text_weights) -> None:  # noqa: ANN001
    model = tm.text_encoder()
    model.load_state_dict(torch.load(text_weights, weights_only=True))
    acc = tm.exit_accuracy(model, tm.text_data())
    assert min(acc) > 0.5 and acc[-1] > acc[0] + 0.05, acc  # chance is 1/3


@pytest.mark.integration  # runs a Hugging Face BERT (importing transformers alone takes about a second)
def test_bert_exits_from_a_config() -> None:
    pytest.importorskip("transformers", reason="the Hugging Face model needs the nlp extra (pip install dyncal[nlp])")
    model = tm.bert_exits().eval()
    (ids, mask), _ = pad_collate([tm.text_data()[i] for i in range(4)])
    with torch.inference_mode():
        out = model(ids, mask)
    assert [tuple(o.shape) for o in out] == [(4, 3)] * 3
