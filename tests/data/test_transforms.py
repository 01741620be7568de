"""random_hflip: seeded determinism and exact per-sample flips."""

from __future__ import annotations

import pytest
import torch

from ebru.data import random_hflip


def batch(b: int = 16) -> torch.Tensor:
    return torch.arange(b * 2 * 3 * 5, dtype=torch.float32).reshape(b, 2, 3, 5)


def test_deterministic_with_seeded_generator():
    x = batch()
    a = random_hflip(x, torch.Generator().manual_seed(7))
    b = random_hflip(x, torch.Generator().manual_seed(7))
    c = random_hflip(x, torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_flips_exactly_the_chosen_samples():
    x = batch(32)
    out = random_hflip(x, torch.Generator().manual_seed(3), p=0.5)
    expected = torch.rand(32, generator=torch.Generator().manual_seed(3)) < 0.5
    assert 0 < expected.sum() < 32
    for i in range(32):
        want = x[i].flip(-1) if expected[i] else x[i]
        assert torch.equal(out[i], want)
    assert torch.equal(out[0, 0, 0], x[0, 0, 0].flip(0) if expected[0] else x[0, 0, 0])
    assert torch.equal(x, batch(32))  # input untouched


def test_extremes_and_rate():
    x = batch()
    assert torch.equal(random_hflip(x, torch.Generator().manual_seed(0), p=0.0), x)
    assert torch.equal(random_hflip(x, torch.Generator().manual_seed(0), p=1.0), x.flip(-1))
    big = torch.zeros(4000, 1, 1, 2)
    big[..., 1] = 1
    flipped = random_hflip(big, torch.Generator().manual_seed(1), p=0.25)[:, 0, 0, 0]
    assert abs(flipped.mean().item() - 0.25) < 0.03


def test_global_generator_and_bad_args():
    x = batch()
    torch.manual_seed(5)
    a = random_hflip(x, None)
    torch.manual_seed(5)
    assert torch.equal(a, random_hflip(x, None))
    with pytest.raises(ValueError, match="p must be"):
        random_hflip(x, None, p=1.5)
    with pytest.raises(ValueError, match="batch"):
        random_hflip(torch.zeros(5), None)
