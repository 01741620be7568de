"""Schedule tuning: gradients through samplers, and tuned schedules that generalize.

The tuning objective backpropagates through a sampler with respect to its sigma
levels; the gradients are checked against finite differences first. Then
``tune_schedule`` must lower the error on *held-out* noise draws, not just on the
ones it was tuned on.

Note on the mixture used: with ``GaussianMixture.random(dim=8, components=4)`` at
its default spread (means ~ N(0, 1), stds 0.02-0.2) a 6-step schedule tuned on 64
trajectories does not reliably generalize: at n = 6 the error is dominated by the few
trajectories that end in the wrong component, and the optimizer fits those
(measured held-out MSE 0.166 -> 0.176 for seed 0). A less separated mixture
(spread 0.3, stds 0.05-0.3) gives held-out improvements for every seed tried.
(Those figures are mean squared errors, the objective then; ``tune_schedule`` now fits and
judges ``rms_error`` and keeps its choice honest with held-out draws, tested below.)
"""

from __future__ import annotations

import pytest
import torch

from ebru.diffusion import (
    SAMPLERS,
    SCHEDULES,
    GaussianMixture,
    GaussianOracle,
    WarpedSchedule,
    get_sigmas,
    pf_ode_reference,
    rms_error,
    tune_schedule,
    tuning,
)
from ebru.diffusion.tuning import tune_many

SIGMA_MIN, SIGMA_MAX = 0.002, 80.0
F64 = torch.float64


@pytest.mark.parametrize("sampler", ["euler", "heun", "dpmpp_2m", "dpmpp_3m", "unipc", "ddim"])
def test_samplers_are_differentiable_in_their_sigmas(sampler):
    o = GaussianOracle.random(dim=3, seed=0)
    x = SIGMA_MAX * torch.randn(2, 3, generator=torch.Generator().manual_seed(0), dtype=F64)
    base = get_sigmas("karras", 6, SIGMA_MIN, SIGMA_MAX)

    def run(inner):
        return SAMPLERS[sampler](o, x, torch.cat([base[:1], inner, base[-2:]]))

    assert torch.autograd.gradcheck(run, (base[1:-2].clone().requires_grad_(True),))


@pytest.fixture(scope="module", params=[0, 2])
def tuning_problem(request):
    seed = request.param
    mix = GaussianMixture.random(dim=8, components=4, spread=0.3, narrow=(0.05, 0.3), seed=seed)
    g = torch.Generator().manual_seed(100 + seed)
    x_train = SIGMA_MAX * torch.randn(64, 8, generator=g, dtype=F64)
    x_test = SIGMA_MAX * torch.randn(128, 8, generator=g, dtype=F64)
    ref_train = pf_ode_reference(mix, x_train, SIGMA_MAX, SIGMA_MIN)
    ref_test = pf_ode_reference(mix, x_test, SIGMA_MAX, SIGMA_MIN)
    tuned = tune_schedule(mix, "dpmpp_2m", 6, x_train, init="karras", reference=ref_train, iters=60, lr=0.05)
    return mix, x_train, ref_train, x_test, ref_test, tuned


def test_tuned_schedule_reduces_held_out_error(tuning_problem):
    mix, _, _, x_test, ref_test, tuned = tuning_problem
    karras = get_sigmas("karras", 6, SIGMA_MIN, SIGMA_MAX)
    err_karras = rms_error(SAMPLERS["dpmpp_2m"](mix, x_test, karras), ref_test)
    err_tuned = rms_error(SAMPLERS["dpmpp_2m"](mix, x_test, tuned(6, SIGMA_MIN, SIGMA_MAX)), ref_test)
    assert err_tuned < 0.9 * err_karras, (err_karras, err_tuned)
    # Training and held-out errors went down too, and info records them.
    assert tuned.info["improved"] and tuned.info["best_iter"] >= 1
    assert tuned.info["rms_tuned"] < tuned.info["rms_init"]
    assert tuned.info["heldout_rms_tuned"] < tuned.info["heldout_rms_init"]
    assert tuned.info["sampler"] == "dpmpp_2m" and tuned.info["steps"] == 6 and tuned.info["init"] == "karras"


