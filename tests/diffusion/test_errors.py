"""Bad input fails early with a ValueError that names the problem (and the valid choices)."""

from __future__ import annotations

import inspect
import math
import socket

import pytest
import torch

from ebru.diffusion import (
    SAMPLERS,
    SCHEDULES,
    WEIGHTINGS,
    ClassifierFreeGuidance,
    EDMNoise,
    GaussianMixture,
    GaussianOracle,
    Precond,
    Registry,
    UnknownNameError,
    denoising_loss,
    get_sigmas,
    sample,
    sampler_nfe,
    steps_for_nfe,
)
from ebru.diffusion.tensors import check_finite_number, seed_generators, sigma_view

F64 = torch.float64


@pytest.fixture(scope="module")
def oracle():
    return GaussianOracle.random(dim=3, seed=0)


# --------------------------------------------------------------------------- unknown names


@pytest.mark.parametrize(("call", "kind", "choices", "hint"), [
    (lambda o: sample(o, (2, 3), sampler="eulr"), "sampler", sorted(SAMPLERS), "euler"),
    (lambda o: sample(o, (2, 3), schedule="karas"), "schedule", sorted(SCHEDULES), "karras"),
    (lambda o: get_sigmas("log-snr", 5, 0.002, 80.0), "schedule", sorted(SCHEDULES), "log_snr"),
    (lambda o: sampler_nfe("dpmpp2m", 5), "sampler", sorted(SAMPLERS), "dpmpp_2m"),
    (lambda o: denoising_loss(o, torch.zeros(2, 3), torch.ones(2), torch.zeros(2, 3), weighting="min-snr"),
     "loss weighting", sorted(WEIGHTINGS), "min_snr"),
], ids=["sampler", "schedule", "get_sigmas", "sampler_nfe", "weighting"])
def test_unknown_names_list_the_valid_choices(oracle, call, kind, choices, hint):
    with pytest.raises(UnknownNameError) as info:
        call(oracle)
    msg = str(info.value)
    assert f"unknown {kind}" in msg
    assert "valid choices: " + ", ".join(choices) in msg
    assert f"did you mean {hint!r}" in msg
    assert not msg.startswith(("'", '"'))  # not KeyError's repr-quoting


def test_unknown_name_error_is_both_key_error_and_value_error():
    assert issubclass(UnknownNameError, KeyError) and issubclass(UnknownNameError, ValueError)
    with pytest.raises(KeyError):
        SAMPLERS["nope"]
    with pytest.raises(ValueError, match="valid choices"):
        SAMPLERS["nope"]
    # No close match: no hint, still the list.
    with pytest.raises(ValueError) as info:
        SCHEDULES["zzzzzz"]
    assert "did you mean" not in str(info.value) and "karras" in str(info.value)


def test_registry_resolve_and_register():
    reg = Registry("widget")

    @reg.register("a", colour="red")
    def widget_a():
        return 1

    assert reg["a"] is widget_a and widget_a.colour == "red"
    assert reg.resolve("a") is widget_a
    assert reg.resolve(len) is len  # callables pass through
    with pytest.raises(ValueError, match="widget must be a name or a callable, got int"):
        reg.resolve(3)
    with pytest.raises(UnknownNameError, match="unknown widget 'b'; valid choices: a"):
        reg.resolve("b")
    assert reg.get("b") is None and "b" not in reg  # plain dict behaviour is kept


# --------------------------------------------------------------------------- steps and sigmas


@pytest.mark.parametrize("steps", [0, -3])
def test_steps_below_one(oracle, steps):
    with pytest.raises(ValueError, match=f"steps must be >= 1, got {steps}"):
        sample(oracle, (2, 3), steps=steps)


@pytest.mark.parametrize("steps", [2.5, 3.0, "10", True, None])
def test_steps_not_an_integer(oracle, steps):
    with pytest.raises(ValueError, match="steps must be an integer"):
        sample(oracle, (2, 3), steps=steps)


@pytest.mark.parametrize(("lo", "hi"), [(80.0, 1.0), (1.0, 1.0)])
def test_sigma_min_not_below_sigma_max(oracle, lo, hi):
    with pytest.raises(ValueError, match=r"sigma_min .* must be smaller than sigma_max"):
        sample(oracle, (2, 3), sigma_min=lo, sigma_max=hi)


