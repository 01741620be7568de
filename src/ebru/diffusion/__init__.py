"""ebru.diffusion: the math of continuous noise.

The Denoiser contract ``D(x, sigma, **cond) -> x0_hat`` (``x = x0 + sigma * eps``),
preconditioning, forward-process schedules, losses, step schedules, samplers,
guidance and editing transforms, and exact-score oracles to test them against.
Flow models (rectified flow / flow matching) are ``Precond(net, "flow")``; their
coordinates and a path-straightness measure are in :mod:`ebru.diffusion.flow`; reflow
(the teacher's noise/sample pairs, the straight-line loss) is :mod:`ebru.diffusion.reflow`.
Probability-flow ODE inversion (image -> initial noise, "DDIM inversion") is :func:`invert`
(:mod:`ebru.diffusion.inversion`). Few-step distillation: progressive distillation's math is
:mod:`ebru.diffusion.distill`; consistency models' (ECT, consistency distillation; a student as a
:class:`ConsistencyDenoiser`) is :mod:`ebru.diffusion.consistency`.
"""

from .consistency import ConsistencyDenoiser
from .denoiser import PREDICTIONS, Denoiser, DiscreteTimesteps, Precond, scalings, vp_denoiser
from .editing import Inpaint, img2img_start, repaint
from .flow import flow_velocity, shift_t, sigma_to_t, straightness, t_to_sigma
from .guidance import ClassifierFreeGuidance
from .inversion import INVERTERS, invert
from .loss import WEIGHTINGS, DiscreteSigma, LogNormalSigma, VPUniformTSigma, denoising_loss
from .noise import (
    EDMNoise,
    add_noise,
    alphas_cumprod_to_sigmas,
    q_sample,
    rescale_zero_terminal_snr,
    sigmas_to_alphas_cumprod,
    vp_cosine_alphas_cumprod,
    vp_linear_alphas_cumprod,
)
from .ode import solve_pf_ode
from .oracle import GaussianMixture, GaussianOracle
from .reflow import REFLOW_TIMES, CouplingDenoiser, line_noise, make_pairs, reflow_grid, reflow_loss, reflow_time
from .registry import Registry, UnknownNameError
from .sample import sample
from .samplers import SAMPLERS, sampler_nfe, steps_for_nfe
from .steps import SCHEDULES, WarpedSchedule, get_sigmas
from .tuning import pf_ode_reference, rms_error, tune_schedule

__all__ = [
    "INVERTERS", "PREDICTIONS", "REFLOW_TIMES", "SAMPLERS", "SCHEDULES", "WEIGHTINGS",
    "ClassifierFreeGuidance", "ConsistencyDenoiser", "CouplingDenoiser", "Denoiser", "DiscreteSigma",
    "DiscreteTimesteps", "EDMNoise",
    "GaussianMixture", "GaussianOracle", "Inpaint", "LogNormalSigma", "Precond", "Registry",
    "UnknownNameError", "VPUniformTSigma", "WarpedSchedule",
    "add_noise", "alphas_cumprod_to_sigmas", "denoising_loss", "flow_velocity", "get_sigmas", "img2img_start",
    "invert", "line_noise", "make_pairs", "pf_ode_reference", "q_sample", "reflow_grid", "reflow_loss",
    "reflow_time",
    "repaint", "rescale_zero_terminal_snr", "rms_error", "sample",
    "sampler_nfe", "scalings", "shift_t", "sigma_to_t", "sigmas_to_alphas_cumprod", "solve_pf_ode",
    "steps_for_nfe", "straightness", "t_to_sigma", "tune_schedule", "vp_cosine_alphas_cumprod",
    "vp_denoiser", "vp_linear_alphas_cumprod",
]
