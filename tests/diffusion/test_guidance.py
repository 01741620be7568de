"""Classifier-free guidance on an exact class-conditional Gaussian mixture.

With ``GaussianMixture.random(..., classes=2)`` the conditional denoiser for class y
and the unconditional one (class label -1, or no label) are both exact, so
D_w = D_u + w (D_c - D_u) can be checked entry for entry.
"""

from __future__ import annotations

import functools
import math

import pytest
import torch

from ebru.diffusion import ClassifierFreeGuidance, GaussianMixture, sample

F64 = torch.float64
UNCOND = {"class_labels": torch.tensor([-1])}


@pytest.fixture(scope="module", params=[0, 1])
def mix(request):
    return GaussianMixture.random(dim=4, components=4, classes=2, seed=request.param)


@pytest.fixture(scope="module")
def batch():
    g = torch.Generator().manual_seed(3)
    sig = torch.tensor([0.02, 0.3, 1.0, 2.0, 5.0, 40.0], dtype=F64)
    x = torch.randn(6, 4, generator=g, dtype=F64) * (1 + sig[:, None])
    labels = torch.tensor([0, 1, 0, 1, 1, 0])
    return x, sig, labels


class Counting:
    def __init__(self, inner):
        self.inner = inner
        self.calls = []

    def __call__(self, x, sigma, **cond):
        self.calls.append((x.shape[0], {k: v.clone() if torch.is_tensor(v) else v for k, v in cond.items()}))
        return self.inner(x, sigma, **cond)


def parts(mix, x, sig, labels):
    d_c = mix(x, sig, class_labels=labels)
    d_u = mix(x, sig, class_labels=torch.full_like(labels, -1))
    return d_c, d_u


def test_unconditional_label_is_the_mixture_without_labels(mix, batch):
    x, sig, labels = batch
    d_c, d_u = parts(mix, x, sig, labels)
    assert torch.equal(d_u, mix(x, sig))
    # Guidance is not vacuous here: conditional and unconditional outputs differ a lot.
    assert float((d_c - d_u).abs().max()) > 0.1


def test_scale_one_is_the_conditional_denoiser(mix, batch):
    x, sig, labels = batch
    d_c, _ = parts(mix, x, sig, labels)
    assert torch.equal(ClassifierFreeGuidance(mix, 1.0, uncond=UNCOND)(x, sig, class_labels=labels), d_c)


def test_scale_zero_is_the_unconditional_denoiser(mix, batch):
    x, sig, labels = batch
    _, d_u = parts(mix, x, sig, labels)
    out = ClassifierFreeGuidance(mix, 0.0, uncond=UNCOND)(x, sig, class_labels=labels)
    assert float((out - d_u).abs().max()) <= 1e-14


@pytest.mark.parametrize("w", [-1.0, 0.5, 2.0, 3.5, 7.5])
def test_scale_w_is_the_cfg_combination(mix, batch, w):
    x, sig, labels = batch
    d_c, d_u = parts(mix, x, sig, labels)
    out = ClassifierFreeGuidance(mix, w, uncond=UNCOND)(x, sig, class_labels=labels)
    assert float((out - (d_u + w * (d_c - d_u))).abs().max()) <= 1e-13 * max(1.0, abs(w))