@pytest.mark.parametrize(("kw", "name"), [
    ({"sigma_min": math.nan}, "sigma_min"), ({"sigma_max": math.nan}, "sigma_max"),
    ({"sigma_max": math.inf}, "sigma_max"), ({"sigma_min": -0.1}, "sigma_min"), ({"sigma_min": 0.0}, "sigma_min"),
    ({"sigma_max": "big"}, "sigma_max"),
])
def test_bad_sigma(oracle, kw, name):
    with pytest.raises(ValueError, match=name):
        sample(oracle, (2, 3), **kw)


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_every_schedule_validates_its_arguments(name):
    with pytest.raises(ValueError, match="steps"):
        SCHEDULES[name](0, 0.002, 80.0)
    with pytest.raises(ValueError, match="sigma_min"):
        SCHEDULES[name](5, math.nan, 80.0)
    with pytest.raises(ValueError, match="smaller than sigma_max"):
        SCHEDULES[name](5, 80.0, 0.002)


def test_bad_schedule_option(oracle):
    with pytest.raises(ValueError, match="rho"):
        sample(oracle, (2, 3), schedule_opts={"rho": math.nan})


# --------------------------------------------------------------------------- guidance, masks, seeds


@pytest.mark.parametrize("scale", [math.nan, math.inf, -math.inf])
def test_nan_or_inf_guidance_scale(oracle, scale):
    with pytest.raises(ValueError, match="guidance scale must be finite"):
        sample(oracle, (2, 3), guidance_scale=scale)


def test_mask_shape_mismatch(oracle):
    with pytest.raises(ValueError, match=r"mask shape \(2, 4\) does not broadcast to image shape \(2, 3\)"):
        sample(oracle, (2, 3), init=torch.zeros(2, 3), mask=torch.ones(2, 4))


@pytest.mark.parametrize("seeds", [[1, 2, 3], [1]])
def test_wrong_number_of_seeds(oracle, seeds):
    with pytest.raises(ValueError, match=f"got {len(seeds)} seeds for a batch of 2"):
        sample(oracle, (2, 3), seeds=seeds)


@pytest.mark.parametrize("seeds", [[1, 2.0], [1, "2"], [True, 1]])
def test_non_integer_seeds(oracle, seeds):
    with pytest.raises(ValueError, match="seeds must be integers"):
        sample(oracle, (2, 3), seeds=seeds)
    with pytest.raises(ValueError, match="seeds must be integers"):
        seed_generators(seeds)


@pytest.mark.parametrize("shape", [(), (0, 3), (2, -1)])
def test_bad_shape(oracle, shape):
    with pytest.raises(ValueError, match="shape"):
        sample(oracle, shape)


# --------------------------------------------------------------------------- denoisers


@pytest.mark.parametrize("prediction", ["epsilon", "sample", "", "EDM"])
def test_unknown_prediction(prediction):
    with pytest.raises(ValueError, match=r"unknown prediction .*valid choices: eps, x0, v, edm"):
        Precond(lambda x, c: x, prediction)


@pytest.mark.parametrize("sd", [0.0, -1.0, math.nan, math.inf])
def test_bad_sigma_data(sd):
    with pytest.raises(ValueError, match="sigma_data"):
        Precond(lambda x, c: x, "edm", sigma_data=sd)


def test_sigma_view_batch_mismatch():
    with pytest.raises(ValueError, match="sigma has 3 entries for a batch of 2"):
        sigma_view(torch.ones(3), torch.zeros(2, 4))


@pytest.mark.parametrize("which", ["precond", "oracle"])
def test_denoiser_sigma_batch_mismatch(oracle, which):
    d = Precond(lambda x, c: x, "edm") if which == "precond" else oracle
    with pytest.raises(ValueError, match="sigma has 3 entries"):
        d(torch.zeros(2, 3), torch.ones(3))


def test_oracle_dimension_mismatch(oracle):
    with pytest.raises(ValueError, match="oracle has dimension 3"):
        oracle(torch.zeros(2, 4), 1.0)


def test_mixture_label_errors():
    labelled = GaussianMixture.random(dim=2, components=4, classes=2, seed=0)
    with pytest.raises(ValueError, match="class label not in this mixture's labels"):
        labelled(torch.zeros(2, 2), 1.0, class_labels=torch.tensor([0, 5]))
    plain = GaussianMixture.random(dim=2, components=4, seed=0)
    with pytest.raises(ValueError, match="no component labels"):
        plain(torch.zeros(2, 2), 1.0, class_labels=torch.tensor([0, 1]))


def test_oracle_construction_errors():
    with pytest.raises(ValueError, match="positive definite"):
        GaussianOracle(torch.zeros(2), torch.tensor([[1.0, 0.0], [0.0, -1.0]]))
    with pytest.raises(ValueError, match="cov must be 2x2"):
        GaussianOracle(torch.zeros(2), torch.eye(3))
    with pytest.raises(ValueError, match="weights"):
        GaussianMixture(torch.tensor([1.0, -1.0]), torch.zeros(2, 2), torch.eye(2).expand(2, 2, 2))


