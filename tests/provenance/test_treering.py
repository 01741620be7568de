"""Tree-Ring, the optional zero-bit mark, against exact answers.

- the cosine's null tail against closed forms (uniform in 3-D, arc length in 2-D), a Monte Carlo and scipy's
  incomplete beta where installed, and far into the tail;
- the mark writes exactly the key into the disc of the chosen channel and nothing else, and keeps the noise real;
- on fresh noise its p-values are uniform (the null holds for white noise) and nothing is detected at 1e-6;
- sample -> invert -> detect on an exact denoiser finds it; another key or an unmarked sample does not.
"""

from __future__ import annotations

import math

import pytest
import torch

from ebru.diffusion import GaussianMixture, invert, sample
from ebru.diffusion.tensors import randn_like, seed_generators
from ebru.provenance import GaussianShading, TreeRing
from ebru.provenance.treering import log_betainc, log_cosine_sf

SECRET = bytes(range(32))
OTHER = bytes(range(1, 33))
SHAPE = (2, 16, 16)


def _noise(n: int, shape=SHAPE, seed: int = 0) -> torch.Tensor:
    return randn_like(torch.empty(n, *shape), seed_generators(list(range(seed, seed + n))))


def _spectrum(plane: torch.Tensor) -> torch.Tensor:
    return torch.fft.fftshift(torch.fft.fft2(plane.double(), norm="ortho"), dim=(-2, -1))


@pytest.fixture(scope="module")
def ring():
    return TreeRing(SECRET, SHAPE)


# --------------------------------------------------------------------------- the null law


@pytest.mark.parametrize("c", [-0.9, -0.2, 0.0, 0.3, 0.99])
def test_cosine_tail_in_three_dimensions_is_archimedes(c):
    """On the sphere in 3-D the cosine with a fixed axis is uniform on [-1, 1]: P(C >= c) = (1 - c) / 2."""
    assert math.exp(log_cosine_sf(c, 3)) == pytest.approx((1 - c) / 2, rel=1e-10)


@pytest.mark.parametrize("c", [-0.5, 0.1, 0.7])
def test_cosine_tail_in_two_dimensions_is_the_arc_length(c):
    assert math.exp(log_cosine_sf(c, 2)) == pytest.approx(math.acos(c) / math.pi, rel=1e-10)


def test_cosine_tail_matches_a_monte_carlo_and_keeps_far_tails():
    g = torch.Generator().manual_seed(0)
    v = torch.randn(200_000, 40, generator=g, dtype=torch.float64)
    cos = v[:, 0] / v.norm(dim=1)
    for c in (0.1, 0.3, 0.5):
        share = float((cos >= c).double().mean())
        assert math.exp(log_cosine_sf(c, 40)) == pytest.approx(share, abs=4 * math.sqrt(share / 200_000) + 1e-4)
    far = log_cosine_sf(0.999, 59) / math.log(10)  # about 1e-80: finite, far below float64's 1e-308 is fine too
    assert -200 < far < -50 and log_cosine_sf(1.0, 59) == -math.inf and log_cosine_sf(-1.0, 59) == 0.0


def test_incomplete_beta_matches_scipy():
    special = pytest.importorskip("scipy.special")
    for a, b, x in [(0.5, 0.5, 0.2), (3.0, 7.0, 0.4), (29.0, 29.0, 0.01), (29.0, 29.0, 0.7), (2.0, 50.0, 0.9)]:
        assert math.exp(log_betainc(a, b, x)) == pytest.approx(float(special.betainc(a, b, x)), rel=1e-9)


@pytest.mark.parametrize(("call", "message"), [(lambda: log_cosine_sf(0.5, 1), "dim"),
                                               (lambda: log_cosine_sf(1.5, 4), "c must be"),
                                               (lambda: log_betainc(0.0, 1.0, 0.5), "a"),
                                               (lambda: log_betainc(1.0, 1.0, 2.0), "x must be")])
def test_null_law_refuses_bad_arguments(call, message):
    with pytest.raises(ValueError, match=message):
        call()


# --------------------------------------------------------------------------- the mark


def test_mark_writes_exactly_the_key_in_the_disc_of_one_channel(ring):
    z = _noise(4)
    marked = ring.apply(z)
    torch.testing.assert_close(marked[:, 0], z[:, 0], rtol=0, atol=0)  # the other channel is untouched
    before, after = _spectrum(z[:, 1]), _spectrum(marked[:, 1])
    mask = ring.mask
    torch.testing.assert_close(after[:, mask], ring.pattern[mask].to(after.dtype).expand(4, -1), rtol=0, atol=1e-6)
    torch.testing.assert_close(after[:, ~mask], before[:, ~mask], rtol=0, atol=1e-6)
    # real noise out: the ring pattern is symmetric under conjugation, so nothing was lost in taking .real
    imag = torch.fft.ifft2(torch.fft.ifftshift(after, dim=(-2, -1)), norm="ortho").imag
    assert float(imag.abs().max()) < 1e-6
    assert marked.dtype == z.dtype and marked is not z