def test_guided_score_is_the_tilted_score(mix, batch):
    """On scores: grad log p_w = grad log p(x) + w (grad log p(x|c) - grad log p(x)), i.e. p(x) p(c|x)^w."""
    x, sig, labels = batch
    w = 3.0
    out = ClassifierFreeGuidance(mix, w, uncond=UNCOND)(x, sig, class_labels=labels)
    guided_score = (out - x) / sig[:, None] ** 2
    s_u = mix.score(x, sig)
    s_c = mix.score(x, sig, class_labels=labels)
    assert torch.allclose(guided_score, s_u + w * (s_c - s_u), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("w", [0.0, 2.0, 5.0])
def test_one_batched_forward_per_call(mix, batch, w):
    x, sig, labels = batch
    counted = Counting(mix)
    ClassifierFreeGuidance(counted, w, uncond=UNCOND)(x, sig, class_labels=labels)
    assert len(counted.calls) == 1
    rows, cond = counted.calls[0]
    assert rows == 2 * x.shape[0]
    assert torch.equal(cond["class_labels"], torch.cat([labels, torch.full_like(labels, -1)]))


def test_scale_one_needs_a_single_unbatched_pass(mix, batch):
    x, sig, labels = batch
    counted = Counting(mix)
    ClassifierFreeGuidance(counted, 1.0, uncond=UNCOND)(x, sig, class_labels=labels)
    assert [c[0] for c in counted.calls] == [x.shape[0]]


def test_unbatchable_conditions_fall_back_to_two_passes(mix, batch):
    """A 0-d label cannot be concatenated along the batch: two passes, same answer."""
    x, sig, _ = batch
    counted = Counting(mix)
    w = 2.5
    out = ClassifierFreeGuidance(counted, w, uncond={"class_labels": torch.tensor(-1)})(
        x, sig, class_labels=torch.tensor(1))
    assert [c[0] for c in counted.calls] == [x.shape[0], x.shape[0]]
    d_c = mix(x, sig, class_labels=torch.ones(6, dtype=torch.long))
    d_u = mix(x, sig)
    assert float((out - (d_u + w * (d_c - d_u))).abs().max()) <= 1e-13


def test_negative_condition_replaces_uncond(mix, batch):
    x, sig, labels = batch
    w = 4.0
    neg = torch.tensor([1])
    out = ClassifierFreeGuidance(mix, w, uncond=UNCOND, negative={"class_labels": neg})(x, sig, class_labels=labels)
    d_c = mix(x, sig, class_labels=labels)
    d_n = mix(x, sig, class_labels=neg.expand(6))
    assert float((out - (d_n + w * (d_c - d_n))).abs().max()) <= 1e-13 * w
    plain = ClassifierFreeGuidance(mix, w, uncond=UNCOND)(x, sig, class_labels=labels)
    assert float((out - plain).abs().max()) > 1e-3


@pytest.mark.parametrize(("lo", "hi"), [(0.3, 5.0), (0.0, 1.0), (1.5, 100.0)])
def test_guidance_interval(mix, batch, lo, hi):
    """Guidance only where lo < sigma <= hi; elsewhere the conditional output (per sample)."""
    x, sig, labels = batch
    w = 3.0
    d_c, d_u = parts(mix, x, sig, labels)
    guided = d_u + w * (d_c - d_u)
    out = ClassifierFreeGuidance(mix, w, uncond=UNCOND, interval=(lo, hi))(x, sig, class_labels=labels)
    inside = (sig > lo) & (sig <= hi)
    assert bool(inside.any()) and bool((~inside).any())
    assert torch.equal(out[~inside], d_c[~inside])
    assert float((out[inside] - guided[inside]).abs().max()) <= 1e-13 * w


def test_guidance_interval_bounds_are_half_open(mix, batch):
    x, sig, labels = batch
    # sig[1] = 0.3 is the open lower bound (not guided); sig[4] = 5.0 the closed upper bound (guided).
    d_c, d_u = parts(mix, x, sig, labels)
    out = ClassifierFreeGuidance(mix, 3.0, uncond=UNCOND, interval=(0.3, 5.0))(x, sig, class_labels=labels)
    assert torch.equal(out[1], d_c[1])
    assert float((out[4] - (d_u[4] + 3.0 * (d_c[4] - d_u[4]))).abs().max()) <= 1e-12


def test_interval_with_no_active_sample_is_one_conditional_pass(mix, batch):
    x, sig, labels = batch
    counted = Counting(mix)
    out = ClassifierFreeGuidance(counted, 3.0, uncond=UNCOND, interval=(100.0, 200.0))(x, sig, class_labels=labels)
    assert len(counted.calls) == 1 and counted.calls[0][0] == x.shape[0]
    assert torch.equal(out, mix(x, sig, class_labels=labels))


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, "a lot"])
def test_bad_scale_is_rejected(mix, bad):
    with pytest.raises(ValueError, match="guidance scale"):
        ClassifierFreeGuidance(mix, bad, uncond=UNCOND)


@pytest.mark.parametrize("interval", [(5.0, 1.0), (-1.0, 2.0), (1.0, 1.0), (0.0, math.nan)])
def test_bad_interval_is_rejected(mix, interval):
    with pytest.raises(ValueError, match="interval"):
        ClassifierFreeGuidance(mix, 2.0, uncond=UNCOND, interval=interval)


def test_sample_with_guidance_equals_sampling_the_guided_denoiser(mix):
    labels = torch.tensor([0, 1, 1, 0])
    w = 2.5
    a = sample(mix, (4, 4), steps=8, seeds=[3, 1, 4, 1], guidance_scale=w, uncond=UNCOND, class_labels=labels,
               dtype=F64)
    guided = ClassifierFreeGuidance(mix, w, uncond=UNCOND)
    b = sample(lambda x, s: guided(x, s, class_labels=labels), (4, 4), steps=8, seeds=[3, 1, 4, 1], dtype=F64)
    assert torch.equal(a, b)
    c = sample(mix, (4, 4), steps=8, seeds=[3, 1, 4, 1], class_labels=labels, dtype=F64)  # no guidance
    assert float((a - c).abs().max()) > 1e-3