def test_edm_noise_range():
    n = EDMNoise()
    assert (n.sigma_min, n.sigma_max, n.sigma_data) == (0.002, 80.0, 0.5)
    assert "sigma_max=80.0" in repr(n)
    with pytest.raises(ValueError, match=r"sigma_min \(80.0\) must be < sigma_max \(1.0\)"):
        EDMNoise(sigma_min=80.0, sigma_max=1.0)
    with pytest.raises(ValueError, match="sigma_data"):
        EDMNoise(sigma_data=math.nan)


def test_sampler_option_errors(oracle):
    with pytest.raises(ValueError, match="variant must be 'bh1' or 'bh2'"):
        sample(oracle, (2, 3), sampler="unipc", sampler_opts={"variant": "bh3"})
    with pytest.raises(ValueError, match="order must be an integer from 1 to 4"):
        sample(oracle, (2, 3), sampler="unipc", sampler_opts={"order": 5})
    with pytest.raises(ValueError, match="solver_type must be 'midpoint' or 'heun'"):
        sample(oracle, (2, 3), sampler="dpmpp_2m_sde", sampler_opts={"solver_type": "euler"})
    with pytest.raises(TypeError):
        sample(oracle, (2, 3), sampler="euler", sampler_opts={"no_such_option": 1})


@pytest.mark.parametrize("value", [math.nan, math.inf, "x", None])
def test_check_finite_number_names_the_value(value):
    with pytest.raises(ValueError, match="my_param"):
        check_finite_number("my_param", value)
    assert check_finite_number("p", "2.5") == 2.5
    with pytest.raises(ValueError, match="my_param must be > 0"):
        check_finite_number("my_param", 0, positive=True)


def test_guidance_errors_name_the_problem():
    mix = GaussianMixture.random(dim=2, components=2, classes=2, seed=0)
    with pytest.raises(ValueError, match="guidance scale must be finite, got nan"):
        ClassifierFreeGuidance(mix, math.nan)
    with pytest.raises(ValueError, match="guidance interval"):
        ClassifierFreeGuidance(mix, 2.0, interval=(2.0, 1.0))


# --------------------------------------------------------------------------- the test harness itself


def test_network_is_disabled_in_tests():
    with pytest.raises(RuntimeError, match="network access is disabled"):
        socket.create_connection(("127.0.0.1", 9))
    s = socket.socket()
    try:
        with pytest.raises(RuntimeError, match="network access is disabled"):
            s.connect(("127.0.0.1", 9))
    finally:
        s.close()


# --------------------------------------------------------------------------- shared defaults, no silent defaults


def test_defaults_come_from_sampling_defaults(oracle):
    from ebru.diffusion import EDMNoise, tune_schedule
    from ebru.diffusion.defaults import SAMPLING

    p = inspect.signature(sample).parameters
    assert (p["sampler"].default, p["steps"].default, p["schedule"].default) == (
        SAMPLING.sampler, SAMPLING.steps, SAMPLING.schedule)
    t = inspect.signature(tune_schedule).parameters
    assert (t["sigma_min"].default, t["sigma_max"].default) == (SAMPLING.sigma_min, SAMPLING.sigma_max)
    n = EDMNoise()
    assert (n.sigma_min, n.sigma_max) == (SAMPLING.sigma_min, SAMPLING.sigma_max)
    # A denoiser without its own range is sampled over SAMPLING's.
    a = sample(oracle, (2, 3), dtype=F64)
    b = sample(oracle, (2, 3), sampler=SAMPLING.sampler, steps=SAMPLING.steps, schedule=SAMPLING.schedule,
               sigma_min=SAMPLING.sigma_min, sigma_max=SAMPLING.sigma_max, dtype=F64)
    assert torch.equal(a, b)


@pytest.mark.parametrize(("call", "message"), [
    (lambda: steps_for_nfe("euler", 0), "nfe must be a positive integer, got 0"),
    (lambda: steps_for_nfe("heun", -3), "nfe must be a positive integer, got -3"),
    (lambda: steps_for_nfe("heun", 2.5), "nfe must be a positive integer"),
    (lambda: sampler_nfe("heun", 0), "steps must be a positive integer, got 0"),
    (lambda: GaussianMixture.random(dim=2, components=2, classes=0), "classes must be a positive integer, got 0"),
    (lambda: sample(GaussianOracle.random(dim=3, seed=0), (2, 3), sampler="unipc", sampler_opts={"order": True}),
     "order must be an integer from 1 to 4"),
], ids=["steps_for_nfe-0", "steps_for_nfe-negative", "steps_for_nfe-float", "sampler_nfe-0", "mixture-classes-0",
        "unipc-order-bool"])
def test_zero_and_wrong_typed_counts_are_refused(call, message):
    """0 used to be rounded up to one step, or read as "no labels" / order 1: now it is refused."""
    with pytest.raises(ValueError, match=message):
        call()
