"""Progressive distillation's math against the exact Gaussian-mixture oracle (ebru.diffusion.distill).

The oracle is an exact teacher, so the exact student is known in closed form: the x0 target (2) of the
teacher's two DDIM steps. One student step with it must land on the teacher's two-step point, to
float64 precision, and a whole student sampling run on the halved grid must equal the teacher's run
on the full grid, round after round.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from ebru.diffusion import SAMPLERS, ClassifierFreeGuidance, GaussianMixture, get_sigmas, sample
from ebru.diffusion.distill import (
    GUIDANCE_FEATURES,
    GridSchedule,
    GuidanceInput,
    PerSampleGuidance,
    ddim_step,
    distill_weight,
    guidance_features,
    halving_grids,
    halving_rounds,
    possible_student_steps,
    progressive_loss,
    progressive_target,
    step_sigmas,
    student_sigmas,
    teacher_two_steps,
)

F64 = torch.float64


@pytest.fixture(scope="module")
def oracle():
    return GaussianMixture.random(dim=6, components=4, classes=2, seed=3)


def x_at(sigma, n=16, dim=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, dim, generator=g, dtype=F64) * (1 + sigma)


@pytest.mark.parametrize(("s_t", "s_mid", "s_s"), [(80.0, 5.0, 0.3), (2.0, 1.0, 0.5), (0.7, 0.2, 0.002),
                                                   (10.0, 0.05, 0.0), (0.3, 0.1, 0.0)])
def test_one_student_step_with_the_target_lands_on_the_teachers_two_steps(oracle, s_t, s_mid, s_s):
    x = x_at(s_t)
    x_s = teacher_two_steps(oracle, x, s_t, s_mid, s_s)
    target = progressive_target(x, x_s, s_t, s_s)
    student = ddim_step(x, target, s_t, s_s)
    torch.testing.assert_close(student, x_s, rtol=1e-12, atol=1e-12)
    # the teacher's two steps are exactly ebru's Euler (= deterministic DDIM) sampler on [s_t, s_mid, s_s]
    torch.testing.assert_close(x_s, SAMPLERS["euler"](oracle, x, torch.tensor([s_t, s_mid, s_s], dtype=F64)),
                               rtol=1e-12, atol=1e-12)
    if s_s == 0:
        assert torch.equal(target, x_s)  # the last step: the target is the teacher's two-step result itself


def test_per_sample_sigmas_and_a_conditional_teacher(oracle):
    grid = get_sigmas("karras", 8, 0.002, 80.0)
    index = torch.arange(16) % 4
    s_t, s_mid, s_s = step_sigmas(grid, index)
    x = x_at(1.0)
    labels = torch.arange(16) % 2
    x_s = teacher_two_steps(oracle, x, s_t, s_mid, s_s, class_labels=labels)
    student = ddim_step(x, progressive_target(x, x_s, s_t, s_s), s_t, s_s)
    torch.testing.assert_close(student, x_s, rtol=1e-12, atol=1e-12)
    for b in (0, 5, 11):  # sample b alone, with scalar sigmas, gives the same point
        one = teacher_two_steps(oracle, x[b:b + 1], float(s_t[b]), float(s_mid[b]), float(s_s[b]),
                                class_labels=labels[b:b + 1])
        torch.testing.assert_close(one, x_s[b:b + 1], rtol=1e-13, atol=1e-13)


def test_the_halving_grids_nest_and_start_from_ebrus_schedule():
    grids = halving_grids(get_sigmas("karras", 16, 0.002, 80.0), 1)
    assert [len(g) - 1 for g in grids] == [16, 8, 4, 2, 1]
    assert torch.equal(grids[0], get_sigmas("karras", 16, 0.002, 80.0))
    for teacher, student in itertools.pairwise(grids):
        assert torch.equal(student, teacher[::2])  # every other level of the teacher's 2N-step grid
    assert grids[-1].tolist() == [80.0, 0.0]
    assert torch.equal(student_sigmas(grids[1]), grids[2])


def exact_student(teacher, teacher_grid):
    """The exact student of ``teacher`` on ``teacher_grid``: at its own level sigma_2i it returns the target (2)."""
    levels = teacher_grid.tolist()

    def d(x, sigma, **cond):
        i = torch.tensor([levels.index(float(s)) // 2 for s in sigma])  # each sample's student step
        s_t, s_mid, s_s = step_sigmas(teacher_grid, i)
        return progressive_target(x, teacher_two_steps(teacher, x, s_t, s_mid, s_s, **cond), s_t, s_s)

    return d


def test_students_of_students_sample_exactly_what_the_first_teacher_samples(oracle):
    """Three rounds 8 -> 4 -> 2 -> 1 of exact students: each N-step Euler run equals the 8-step teacher run."""
    grids = halving_grids(get_sigmas("karras", 8, 0.002, 80.0), 1)
    x = torch.randn(12, 6, generator=torch.Generator().manual_seed(1), dtype=F64) * 80.0
    want = SAMPLERS["euler"](oracle, x, grids[0])
    teacher = oracle
    for teacher_grid, grid in itertools.pairwise(grids):
        teacher = exact_student(teacher, teacher_grid)
        torch.testing.assert_close(SAMPLERS["euler"](teacher, x, grid), want, rtol=1e-9, atol=1e-9)


def test_round_plan_and_the_counts_it_can_reach():
    assert halving_rounds(32, 4) == [(32, 16), (16, 8), (8, 4)]
    assert halving_rounds(8, 4) == [(8, 4)]
    assert possible_student_steps(32) == [16, 8, 4, 2, 1]
    assert possible_student_steps(24) == [12, 6, 3]
    with pytest.raises(ValueError, match=r"teacher's 32 steps .* one of 16, 8, 4, 2, 1; got 3"):
        halving_rounds(32, 3)
    with pytest.raises(ValueError, match=r"one of 16, 8, 4, 2, 1; got 32"):
        halving_rounds(32, 32)
    with pytest.raises(ValueError, match=r"odd count cannot be halved"):
        halving_rounds(5, 2)
    with pytest.raises(ValueError, match=r"2N \+ 1 levels ending in 0"):
        student_sigmas(get_sigmas("karras", 3, 0.002, 80.0))
    with pytest.raises(ValueError, match=r"index must be in \[0, 2\)"):
        step_sigmas(get_sigmas("karras", 4, 0.002, 80.0), torch.tensor([0, 2]))


def test_grid_schedule_samples_exactly_its_grid(oracle):
    grid = halving_grids(get_sigmas("karras", 8, 0.002, 80.0), 2)[-1]
    sched = GridSchedule(grid)
    assert torch.equal(get_sigmas(sched, 2, 0.002, 80.0), grid)
    seen = []
    sample(oracle, (3, 6), sampler="euler", steps=2, schedule=sched, dtype=F64,
           callback=lambda info: seen.append(float(info["sigma"])))
    assert seen == grid[:-1].tolist()
    with pytest.raises(ValueError, match=r"has 2 steps, not 3"):
        get_sigmas(sched, 3, 0.002, 80.0)
    with pytest.raises(ValueError, match=r"strictly descending levels ending in 0"):
        GridSchedule([80.0, 1.0])
    assert "2 steps" in str(sched)


def test_the_loss_is_zero_for_the_exact_student_and_weighted_by_truncated_snr(oracle):
    grid = get_sigmas("karras", 4, 0.002, 80.0)
    x0 = oracle.sample(8, generator=torch.Generator().manual_seed(2))
    noise = torch.randn(8, 6, generator=torch.Generator().manual_seed(3), dtype=F64)
    index = torch.tensor([0, 1, 0, 1, 0, 1, 0, 1])
    student = exact_student(oracle, grid)
    loss = progressive_loss(student, oracle, x0, noise, grid, index)
    assert loss.shape == (8,)
    assert float(loss.abs().max()) < 1e-20
    # a student that is off by 0.1 everywhere: loss = weight(sigma_t) * 0.01
    loss = progressive_loss(lambda x, s, **c: student(x, s, **c) + 0.1, oracle, x0, noise, grid, index)
    s_t = grid[2 * index]
    torch.testing.assert_close(loss, (1 / s_t**2).clamp(min=1) * 0.01, rtol=1e-9, atol=1e-12)
    assert distill_weight("truncated_snr", torch.tensor([0.5, 2.0])).tolist() == [4.0, 1.0]
    torch.testing.assert_close(distill_weight("edm", torch.tensor([1.0]), sigma_data=0.5), torch.tensor([5.0]))
    with pytest.raises(ValueError, match=r"unknown distillation weighting 'truncated'.*did you mean 'truncated_snr'"):
        distill_weight("truncated", torch.tensor([1.0]))


def test_per_sample_guidance_is_classifier_free_guidance_at_each_samples_scale(oracle):
    x, s = x_at(1.0, n=4), torch.tensor([3.0, 1.0, 0.5, 0.1], dtype=F64)
    labels = torch.tensor([0, 1, 1, 0])
    w = torch.tensor([0.0, 1.0, 2.5, 7.0], dtype=F64)
    null = {"class_labels": torch.tensor([-1])}
    got = PerSampleGuidance(oracle, null)(x, s, guidance=w, class_labels=labels)
    for b in range(4):
        cfg = ClassifierFreeGuidance(oracle, float(w[b]), uncond=null)
        want = cfg(x[b:b + 1], s[b:b + 1], class_labels=labels[b:b + 1])
        torch.testing.assert_close(got[b:b + 1], want, rtol=1e-12, atol=1e-12)


def test_the_guidance_input_feeds_the_scales_features_to_the_pooled_input():
    f = guidance_features(torch.tensor([0.0, 1.0, 1.1, 14.0]))
    assert f.shape == (4, GUIDANCE_FEATURES) and f.dtype == torch.float32
    assert f[0].tolist() == [1.0] * 8 + [0.0] * 8  # cos 0, sin 0
    assert float((f[1] - f[2]).abs().max()) > 0.05 and float((f[1] - f[3]).abs().max()) > 0.5
    seen = {}

    def net(x, sigma, encoder_pooled=None, **cond):
        seen.update(pooled=encoder_pooled, **cond)
        return x

    d = GuidanceInput(net, default=2.0)
    d(torch.zeros(2, 3), 1.0, class_labels=torch.tensor([1, 2]))
    assert torch.equal(seen["pooled"], guidance_features(torch.full((2,), 2.0)))
    d(torch.zeros(2, 3), 1.0, guidance=torch.tensor([1.0, 14.0]))
    assert torch.equal(seen["pooled"], guidance_features(torch.tensor([1.0, 14.0])))
    with pytest.raises(ValueError, match=r"must be even"):
        guidance_features(torch.zeros(1), dim=5)