def test_tuned_schedule_reproduces_its_sigmas_and_keeps_endpoints(tuning_problem, tmp_path):
    *_, tuned = tuning_problem
    assert isinstance(tuned, WarpedSchedule) and tuned.name == "tuned-dpmpp_2m-6"
    recorded = torch.tensor(tuned.info["sigmas"], dtype=F64)
    assert recorded.shape == (7,)
    s = get_sigmas(tuned, 6, SIGMA_MIN, SIGMA_MAX)
    assert torch.allclose(s, recorded, rtol=1e-12, atol=0)
    assert float(s[0]) == pytest.approx(SIGMA_MAX, rel=1e-13)
    assert float(s[5]) == pytest.approx(SIGMA_MIN, rel=1e-13)
    assert float(s[6]) == 0.0
    # Moved away from the initial Karras levels.
    assert float((s[1:5] / get_sigmas("karras", 6, SIGMA_MIN, SIGMA_MAX)[1:5]).log().abs().max()) > 0.05
    # The saved file gives the same schedule.
    tuned.save(tmp_path / "t.json")
    assert torch.equal(WarpedSchedule.load(tmp_path / "t.json")(6, SIGMA_MIN, SIGMA_MAX), s)


def test_tuning_computes_its_own_reference():
    mix = GaussianMixture.random(dim=4, components=2, spread=0.3, narrow=(0.05, 0.3), seed=0)
    x = SIGMA_MAX * torch.randn(8, 4, generator=torch.Generator().manual_seed(0), dtype=F64)
    a = tune_schedule(mix, "euler", 4, x, iters=3)
    b = tune_schedule(mix, "euler", 4, x, reference=pf_ode_reference(mix, x, SIGMA_MAX, SIGMA_MIN), iters=3)
    assert torch.allclose(a(4, SIGMA_MIN, SIGMA_MAX), b(4, SIGMA_MIN, SIGMA_MAX), rtol=1e-12, atol=0)


@pytest.mark.parametrize("steps", [
    1,
    2,
])
def test_too_few_steps_return_the_initial_schedule(steps):
    o = GaussianOracle.random(dim=3, seed=0)
    w = tune_schedule(o, "heun", steps, torch.zeros(2, 3, dtype=F64), init="log_snr")
    assert torch.allclose(w(steps, SIGMA_MIN, SIGMA_MAX), get_sigmas("log_snr", steps, SIGMA_MIN, SIGMA_MAX),
                          rtol=1e-13, atol=0)


def test_init_best_starts_from_the_best_registered_schedule(tuning_problem):
    """"best" is chosen on all 64 draws; of them the first 48 are fitted, the last 16 held out (holdout 0.25)."""
    mix, x_train, ref_train, *_ = tuning_problem
    fit, hold = slice(0, 48), slice(48, 64)

    def err(name, part):
        return rms_error(SAMPLERS["dpmpp_2m"](mix, x_train[part], get_sigmas(name, 6, SIGMA_MIN, SIGMA_MAX)),
                         ref_train[part])

    errs = {name: err(name, slice(None)) for name in SCHEDULES}
    tuned = tune_schedule(mix, "dpmpp_2m", 6, x_train, init="best", reference=ref_train, iters=5)
    best = min(errs, key=errs.get)
    assert tuned.info["init"] == best
    assert (tuned.info["fit_draws"], tuned.info["heldout_draws"]) == (48, 16)
    assert tuned.info["rms_init"] == pytest.approx(err(best, fit), rel=1e-12)
    assert tuned.info["heldout_rms_init"] == pytest.approx(err(best, hold), rel=1e-12)
    assert tuned.info["heldout_rms_tuned"] <= tuned.info["heldout_rms_init"]


