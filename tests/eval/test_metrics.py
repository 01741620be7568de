"""FID, KID and precision/recall against closed forms, brute force and invariants."""

from __future__ import annotations

import pytest
import torch

from ebru.eval import FeatureStats, fid, frechet_distance, kid, mmd2_unbiased, precision_recall
from ebru.eval.features import extract_features, network_fingerprint
from ebru.eval.kid import polynomial_kernel
from ebru.eval.precision_recall import knn_radii


def _stats(mu, cov, n=1000):
    return FeatureStats(torch.as_tensor(mu, dtype=torch.float64), torch.as_tensor(cov, dtype=torch.float64), n)


def test_frechet_closed_form_for_commuting_covariances():
    a = _stats([0.0, 1.0, 2.0], torch.diag(torch.tensor([1.0, 4.0, 9.0])))
    b = _stats([1.0, 1.0, 0.0], torch.diag(torch.tensor([4.0, 1.0, 0.25])))
    expected = (1 + 0 + 4) + (1 - 2) ** 2 + (2 - 1) ** 2 + (3 - 0.5) ** 2
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-12)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-10)


def test_frechet_is_rotation_invariant_and_symmetric():
    g = torch.Generator().manual_seed(0)
    fa = torch.randn(600, 5, generator=g, dtype=torch.float64) @ torch.randn(5, 5, generator=g, dtype=torch.float64)
    fb = torch.randn(600, 5, generator=g, dtype=torch.float64) * 2 + 0.3
    q, _ = torch.linalg.qr(torch.randn(5, 5, generator=g, dtype=torch.float64))
    d = fid(fa, fb)
    assert fid(fa @ q, fb @ q) == pytest.approx(d, rel=1e-9)
    assert fid(fb, fa) == pytest.approx(d, rel=1e-9)


def test_frechet_matches_scipy_sqrtm():
    linalg = pytest.importorskip("scipy.linalg")
    g = torch.Generator().manual_seed(1)
    fa = torch.randn(400, 8, generator=g, dtype=torch.float64) @ torch.randn(8, 8, generator=g, dtype=torch.float64)
    fb = torch.randn(400, 8, generator=g, dtype=torch.float64) @ torch.randn(8, 8, generator=g, dtype=torch.float64)
    a, b = FeatureStats.from_features(fa), FeatureStats.from_features(fb)
    covmean = linalg.sqrtm(a.cov.numpy() @ b.cov.numpy()).real
    ref = float(((a.mu - b.mu) ** 2).sum() + a.cov.trace() + b.cov.trace() - 2 * covmean.trace())
    assert frechet_distance(a, b) == pytest.approx(ref, rel=1e-8)


def test_feature_stats_match_torch_and_refuse_too_few_samples():
    f = torch.randn(300, 4, dtype=torch.float64)
    s = FeatureStats.from_features(f)
    assert torch.allclose(s.cov, torch.cov(f.T))
    assert torch.allclose(s.mu, f.mean(0))
    with pytest.raises(ValueError, match="more samples than feature dimensions"):
        FeatureStats.from_features(torch.randn(4, 4))
    with pytest.raises(ValueError, match="dimensions differ"):
        frechet_distance(s, FeatureStats.from_features(torch.randn(50, 3)))


def test_mmd_matches_brute_force():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(7, 3, generator=g, dtype=torch.float64)
    y = torch.randn(5, 3, generator=g, dtype=torch.float64) + 0.5

    def k(a, b):
        return (a @ b / 3 + 1) ** 3

    sxx = sum(k(x[i], x[j]) for i in range(7) for j in range(7) if i != j) / (7 * 6)
    syy = sum(k(y[i], y[j]) for i in range(5) for j in range(5) if i != j) / (5 * 4)
    sxy = sum(k(x[i], y[j]) for i in range(7) for j in range(5)) / 35
    assert mmd2_unbiased(x, y) == pytest.approx(float(sxx + syy - 2 * sxy), rel=1e-12)
    gram = polynomial_kernel(x, y)
    assert gram.shape == (7, 5)
    assert gram[3, 4].item() == pytest.approx(float(k(x[3], y[4])), rel=1e-12)
    assert torch.allclose(polynomial_kernel(x, y, degree=1, gamma=0.5, coef=0.0), 0.5 * x @ y.T, rtol=1e-15, atol=0)


def test_kid_is_unbiased_near_zero_for_one_distribution_and_positive_for_two():
    g = torch.Generator().manual_seed(3)
    a = torch.randn(2000, 8, generator=g)
    b = torch.randn(2000, 8, generator=g)
    mean, std = kid(a, b, subsets=50, subset_size=500)
    assert abs(mean) < std  # subsets of one pool are correlated: compare with one subset's spread
    shifted, _ = kid(a, b + 0.5, subsets=20, subset_size=500)
    assert shifted > 20 * std
    with pytest.raises(ValueError, match="at least 2"):
        kid(a[:1], b)


def test_precision_recall_hand_example_and_extremes():
    real = torch.arange(5, dtype=torch.float64)[:, None]           # 0..4: k=1 radii are all 1
    fake = torch.tensor([[0.5], [10.0]], dtype=torch.float64)     # one inside, one far out
    assert knn_radii(real, 1).tolist() == [1.0] * 5
    p, r = precision_recall(real, fake, k=1, equalize=False)
    assert p == 0.5                                               # 0.5 is inside, 10 is not
    assert r == 1.0                                               # the fake balls (radius 9.5) cover 0..4
    x = torch.randn(200, 4)
    assert precision_recall(x, x.clone()) == (1.0, 1.0)
    assert precision_recall(x, x + 100) == (0.0, 0.0)


def test_precision_recall_separate_fidelity_from_coverage():
    g = torch.Generator().manual_seed(4)
    centres = torch.tensor([[0.0, 0.0], [20.0, 0.0]])
    real = torch.cat([c + torch.randn(300, 2, generator=g) for c in centres])
    collapsed = centres[0] + torch.randn(600, 2, generator=g)     # all samples from one mode
    p, r = precision_recall(real, collapsed)
    assert p > 0.9 and 0.4 < r < 0.6


def test_network_fingerprint_tracks_weights_and_shapes_are_checked():
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    fp = network_fingerprint(net)
    assert fp == network_fingerprint(net) and len(fp) == 64
    with torch.no_grad():
        net[1].weight[0, 0] += 1e-3
    assert network_fingerprint(net) != fp
    u8 = torch.randint(0, 256, (5, 1, 4, 4), dtype=torch.uint8)
    assert torch.allclose(extract_features(net, u8), extract_features(net, u8.float() / 127.5 - 1))
    with pytest.raises(ValueError, match="cannot take"):
        extract_features(net, torch.zeros(2, 1, 5, 5))


def test_network_fingerprint_hashes_batch_norm_buffers_including_zero_dim_ones():
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2))  # num_batches_tracked is 0-dim
    before = network_fingerprint(net)
    net[1].num_batches_tracked += 1
    assert network_fingerprint(net) != before