def test_guidance_scale_one_in_sample_is_the_conditional_model(mix):
    labels = torch.tensor([0, 1, 1, 0])
    a = sample(mix, (4, 4), steps=8, seeds=0, guidance_scale=1.0, uncond=UNCOND, class_labels=labels, dtype=F64)
    b = sample(mix, (4, 4), steps=8, seeds=0, class_labels=labels, dtype=F64)
    assert torch.equal(a, b)


def test_guided_samples_concentrate_on_the_requested_class(mix):
    """Mode-weight check: with exact CFG at w = 3 every sample lands in a component of its class."""
    n = 64
    labels = torch.arange(n) % 2
    out = sample(mix, (n, 4), sampler="dpmpp_2m", steps=30, seeds=0, guidance_scale=3.0, uncond=UNCOND,
                 class_labels=labels, dtype=F64)
    # Nearest component in the Mahalanobis sense of each component's covariance.
    diff = out[:, None, :] - mix.means[None]
    maha = torch.einsum("bkd,kde,bke->bk", diff, torch.linalg.inv(mix.covs), diff)
    comp = maha.argmin(1)
    assert torch.equal(mix.labels[comp], labels)


# --------------------------------------------------------------------------- guidance without uncond


@pytest.mark.parametrize("w", [0.0, 2.0, 3.0, 7.5])
def test_without_uncond_the_condition_is_dropped(mix, batch, w):
    """No ``uncond``: the unconditional pass is D(x, sigma) with the condition left out, which is the
    oracle's (and ebru's nets') null condition. It used to return D_c unchanged for every scale."""
    x, sig, labels = batch
    d_c, d_u = parts(mix, x, sig, labels)
    out = ClassifierFreeGuidance(mix, w)(x, sig, class_labels=labels)
    assert float((out - (d_u + w * (d_c - d_u))).abs().max()) <= 1e-13 * max(1.0, w)
    # Exactly the same as naming the null label, which batches both passes into one call.
    named = ClassifierFreeGuidance(mix, w, uncond=UNCOND)(x, sig, class_labels=labels)
    assert float((out - named).abs().max()) <= 1e-13 * max(1.0, w)


def test_dropped_condition_passes_no_keywords(mix, batch):
    x, sig, labels = batch
    counted = Counting(mix)
    ClassifierFreeGuidance(counted, 3.0)(x, sig, class_labels=labels)
    assert [rows for rows, _ in counted.calls] == [6, 6]
    assert set(counted.calls[0][1]) == {"class_labels"} and counted.calls[1][1] == {}


def test_sample_with_guidance_and_no_uncond_guides(mix):
    labels = torch.tensor([0, 1, 1, 0])
    kw = {"steps": 8, "seeds": [3, 1, 4, 1], "class_labels": labels, "dtype": F64}
    a = sample(mix, (4, 4), guidance_scale=3.0, **kw)
    b = sample(mix, (4, 4), guidance_scale=3.0, uncond=UNCOND, **kw)
    c = sample(mix, (4, 4), **kw)  # unguided
    assert torch.allclose(a, b, rtol=1e-12, atol=1e-12)
    assert float((a - c).abs().max()) > 1e-3


@pytest.mark.parametrize("w", [0.0, 3.0])
def test_no_uncond_and_no_condition_is_refused(mix, batch, w):
    x, sig, _ = batch
    with pytest.raises(ValueError, match=r"guidance at scale .*needs an unconditional branch: pass uncond="):
        ClassifierFreeGuidance(mix, w)(x, sig)
    counted = Counting(mix)
    with pytest.raises(ValueError, match=r"pass uncond=.*'class_labels': torch.tensor\(\[-1\]\)"):
        sample(counted, (2, 4), guidance_scale=w)
    assert counted.calls == []  # refused before sampling


def test_scale_one_needs_no_uncond(mix, batch):
    x, sig, labels = batch
    assert torch.equal(ClassifierFreeGuidance(mix, 1.0)(x, sig, class_labels=labels),
                       mix(x, sig, class_labels=labels))
    assert torch.equal(ClassifierFreeGuidance(mix, 1.0)(x, sig), mix(x, sig))


def test_uncond_keys_go_to_the_unconditional_pass_only(mix, batch):
    """A condition bound inside the denoiser, overridden by ``uncond``: the conditional pass must not
    receive uncond's keys (it used to, and both passes were unconditional)."""
    x, sig, labels = batch
    w = 2.5
    bound = functools.partial(mix, class_labels=labels)
    out = ClassifierFreeGuidance(bound, w, uncond={"class_labels": torch.full_like(labels, -1)})(x, sig)
    d_c, d_u = parts(mix, x, sig, labels)
    assert float((out - (d_u + w * (d_c - d_u))).abs().max()) <= 1e-13 * w
