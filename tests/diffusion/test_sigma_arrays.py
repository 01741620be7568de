"""What every registered sampler does with an unusual sigma array (``samplers.check_sigmas``).

A repeated level is a zero-length step: it is skipped (no denoiser call, no noise, no
callback, multistep history untouched), so the result equals the same sampler's result
with the repeat removed, bit for bit. The multistep samplers used to divide by the zero
step (``r = h_prev / h``) and return NaN. An increasing pair, a negative level or NaN is
refused with a ValueError that names the index. Every test iterates ``SAMPLERS``, so a
sampler added later is held to the same rule.
"""

from __future__ import annotations

import math

import pytest
import torch

from ebru.diffusion import SAMPLERS, GaussianMixture, get_sigmas
from ebru.diffusion.samplers import check_sigmas

F64 = torch.float64
ALL = sorted(SAMPLERS)


@pytest.fixture(scope="module")
def mix():
    return GaussianMixture.random(dim=5, components=3, seed=4)


@pytest.fixture(scope="module")
def x():
    return 80.0 * torch.randn(4, 5, generator=torch.Generator().manual_seed(1), dtype=F64)


class Counting:
    def __init__(self, inner):
        self.inner, self.sigmas = inner, []

    def __call__(self, x, sigma, **cond):
        self.sigmas.append(float(sigma.reshape(-1)[0]))
        return self.inner(x, sigma, **cond)


def gens(n=4):
    return [torch.Generator().manual_seed(100 + i) for i in range(n)]


def run(name, d, x, sigmas, **kw):
    calls = []
    out = SAMPLERS[name](d, x.clone(), torch.tensor(sigmas, dtype=F64), generator=gens(),
                         callback=lambda info: calls.append(info["i"]), **kw)
    return out, calls


REPEATS = {
    # the user's report: one zero-length step in the middle
    "middle": ([80.0, 10.0, 1.0, 1.0, 0.1, 0.0], [80.0, 10.0, 1.0, 0.1, 0.0]),
    "first": ([80.0, 80.0, 10.0, 1.0, 0.1, 0.0], [80.0, 10.0, 1.0, 0.1, 0.0]),
    "twice": ([80.0, 10.0, 10.0, 10.0, 1.0, 0.1, 0.0], [80.0, 10.0, 1.0, 0.1, 0.0]),
    "final zero": ([80.0, 10.0, 1.0, 0.1, 0.0, 0.0], [80.0, 10.0, 1.0, 0.1, 0.0]),
    "no final zero": ([80.0, 10.0, 2.0, 2.0, 0.5], [80.0, 10.0, 2.0, 0.5]),
}


@pytest.mark.parametrize("where", sorted(REPEATS))
@pytest.mark.parametrize("name", ALL)
def test_repeated_level_is_skipped(mix, x, name, where):
    repeated, plain = REPEATS[where]
    d_rep, d_plain = Counting(mix), Counting(mix)
    out, calls = run(name, d_rep, x, repeated)
    want, want_calls = run(name, d_plain, x, plain)
    assert bool(torch.isfinite(out).all()), f"{name} returned non-finite values"
    assert torch.equal(out, want)
    # No denoiser call, no callback for the zero-length step(s): the same calls at the same levels.
    assert d_rep.sigmas == d_plain.sigmas
    moving = [i for i in range(len(repeated) - 1) if repeated[i + 1] < repeated[i]]
    assert calls == moving and len(calls) == len(want_calls)


@pytest.mark.parametrize("name", ["dpmpp_3m", "unipc"])
def test_repeated_level_on_a_long_schedule_is_skipped(mix, x, name):
    """dpmpp_3m switches to lower_order_final below 15 steps: the count excludes the repeat."""
    plain = get_sigmas("karras", 15, 0.002, 80.0)
    repeated = torch.cat([plain[:8], plain[7:]])
    assert len(repeated) == 17
    a = SAMPLERS[name](mix, x, repeated)
    b = SAMPLERS[name](mix, x, plain)
    assert torch.equal(a, b)


@pytest.mark.parametrize("name", ALL)
def test_increasing_pair_is_refused(mix, x, name):
    with pytest.raises(ValueError, match=r"sigmas must not increase: sigmas\[2\] = 10 > sigmas\[1\] = 1\b"):
        run(name, mix, x, [80.0, 1.0, 10.0, 0.0])


@pytest.mark.parametrize(("sigmas", "message"), [
    ([80.0, math.nan, 0.0], r"sigmas must be finite, got sigmas\[1\] = nan"),
    ([math.inf, 1.0, 0.0], r"sigmas must be finite, got sigmas\[0\] = inf"),
    ([80.0, 1.0, -0.5], r"sigmas must be >= 0, got sigmas\[2\] = -0.5"),
    ([[80.0, 1.0, 0.0]], r"1-D array .*shape \(1, 3\)"),
    ([], r"at least one noise level"),
])
@pytest.mark.parametrize("name", ALL)
def test_bad_sigma_arrays_are_refused(mix, x, name, sigmas, message):
    with pytest.raises(ValueError, match=message):
        SAMPLERS[name](mix, x, torch.tensor(sigmas, dtype=F64))


@pytest.mark.parametrize("name", ALL)
def test_a_list_of_levels_is_a_float64_tensor(mix, x, name):
    levels = [80.0, 5.0, 0.3, 0.0]
    a = SAMPLERS[name](mix, x, levels, generator=gens())
    b = SAMPLERS[name](mix, x, torch.tensor(levels, dtype=F64), generator=gens())
    assert torch.equal(a, b)


@pytest.mark.parametrize("name", ALL)
def test_a_single_level_runs_no_step(mix, x, name):
    d = Counting(mix)
    assert torch.equal(SAMPLERS[name](d, x, torch.tensor([3.0], dtype=F64)), x)
    assert d.sigmas == []


def test_check_sigmas_lists_the_moving_steps():
    s, steps = check_sigmas([80.0, 10.0, 10.0, 1.0, 0.0, 0.0])
    assert s.dtype == F64 and steps == [0, 2, 3]
    t = torch.tensor([3.0, 2.0, 1.0], requires_grad=True)
    same, steps = check_sigmas(t)
    assert same is t and steps == [0, 1]  # tensors pass through (gradients keep flowing)
    with pytest.raises(ValueError, match="sigmas must be a 1-D tensor or sequence of numbers"):
        check_sigmas(["a", 1.0])
