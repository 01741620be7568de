"""Step schedules: the contract every schedule keeps, and each one's formula."""

from __future__ import annotations

import json
import math

import pytest
import torch

from ebru.diffusion import SCHEDULES, WarpedSchedule, get_sigmas
from ebru.diffusion.noise import vp_continuous_sigma, vp_continuous_t

SIGMA_MIN, SIGMA_MAX = 0.002, 80.0
F64 = torch.float64


@pytest.mark.parametrize("n", [1, 2, 5, 50])
@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_schedule_contract(name, n):
    s = get_sigmas(name, n, SIGMA_MIN, SIGMA_MAX)
    assert s.dtype == F64 and s.shape == (n + 1,)
    assert bool((s[1:] < s[:-1]).all())
    assert float(s[-1]) == 0.0
    assert float(s[0]) == pytest.approx(SIGMA_MAX, rel=1e-14)
    if n >= 2:
        # Not always bit-exact (e.g. 80 + (0.002 - 80) for "linear"): rounding only.
        assert float(s[n - 1]) == pytest.approx(SIGMA_MIN, rel=1e-11)
    assert bool((s[:-1] > 0).all())
    # The registry entry and get_sigmas agree.
    assert torch.equal(SCHEDULES[name](n, SIGMA_MIN, SIGMA_MAX), s)


@pytest.mark.parametrize(("lo", "hi"), [(0.002, 80.0), (0.03, 14.6), (1e-3, 1.0)])
@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_schedule_contract_other_ranges(name, lo, hi):
    s = get_sigmas(name, 9, lo, hi)
    assert float(s[0]) == pytest.approx(hi, rel=1e-14)
    assert float(s[8]) == pytest.approx(lo, rel=1e-11)


def test_vp_uniform_endpoints_are_exact():
    for n in (2, 5, 50):
        s = get_sigmas("vp_uniform", n, SIGMA_MIN, SIGMA_MAX)
        assert float(s[0]) == SIGMA_MAX and float(s[n - 1]) == SIGMA_MIN


@pytest.mark.parametrize("n", [2, 3, 18, 25])
def test_karras_formula(n):
    """sigma_i = (smax^(1/rho) + i/(n-1) (smin^(1/rho) - smax^(1/rho)))^rho, computed with Python floats."""
    s = get_sigmas("karras", n, SIGMA_MIN, SIGMA_MAX)
    a, b = SIGMA_MAX ** (1 / 7), SIGMA_MIN ** (1 / 7)
    expected = [(a + i / (n - 1) * (b - a)) ** 7 for i in range(n)] + [0.0]
    assert s.tolist() == pytest.approx(expected, rel=1e-13)


