"""TextEncoding: indexing, padding, trimming and concatenation give exact shapes and values."""

from __future__ import annotations

import pytest
import torch

from ebru.encoders import EncoderError, TextEncoding


def make(lengths: list[int], t: int, d: int = 3, p: int = 2, start: float = 1.0) -> TextEncoding:
    """Rows with states = start + row index on the first `length` tokens, zero on padding."""
    b = len(lengths)
    mask = torch.arange(t)[None, :] < torch.tensor(lengths)[:, None]
    states = (start + torch.arange(b, dtype=torch.float32))[:, None, None].expand(b, t, d) * mask[..., None]
    pooled = (start + torch.arange(b, dtype=torch.float32))[:, None].expand(b, p).clone()
    return TextEncoding(states.contiguous(), mask, pooled)


def test_pad_to_adds_zero_states_and_false_mask():
    e = make([2, 1], t=2)
    padded = e.pad_to(5)
    assert padded.states.shape == (2, 5, 3) and padded.mask.shape == (2, 5)
    assert torch.equal(padded.states[:, :2], e.states) and torch.all(padded.states[:, 2:] == 0)
    assert padded.mask.tolist() == [[True, True, False, False, False], [True, False, False, False, False]]
    assert torch.equal(padded.pooled, e.pooled)
    assert e.pad_to(2) is e
    with pytest.raises(EncoderError, match=r"pad_to length must be an integer >= T = 2"):
        e.pad_to(1)


def test_cat_pads_to_the_longest_then_stacks_rows_in_order():
    a, b = make([1], t=1, start=1.0), make([3, 2], t=3, start=10.0)
    c = TextEncoding.cat([a, b])
    assert c.states.shape == (3, 3, 3) and c.mask.shape == (3, 3) and c.pooled.shape == (3, 2)
    assert c.mask.tolist() == [[True, False, False], [True, True, True], [True, True, False]]
    assert c.states[:, 0, 0].tolist() == [1.0, 10.0, 11.0]
    assert c.pooled[:, 0].tolist() == [1.0, 10.0, 11.0]
    assert torch.all(c.states[0, 1:] == 0)
    with pytest.raises(EncoderError, match="at least one"):
        TextEncoding.cat([])
    with pytest.raises(EncoderError, match="different widths"):
        TextEncoding.cat([a, make([1], t=1, d=4)])


def test_getitem_int_slice_tensor_list_and_bool_mask():
    e = make([1, 2, 3, 4], t=4)
    assert len(e) == 4
    one = e[2]
    assert one.states.shape == (1, 4, 3) and one.pooled[0, 0].item() == 3.0
    assert e[-1].pooled[0, 0].item() == 4.0
    with pytest.raises(IndexError, match="row 4 out of range"):
        e[4]
    assert e[1:3].pooled[:, 0].tolist() == [2.0, 3.0]
    idx = torch.tensor([3, 0, 3])
    picked = e[idx]
    assert picked.pooled[:, 0].tolist() == [4.0, 1.0, 4.0]
    assert picked.mask.sum(1).tolist() == [4, 1, 4]
    assert e[[1, 1]].pooled[:, 0].tolist() == [2.0, 2.0]
    assert e[torch.tensor([True, False, False, True])].pooled[:, 0].tolist() == [1.0, 4.0]


def test_trim_drops_columns_that_are_padding_in_every_row():
    e = make([1, 2], t=2).pad_to(6)
    t = e.trim()
    assert t.states.shape == (2, 2, 3) and t.lengths.tolist() == [1, 2]
    assert torch.equal(t.states, make([1, 2], t=2).states)


def test_to_and_shape_checks():
    e = make([1], t=2)
    assert e.to("cpu").states.device.type == "cpu"
    with pytest.raises(EncoderError, match=r"states \(B, T, D\)"):
        TextEncoding(torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.bool), torch.zeros(2, 4))
    with pytest.raises(EncoderError, match="mask must be bool"):
        TextEncoding(torch.zeros(2, 3, 4), torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(EncoderError, match="shapes disagree"):
        TextEncoding(torch.zeros(2, 3, 4), torch.zeros(2, 2, dtype=torch.bool), torch.zeros(2, 4))
    with pytest.raises(EncoderError, match="shapes disagree"):
        TextEncoding(torch.zeros(2, 3, 4), torch.zeros(2, 3, dtype=torch.bool), torch.zeros(1, 4))