def test_rings_are_constant_and_the_disc_has_the_default_radius(ring):
    assert ring.radius == round(16 * 10 / 64) and ring.channel == 1
    h = w = 16
    yy, xx = torch.meshgrid(torch.arange(h) - h // 2, torch.arange(w) - w // 2, indexing="ij")
    dist = (yy.double() ** 2 + xx.double() ** 2).sqrt()
    assert torch.equal(ring.mask, dist <= ring.radius)
    rings = dist.ceil().clamp(min=1)
    for i in range(1, ring.radius + 1):
        values = ring.pattern[ring.mask & (rings == i)]
        assert values.numel() > 0 and torch.all(values == values[0])
    # every conjugate pair once: 2 dof per complex coefficient, 1 for the real centre
    assert ring.dof == int(ring.mask.sum())


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32), (4, 9, 12), (3, 15, 15)])
def test_dof_counts_each_conjugate_pair_once_on_odd_and_even_sizes(shape):
    tr = TreeRing(SECRET, shape)
    assert tr.dof == int(tr.mask.sum())  # the disc never reaches a Nyquist bin, so only the centre is real
    x = _noise(2, shape)
    assert float(tr.apply(x).sub(x).abs().max()) > 0


def test_key_depends_on_secret_and_shape():
    a, b = TreeRing(SECRET, SHAPE), TreeRing(OTHER, SHAPE)
    assert not torch.equal(a.pattern, b.pattern)
    assert not torch.equal(a.pattern[a.mask][:3], TreeRing(SECRET, (2, 16, 16), radius=3).pattern[a.mask][:3])


# --------------------------------------------------------------------------- detection


def test_fresh_noise_gives_uniform_p_values_and_no_detection(ring):
    z = _noise(2000, seed=10)
    p = torch.tensor([r.p_value for r in ring.detect(z)])
    assert not any(r.detected for r in ring.detect(z[:200]))
    assert float(p.min()) > 1e-5
    for q in (0.05, 0.25, 0.5):  # binomial sd at n = 2000 is under 0.012
        assert abs(float((p <= q).double().mean()) - q) < 0.035


def test_marked_noise_is_detected_and_another_key_is_not(ring):
    z = ring.apply(_noise(8, seed=3))
    ours = ring.detect(z)
    assert all(r.detected and r.log10_p_value < -20 and r.correlation > 1 - 1e-9 for r in ours)
    theirs = TreeRing(OTHER, SHAPE).detect(z)
    assert not any(r.detected for r in theirs)


def test_round_trip_through_sampling_and_inversion():
    gm = GaussianMixture.random(dim=512, components=4, seed=0)
    gm.event_shape = SHAPE
    tr = TreeRing(SECRET, SHAPE)
    seeds = list(range(6))
    gs = GaussianShading(SECRET, SHAPE)
    z = tr.apply(gs.noise(seeds, gs.ids_for(seeds)))
    x0 = sample(gm, (6, *SHAPE), sampler="ddim", steps=20, seeds=seeds, noise=z)
    z_hat = invert(gm, x0, sampler="ddim", steps=20)
    assert all(r.detected for r in tr.detect(z_hat))
    assert all(d.detected for d in gs.decode(z_hat))  # Gaussian Shading still reads beside it
    plain = sample(gm, (6, *SHAPE), sampler="ddim", steps=20, seeds=seeds)
    assert not any(r.detected for r in tr.detect(invert(gm, plain, sampler="ddim", steps=20)))


def test_results_are_json_ready(ring):
    r = ring.detect(ring.apply(_noise(1)))[0].to_dict()
    assert set(r) == {"detected", "p_value", "log10_p_value", "correlation", "dof", "fpr", "key_id"}
    assert r["key_id"] == ring.key_id


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"shape": (16, 16)}, r"\(C, H, W\)"),
    ({"shape": (1, 6, 6)}, "H, W >= 8"),
    ({"shape": SHAPE, "radius": 8}, "radius must be between"),
    ({"shape": SHAPE, "channel": 2}, "channel"),
    ({"shape": SHAPE, "channel": True}, "channel"),
    ({"shape": "abc"}, "shape"),
])
def test_bad_arguments_raise_one_clear_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TreeRing(SECRET, **kwargs)


def test_bad_detection_input(ring):
    with pytest.raises(ValueError, match="shape"):
        ring.detect(torch.zeros(2, 1, 16, 16))
    with pytest.raises(ValueError, match="tensor"):
        ring.apply([[0.0]])
    with pytest.raises(ValueError, match="fpr"):
        ring.detect(_noise(1), fpr=2.0)
    flat = ring.detect(torch.zeros(1, *SHAPE))[0]  # an all-zero estimate: no direction, nothing detected
    assert not flat.detected and flat.correlation == 0.0 and flat.p_value == pytest.approx(0.5)