def test_karras_spot_values():
    # The midpoint of any odd-length rho = 7 schedule on [0.002, 80]: ((80^(1/7) + 0.002^(1/7)) / 2)^7.
    mid = ((80 ** (1 / 7) + 0.002 ** (1 / 7)) / 2) ** 7
    assert mid == pytest.approx(2.515218976147159, rel=1e-14)
    assert float(get_sigmas("karras", 3, SIGMA_MIN, SIGMA_MAX)[1]) == pytest.approx(mid, rel=1e-13)
    assert float(get_sigmas("karras", 25, SIGMA_MIN, SIGMA_MAX)[12]) == pytest.approx(mid, rel=1e-13)
    # rho is a real option: rho = 1 is the linear schedule.
    assert torch.allclose(get_sigmas("karras", 7, SIGMA_MIN, SIGMA_MAX, rho=1.0),
                          get_sigmas("linear", 7, SIGMA_MIN, SIGMA_MAX), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("n", [2, 7, 40])
def test_log_snr_has_equal_log_gaps(n):
    s = get_sigmas("log_snr", n, SIGMA_MIN, SIGMA_MAX)
    gaps = s[:-1].log().diff()
    expected = (math.log(SIGMA_MIN) - math.log(SIGMA_MAX)) / (n - 1)
    assert torch.allclose(gaps, torch.full_like(gaps, expected), rtol=1e-12, atol=0)


@pytest.mark.parametrize("n", [2, 7, 40])
def test_linear_and_vp_uniform_spacing(n):
    lin = get_sigmas("linear", n, SIGMA_MIN, SIGMA_MAX)[:-1]
    assert torch.allclose(lin.diff(), torch.full((n - 1,), (SIGMA_MIN - SIGMA_MAX) / (n - 1), dtype=F64),
                          rtol=1e-10, atol=0)
    vp = get_sigmas("vp_uniform", n, SIGMA_MIN, SIGMA_MAX)[:-1]
    t = vp_continuous_t(vp)
    assert torch.allclose(t.diff(), t.diff()[:1].expand(n - 1), rtol=1e-9, atol=0)


def test_vp_continuous_sigma_and_t_invert_each_other():
    t = torch.linspace(1e-5, 1.0, 101, dtype=F64)
    assert torch.allclose(vp_continuous_t(vp_continuous_sigma(t)), t, rtol=1e-10, atol=0)
    # Song et al. / EDM VP: sigma(t) = sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1).
    assert float(vp_continuous_sigma(torch.tensor(1.0, dtype=F64))) == pytest.approx(
        math.sqrt(math.exp(19.9 / 2 + 0.1) - 1), rel=1e-14)


# --------------------------------------------------------------------------- WarpedSchedule


@pytest.mark.parametrize("name", ["karras", "log_snr", "vp_uniform", "linear"])
@pytest.mark.parametrize("n", [2, 5, 33])
def test_warped_from_sigmas_reproduces_them(name, n):
    s = get_sigmas(name, n, SIGMA_MIN, SIGMA_MAX)
    w = WarpedSchedule.from_sigmas(s)
    assert len(w.knots) == n
    assert float(w.knots[0]) == 0.0 and float(w.knots[-1]) == pytest.approx(1.0, abs=1e-15)
    # Evaluate at the schedule's own end levels ("linear" misses sigma_min by a rounding error).
    again = get_sigmas(w, n, float(s[n - 1]), float(s[0]))
    assert float(again[-1]) == 0.0
    assert torch.allclose(again, s, rtol=1e-13, atol=0)


def test_warped_from_arbitrary_descending_levels():
    s = torch.tensor([50.0, 20.0, 3.0, 2.9, 0.4, 0.01, 0.0], dtype=F64)
    w = WarpedSchedule.from_sigmas(s)
    assert torch.allclose(w(6, 0.01, 50.0), s, rtol=1e-13, atol=0)


def test_warped_identity_warp_is_log_snr_at_any_size():
    w = WarpedSchedule.from_sigmas(get_sigmas("log_snr", 10, SIGMA_MIN, SIGMA_MAX))
    for n in (3, 10, 17, 64):
        assert torch.allclose(w(n, SIGMA_MIN, SIGMA_MAX), get_sigmas("log_snr", n, SIGMA_MIN, SIGMA_MAX),
                              rtol=1e-12, atol=0)


def test_warped_resizes_by_interpolating_the_warp():
    """A warp evaluated at another n is the piecewise-linear warp at r = i/(n-1)."""
    w = WarpedSchedule([0.0, 0.7, 1.0])
    s = w(5, SIGMA_MIN, SIGMA_MAX)
    u = torch.tensor([0.0, 0.35, 0.7, 0.85, 1.0], dtype=F64)
    expected = (math.log(SIGMA_MAX) + u * (math.log(SIGMA_MIN) - math.log(SIGMA_MAX))).exp()
    assert torch.allclose(s[:-1], expected, rtol=1e-13, atol=0)


def test_warped_save_load_round_trip(tmp_path):
    s = get_sigmas("karras", 12, SIGMA_MIN, SIGMA_MAX)
    w = WarpedSchedule.from_sigmas(s, name="my-warp", info={"sampler": "heun", "steps": 12})
    path = tmp_path / "warp.json"
    w.save(path)
    data = json.loads(path.read_text())
    assert data["name"] == "my-warp" and data["info"] == {"sampler": "heun", "steps": 12}
    back = WarpedSchedule.load(path)
    assert back.name == "my-warp" and back.info == w.info
    assert torch.equal(back.knots, w.knots)
    assert torch.equal(back(12, SIGMA_MIN, SIGMA_MAX), w(12, SIGMA_MIN, SIGMA_MAX))
    assert "my-warp" in repr(back)


def test_warped_load_rejects_bad_files(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="warped-schedule"):
        WarpedSchedule.load(bad)
    nokey = tmp_path / "nokey.json"
    nokey.write_text(json.dumps({"name": "x"}))
    with pytest.raises(ValueError, match="warped-schedule"):
        WarpedSchedule.load(nokey)
    with pytest.raises(ValueError, match="warped-schedule"):
        WarpedSchedule.load(tmp_path / "missing.json")


@pytest.mark.parametrize("knots", [[0.0], [0.0, 0.5], [0.1, 1.0], [0.0, 0.6, 0.5, 1.0], [0.0, 0.5, 0.5, 1.0]])
def test_warped_rejects_bad_knots(knots):
    with pytest.raises(ValueError, match="knots"):
        WarpedSchedule(knots)


def test_warped_from_sigmas_needs_a_final_zero():
    with pytest.raises(ValueError, match="final 0"):
        WarpedSchedule.from_sigmas(torch.tensor([80.0, 1.0, 0.002], dtype=F64))
    with pytest.raises(ValueError, match="final 0"):
        WarpedSchedule.from_sigmas(torch.tensor([80.0, 0.0], dtype=F64))


# --------------------------------------------------------------------------- custom schedules


def test_get_sigmas_accepts_a_valid_custom_schedule():
    def custom(n, lo, hi):
        return torch.cat([torch.linspace(hi, lo, n, dtype=F64), torch.zeros(1, dtype=F64)])

    assert torch.allclose(get_sigmas(custom, 4, SIGMA_MIN, SIGMA_MAX), get_sigmas("linear", 4, SIGMA_MIN, SIGMA_MAX),
                          rtol=1e-10, atol=0)


@pytest.mark.parametrize("bad", [
    lambda n, lo, hi: torch.linspace(hi, lo, n + 1),                                   # no final 0
    lambda n, lo, hi: torch.cat([torch.linspace(hi, lo, n), torch.zeros(2)]),          # n + 2 levels
    lambda n, lo, hi: torch.cat([torch.linspace(lo, hi, n), torch.zeros(1)]),          # ascending
    lambda n, lo, hi: torch.cat([torch.full((n,), hi), torch.zeros(1)]),               # not strict
], ids=["no-final-zero", "too-long", "ascending", "repeated"])
def test_get_sigmas_rejects_a_bad_custom_schedule(bad):
    with pytest.raises(ValueError, match="strictly descending"):
        get_sigmas(bad, 5, SIGMA_MIN, SIGMA_MAX)