@pytest.mark.parametrize("sampler", ["ddpm", "dpmpp_2m_sde", "dpmpp_3m_sde"])
def test_stochastic_sampler_is_rejected(sampler):
    o = GaussianOracle.random(dim=3, seed=0)
    with pytest.raises(ValueError, match=f"sampler {sampler!r} is stochastic"):
        tune_schedule(o, sampler, 6, torch.zeros(2, 3, dtype=F64))


def test_unknown_sampler_is_rejected():
    o = GaussianOracle.random(dim=3, seed=0)
    with pytest.raises(ValueError, match="valid choices"):
        tune_schedule(o, "dpm_fast", 6, torch.zeros(2, 3, dtype=F64))


def test_tune_many_shares_one_reference(monkeypatch):
    mix = GaussianMixture.random(dim=4, components=2, spread=0.3, narrow=(0.05, 0.3), seed=1)
    x = SIGMA_MAX * torch.randn(8, 4, generator=torch.Generator().manual_seed(1), dtype=F64)
    calls = []
    real = tuning.pf_ode_reference
    monkeypatch.setattr(tuning, "pf_ode_reference", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    out = tune_many(mix, ["euler", "heun"], [2, 4], x, iters=2)
    assert len(calls) == 1  # one reference solve for the four schedules
    assert set(out) == {("euler", 2), ("euler", 4), ("heun", 2), ("heun", 4)}
    ref = real(mix, x, SIGMA_MAX, SIGMA_MIN)
    for (sampler, steps), w in out.items():  # each is what tune_schedule gives with that reference
        assert isinstance(w, WarpedSchedule) and (w.info["sampler"], w.info["steps"]) == (sampler, steps)
        alone = tune_schedule(mix, sampler, steps, x, reference=ref, iters=2)
        assert torch.equal(w(steps, SIGMA_MIN, SIGMA_MAX), alone(steps, SIGMA_MIN, SIGMA_MAX)), (sampler, steps)


def test_rms_error():
    a = torch.zeros(2, 3, dtype=F64)
    b = torch.tensor([[3.0, 0.0, 0.0], [1.0, 1.0, 1.0]], dtype=F64)
    assert rms_error(a, b) == pytest.approx((3**0.5 + 1.0) / 2, rel=1e-15)


@pytest.mark.parametrize("opts", [{"s_churn": 10.0}, {"eta": 0.5}])
def test_stochastic_sampler_options_are_rejected(opts):
    o = GaussianOracle.random(dim=3, seed=0)
    with pytest.raises(ValueError, match="stochastic"):
        tune_schedule(o, "euler" if "s_churn" in opts else "dpmpp_2m_sde", 5, torch.zeros(2, 3, dtype=F64),
                      sampler_opts=opts)


# --------------------------------------------------------------------------- held-out draws and early stopping


@pytest.fixture(scope="module")
def mixture_24d():
    """The reported case: a 24-d, 10-component mixture, unipc at 10 steps, tuned on 256 draws.

    With this mixture (spread 2) the old tuner, which fitted the mean squared error on all
    its draws for 30 iterations, returned a schedule with RMS error 0.0377 on fresh noise
    against 0.0260 for the vp_uniform schedule it started from.
    """
    mix = GaussianMixture.random(dim=24, components=10, spread=2.0, seed=0)
    g = torch.Generator().manual_seed(1000)
    x_fit = SIGMA_MAX * torch.randn(256, 24, generator=g, dtype=F64)
    x_new = SIGMA_MAX * torch.randn(128, 24, generator=g, dtype=F64)
    ref_fit = pf_ode_reference(mix, x_fit, SIGMA_MAX, SIGMA_MIN)
    ref_new = pf_ode_reference(mix, x_new, SIGMA_MAX, SIGMA_MIN)
    return mix, x_fit, ref_fit, x_new, ref_new


def test_tuned_schedule_is_no_worse_than_its_start_on_fresh_noise(mixture_24d):
    mix, x_fit, ref_fit, x_new, ref_new = mixture_24d
    tuned = tune_schedule(mix, "unipc", 10, x_fit, reference=ref_fit, iters=30)
    unipc = SAMPLERS["unipc"]
    start = get_sigmas(tuned.info["init"], 10, SIGMA_MIN, SIGMA_MAX)
    err_start = rms_error(unipc(mix, x_new, start), ref_new)
    err_tuned = rms_error(unipc(mix, x_new, tuned(10, SIGMA_MIN, SIGMA_MAX)), ref_new)
    assert err_tuned <= err_start * (1 + 1e-9), (err_start, err_tuned)
    # info carries both errors on the held-out part (the last 64 of 256 draws), checked independently.
    info = tuned.info
    assert (info["fit_draws"], info["heldout_draws"]) == (192, 64)
    hold = slice(192, 256)
    assert info["heldout_rms_init"] == pytest.approx(rms_error(unipc(mix, x_fit[hold], start), ref_fit[hold]),
                                                     rel=1e-12)
    assert info["heldout_rms_tuned"] == pytest.approx(
        rms_error(unipc(mix, x_fit[hold], torch.tensor(info["sigmas"], dtype=F64)), ref_fit[hold]), rel=1e-12)
    assert info["heldout_rms_tuned"] <= info["heldout_rms_init"]


def test_no_improvement_on_held_out_draws_returns_the_initial_schedule(mixture_24d):
    mix, x_fit, ref_fit, *_ = mixture_24d
    for kw in ({"iters": 0}, {"iters": 3, "lr": 1e-12}):
        tuned = tune_schedule(mix, "unipc", 10, x_fit[:64], reference=ref_fit[:64], init="karras", **kw)
        assert not tuned.info["improved"] and tuned.info["best_iter"] == -1
        assert tuned.info["heldout_rms_tuned"] == tuned.info["heldout_rms_init"]
        assert tuned.info["rms_tuned"] == tuned.info["rms_init"]
        assert torch.allclose(tuned(10, SIGMA_MIN, SIGMA_MAX), get_sigmas("karras", 10, SIGMA_MIN, SIGMA_MAX),
                              rtol=1e-13, atol=0)


def test_early_stopping_after_patience_iterations(tuning_problem):
    mix, x_train, ref_train, *_ = tuning_problem
    tuned = tune_schedule(mix, "dpmpp_2m", 6, x_train, init="karras", reference=ref_train, iters=200, patience=3)
    info = tuned.info
    assert info["iters_run"] < 200
    assert info["iters_run"] == max(info["best_iter"], 0) + 3


@pytest.mark.parametrize(("kw", "message"), [
    ({"steps": 0}, "steps must be a positive integer, got 0"),
    ({"steps": -2}, "steps must be a positive integer"),
    ({"steps": 4.0}, "steps must be a positive integer"),
    ({"iters": -1}, "iters must be an integer >= 0"),
    ({"lr": 0.0}, "lr must be > 0"),
    ({"holdout": 0.0}, r"holdout must be a share in \(0, 1\)"),
    ({"holdout": 1.0}, r"holdout must be a share in \(0, 1\)"),
    ({"patience": 0}, "patience must be a positive integer"),
    ({"sigma_min": 0.0}, "sigma_min must be > 0"),
    ({"x": torch.zeros(1, 3, dtype=F64)}, "at least 2 starting points"),
    ({"reference": torch.zeros(4, 2, dtype=F64)}, r"reference has shape \(4, 2\), x has \(4, 3\)"),
])
def test_bad_arguments_are_refused(kw, message):
    """0 steps used to return a schedule silently; every argument is now checked before any work."""
    o = GaussianOracle.random(dim=3, seed=0)
    args = {"steps": 5, "x": SIGMA_MAX * torch.randn(4, 3, generator=torch.Generator().manual_seed(0), dtype=F64)}
    args.update(kw)
    steps, x = args.pop("steps"), args.pop("x")
    with pytest.raises(ValueError, match=message):
        tune_schedule(o, "euler", steps, x, **args)
