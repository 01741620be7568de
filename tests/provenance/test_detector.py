"""The generated-image detector (ebru.provenance.detector): calibration, AUROC, the network's shapes, the package.

Exact facts only: the calibrated threshold is a known order statistic of known scores, the AUROC of hand-counted
pairs, the package's logits bit for bit those of the network that was saved, a changed weight file refused by
the manifest check, and the supporting-signal sentence on every result.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ebru.provenance.detector import (
    KIND,
    SUPPORTING_SIGNAL,
    Detector,
    DetectorConfig,
    DetectorNet,
    auroc,
    calibrate_threshold,
    write_detector,
)
from ebru.trust import IntegrityError, write_package


# ------------------------------------------------------------------------------------------- calibration
def test_calibration_is_the_conformal_order_statistic():
    # n = 199 at 1 %: k = floor(0.01 * 200) - 1 = 1, so the threshold is the 2nd largest score, 197
    scores = np.random.default_rng(0).permutation(np.arange(199.0))
    t = calibrate_threshold(scores, 0.01)
    assert t == 197.0
    assert int((scores > t).sum()) == 1
    # n = 2000 at 1 %: k = floor(20.01) - 1 = 19, the 20th largest of 0..1999 is 1980; 19 above it
    big = np.arange(2000.0)
    assert calibrate_threshold(torch.tensor(big), 0.01) == 1980.0
    assert int((big > 1980.0).sum()) == 19 and 20 / 2001 <= 0.01
    # at 5 % of 99: k = floor(5.0) - 1 = 4, the 5th largest of 0..98
    assert calibrate_threshold(list(range(99)), 0.05) == 94.0


def test_calibration_with_ties_flags_fewer_never_more():
    scores = [5.0] * 150 + [1.0] * 49  # the 2nd largest is a tied 5: nothing lies strictly above it
    t = calibrate_threshold(scores, 0.01)
    assert t == 5.0 and sum(s > t for s in scores) == 0


@pytest.mark.parametrize(("scores", "fpr", "pattern"), [
    (np.arange(50.0), 0.01, r"at least 99 held-out real images, got 50"),
    (np.arange(200.0), 1.0, r"fpr must be < 1"),
    (np.arange(200.0), 0.0, r"fpr must be > 0"),
    ([], 0.01, r"no scores"),
    ([0.1, float("nan")] * 100, 0.01, r"finite"),
])
def test_calibration_refusals_name_the_fault(scores, fpr, pattern):
    with pytest.raises(ValueError, match=pattern):
        calibrate_threshold(scores, fpr)


# ------------------------------------------------------------------------------------------- AUROC
def test_auroc_counts_pairs_and_half_ties():
    # sklearn's documented example: y = [0, 0, 1, 1], scores [0.1, 0.4, 0.35, 0.8] -> 0.75
    assert auroc([0.1, 0.4], [0.35, 0.8]) == 0.75
    # pairs by hand: 0.9 beats all 4; 0.4 beats 0.1, 0.35, ties 0.4 (1/2); 0.65 beats 3; 0.3 beats 0.1 -> 10.5 / 16
    assert auroc([0.1, 0.4, 0.35, 0.8], [0.9, 0.4, 0.65, 0.3]) == 10.5 / 16
    assert auroc([0, 1, 2], [3, 4]) == 1.0 and auroc([3, 4], [0, 1, 2]) == 0.0
    assert auroc([1.0] * 5, [1.0] * 7) == 0.5
    with pytest.raises(ValueError, match="positives: no scores"):
        auroc([1.0], [])


def test_auroc_agrees_with_sklearn():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(1)
    neg, pos = rng.integers(0, 20, 300).astype(float), rng.integers(5, 25, 200).astype(float)  # many ties
    expected = metrics.roc_auc_score(np.r_[np.zeros(300), np.ones(200)], np.r_[neg, pos])
    assert auroc(neg, pos) == pytest.approx(expected, abs=1e-12)


# ------------------------------------------------------------------------------------------- the network
@pytest.mark.parametrize(("shape", "levels"), [((2, 3, 32, 32), 3), ((1, 3, 17, 23), 3), ((3, 1, 8, 8), 2),
                                               ((1, 3, 1, 1), 3)])
def test_the_map_has_the_image_size_and_one_logit_per_image(shape, levels):
    net = DetectorNet(shape[1], 4, levels).eval()
    image_logit, map_logits = net(torch.rand(shape) * 2 - 1)
    assert image_logit.shape == (shape[0],)
    assert map_logits.shape == (shape[0], 1, *shape[2:])


def test_an_image_gets_the_same_result_whatever_batch_it_is_in():
    # GroupNorm normalises each image on its own (no batch statistics), so detection does not depend on neighbours
    net = DetectorNet(3, 4, 3).eval()
    x = torch.rand(4, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        a, m = net(x)
        a1, m1 = net(x[2:3])
    torch.testing.assert_close(a[2:3], a1, rtol=0, atol=1e-6)
    torch.testing.assert_close(m[2:3], m1, rtol=0, atol=1e-6)


def test_wrong_shapes_and_configs_are_refused_in_one_line():
    with pytest.raises(ValueError, match=r"takes images \(B, 3, H, W\), got shape \(2, 1, 8, 8\)"):
        DetectorNet(3, 4, 2)(torch.zeros(2, 1, 8, 8))
    with pytest.raises(ValueError, match=r"in_channels must be 1 .* or 3"):
        DetectorConfig(in_channels=2)
    with pytest.raises(ValueError, match=r"unknown .* key 'chanels' \(did you mean 'channels'\?\)"):
        DetectorConfig.from_dict({"chanels": 8})


# ------------------------------------------------------------------------------------------- the package
def _package(tmp_path, threshold_logit=0.3, shape=(3, 16, 16)):
    torch.manual_seed(3)
    net = DetectorNet(shape[0], 4, 2)
    path = write_detector(tmp_path / "det", net, threshold_logit, image_shape=shape, fpr=0.01,
                          trained_on={"models": [{"name": "m/model", "manifest_sha256": "ab" * 32}],
                                      "settings": [{"sampler": "euler", "steps": 10, "guidance": None}]},
                          calibration={"images": 200}, dataset="tests")
    return net.eval(), path


def test_package_round_trip_gives_the_same_logits_threshold_and_note(tmp_path):
    net, path = _package(tmp_path)
    det = Detector.from_pretrained(path, quiet=True)
    assert det.config["kind"] == KIND and det.config["supporting_signal"] == SUPPORTING_SIGNAL
    assert det.threshold_logit == 0.3 and det.threshold == pytest.approx(1 / (1 + math.exp(-0.3)), abs=1e-15)
    assert det.digest == det.model.manifest_sha256 and len(det.digest) == 64
    x = torch.randint(0, 256, (5, 3, 16, 16), dtype=torch.uint8)
    with torch.no_grad():
        a, m = net(x.float() / 127.5 - 1)
    pred = det.predict(x)
    assert torch.equal(pred.p_generated, torch.sigmoid(a))
    assert torch.equal(pred.map, torch.sigmoid(m[:, 0]))
    assert torch.equal(pred.flagged, a > 0.3)
    assert pred.note == SUPPORTING_SIGNAL and "never decides alone" in pred.note
    # a float input in [-1, 1] is the same as its uint8 form
    assert torch.equal(det.predict(x.float() / 127.5 - 1).p_generated, pred.p_generated)
    card = (path / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert "pipeline_tag: image-classification" in card and SUPPORTING_SIGNAL in card


def test_a_tampered_weight_file_is_refused_before_it_is_read(tmp_path):
    _, path = _package(tmp_path)
    weights = path / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0x01  # one bit of one weight
    weights.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match=r"model\.safetensors: SHA-256 .* does not match the manifest"):
        Detector.from_pretrained(path, quiet=True)


def test_a_package_that_is_not_a_detector_is_refused(tmp_path):
    card = "---\nlicense: mit\nbase_model: null\n---\n# not a detector\n"
    path = write_package(tmp_path / "other", {"kind": "image-diffusion"}, {"w": torch.zeros(2)}, card)
    with pytest.raises(ValueError, match=r"config\.json: not an ebru generated-image detector .*'image-diffusion'"):
        Detector.from_pretrained(path, quiet=True)
