"""ebru's shipped Fashion-MNIST feature network: verified weights, recorded accuracy, class agreement."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from ebru.eval import class_agreement, feature_net, load_feature_net


def test_weights_verify_and_match_recorded_accuracy():
    net = load_feature_net()
    info = json.loads(feature_net.WEIGHTS_INFO.read_text())
    assert net.sha256 == info["sha256"]
    assert info["test_accuracy"] >= 0.9
    try:
        from ebru.data import FashionMNIST

        test = FashionMNIST("test")
    except FileNotFoundError:
        pytest.skip("Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")
    x, y = test.tensors()
    assert class_agreement(net, x[:2000], y[:2000]) == pytest.approx(
        float((torch.cat([net(x[i:i + 500]).argmax(1) for i in range(0, 2000, 500)]) == y[:2000]).float().mean()))
    assert class_agreement(net, x[:2000], y[:2000]) >= 0.88
    f = net.features(x[:4])
    assert f.shape == (4, 256) and bool((f >= 0).all())  # the ReLU'd penultimate layer
    with torch.no_grad():
        torch.testing.assert_close(net.head(f), net(x[:4]), rtol=0, atol=0)  # the logits read these features
        # eval mode (batch norm on running statistics): an image's features do not depend on its batch
        torch.testing.assert_close(net.features(x[2:3]), f[2:3], rtol=1e-5, atol=1e-5)


def test_tampered_weights_are_refused(tmp_path, monkeypatch):
    w = tmp_path / "w.safetensors"
    shutil.copy(feature_net.WEIGHTS, w)
    data = bytearray(w.read_bytes())
    data[-1] ^= 1
    w.write_bytes(bytes(data))
    monkeypatch.setattr(feature_net, "WEIGHTS", w)
    with pytest.raises(ValueError, match="expected"):
        load_feature_net()


def test_wrong_input_shape_and_label_count():
    net = load_feature_net()
    with pytest.raises(ValueError, match="1x28x28"):
        net(torch.zeros(2, 3, 32, 32))
    with pytest.raises(ValueError, match="labels"):
        class_agreement(net, torch.zeros(2, 1, 28, 28), torch.zeros(3, dtype=torch.long))
