"""ebru's Fashion scenes feature network: the interface ebru's FID code expects (shapes, input check, fingerprint),
exact targets from the scene specs, seeded deterministic training, verified files and their cache, and features
that tell scene classes apart after a few seconds of training on a tiny set."""

from __future__ import annotations

import json
import math

import pytest
import torch

from ebru.data import FashionScenes, Item, Scene
from ebru.eval import ReferenceSet, evaluate_images, extract_features, network_fingerprint
from ebru.eval.evaluate import check_image_shape
from ebru.eval.features import expected_input_shape
from ebru.eval.scene_features import (
    ARRANGEMENTS,
    HEADS,
    SceneFeatureNet,
    load_scene_feature_net,
    save_scene_feature_net,
    scene_accuracy,
    scene_feature_net,
    scene_loss,
    scene_targets,
    train_scene_feature_net,
    weights_digest,
)

TINY = dict(width=4, feature_dim=8)


@pytest.fixture(scope="module")
def scenes():
    try:
        return FashionScenes("full64", n=480, seed=0), FashionScenes("full64", n=240, seed=1, split="test")
    except FileNotFoundError:
        pytest.skip("Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")


def test_shapes_and_the_interface_of_ebrus_fid_code():
    net = SceneFeatureNet().eval()
    x = torch.rand(3, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        f, logits = net.features(x), net(x)
        torch.testing.assert_close(net.head(f), logits, rtol=0, atol=0)  # the heads read the FID features
        # eval mode: an image's features do not depend on its batch
        torch.testing.assert_close(net.features(x[1:2]), f[1:2], rtol=1e-5, atol=1e-5)
    assert f.shape == (3, 128) and bool((f >= 0).all()) and logits.shape == (3, sum(HEADS.values())) == (3, 28)
    assert {k: v.shape[1] for k, v in net.split(logits).items()} == {"arrangement": 11, "classes": 10, "colours": 7}
    assert net.feature_dim == 128 and expected_input_shape(net) == (3, 64, 64)
    check_image_shape(net, (3, 64, 64))
    with pytest.raises(ValueError, match="feature network takes 3x64x64 images but the model makes 1x28x28"):
        check_image_shape(net, (1, 28, 28))
    with pytest.raises(ValueError, match="takes 3x64x64 images, got 3x48x48"):
        extract_features(net, torch.zeros(2, 3, 48, 48))
    with pytest.raises(ValueError, match=r"takes 3x64x64 images, got \(1, 28, 28\)"):
        net.features(torch.zeros(2, 1, 28, 28))
    assert extract_features(net, torch.zeros(5, 3, 64, 64, dtype=torch.uint8), batch=2).shape == (5, 128)
    assert SceneFeatureNet(size=32).input_shape == (3, 32, 32)
    with pytest.raises(ValueError, match="divisible by 8"):
        SceneFeatureNet(size=60)


def test_the_targets_are_what_the_scene_specs_hold():
    pair = Scene(64, (Item(7, "red", (0, 16, 31, 47)), Item(1, "blue", (33, 16, 64, 47))), "pair",
                 relation="left-right")
    count = Scene(64, tuple(Item(3, "white", box) for box in ((2, 2, 30, 30), (34, 34, 62, 62))), "count")
    single = Scene(64, (Item(0, "green", (13, 13, 50, 50)),), "single", scale="small")
    left = Scene(64, (Item(9, "cyan", (1, 13, 38, 50)),), "position", position="left")
    t = scene_targets([pair, count, single, left])
    assert [ARRANGEMENTS[i] for i in t["arrangement"]] == ["pair-left-right", "count-2", "single-small", "left"]
    assert t["classes"][0].nonzero().flatten().tolist() == [1, 7] and t["classes"][1].sum() == 1
    assert t["colours"][0].nonzero().flatten().tolist() == [0, 4]  # red, blue in COLOURS order
    assert t["colours"][2].nonzero().flatten().tolist() == [2] and t["classes"][3, 9] == 1
    logits = torch.zeros(4, 28)
    loss = scene_loss(logits, t)  # uniform guesses: CE log(11) (smoothing changes nothing) + (10 + 7) BCE log(2)
    torch.testing.assert_close(loss, torch.tensor(math.log(11) + 17 * math.log(2)))


def test_training_is_seeded_and_deterministic(scenes):
    train, _ = scenes
    images, specs = train.images_uint8[:32], train.scenes[:32]
    state = torch.get_rng_state()
    a = train_scene_feature_net(images, specs, steps=6, batch=8, seed=3, **TINY)
    assert torch.equal(torch.get_rng_state(), state)  # the global random state is left alone
    torch.manual_seed(12345)  # and does not matter
    b = train_scene_feature_net(images, specs, steps=6, batch=8, seed=3, **TINY)
    c = train_scene_feature_net(images, specs, steps=6, batch=8, seed=4, **TINY)
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k
    assert any(not torch.equal(v, c.state_dict()[k]) for k, v in a.state_dict().items() if v.is_floating_point())
    assert not a.training
    with pytest.raises(ValueError, match="32 images but 31 scenes"):
        train_scene_feature_net(images, specs[:31], steps=1, batch=8, **TINY)


def test_it_separates_scene_classes_better_than_chance_on_a_tiny_set(scenes):
    train, held = scenes
    net = train_scene_feature_net(train.images_uint8, train.scenes, steps=150, batch=32, seed=0, width=8,
                                  feature_dim=32)
    t = scene_targets(held.scenes)
    acc = scene_accuracy(net, held.images_uint8, t)
    majority = float(torch.bincount(t["arrangement"]).max()) / len(t["arrangement"])
    assert acc["arrangement"] > majority + 0.2, acc
    # two scene classes: one item in the left half against one in the right half (held-out scenes); the head is
    # linear in the FID features, so what it separates, the features separate linearly
    lr = [ARRANGEMENTS.index("left"), ARRANGEMENTS.index("right")]
    keep = (t["arrangement"] == lr[0]) | (t["arrangement"] == lr[1])
    with torch.no_grad():
        logits = net.split(net(held.images_uint8[keep].float() / 127.5 - 1))["arrangement"][:, lr]
    right = (logits.argmax(1) == (t["arrangement"][keep] == lr[1]).long()).float().mean()
    assert keep.sum() >= 20 and right > 0.8, (int(keep.sum()), float(right))


def test_files_are_verified_and_the_cache_is_reused_only_for_the_same_settings(scenes, tmp_path, monkeypatch):
    import ebru.eval.scene_features as sf

    settings = dict(n=32, held_out_n=16, steps=3, batch=8, **TINY)
    path = tmp_path / "net.safetensors"
    net = scene_feature_net(path, quiet=True, **settings)
    info = json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))
    assert net.sha256 == info["sha256"] == network_fingerprint(net)
    assert info["training"]["steps"] == 3 and info["network"] == {"name": "SceneFeatureNet", "size": 64, **TINY}
    assert set(info["held_out_accuracy"]) >= {"arrangement", "classes", "colours"}
    again = load_scene_feature_net(path)
    x = scenes[1].images_uint8[:4]
    torch.testing.assert_close(extract_features(again, x), extract_features(net, x), rtol=0, atol=0)

    def no_training(*a, **k):
        raise AssertionError("retrained although the cached network has these settings")

    monkeypatch.setattr(sf, "train_scene_feature_net", no_training)
    assert scene_feature_net(path, quiet=True, **settings).sha256 == net.sha256
    with pytest.raises(AssertionError, match="retrained"):
        scene_feature_net(path, quiet=True, **{**settings, "steps": 4})  # other settings: trained anew
    with pytest.raises(ValueError, match="unknown scene feature network setting 'stpes'"):
        scene_feature_net(path, stpes=3)

    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="edited or damaged"):
        load_scene_feature_net(path)
    with pytest.raises(FileNotFoundError, match=r"python -m ebru\.eval\.scene_features"):
        load_scene_feature_net(tmp_path / "missing.safetensors")
    save_scene_feature_net(SceneFeatureNet(**TINY), tmp_path / "other.safetensors", {"note": "x"})
    assert load_scene_feature_net(tmp_path / "other.safetensors").info["note"] == "x"


def test_fid_and_kid_run_with_it_against_a_reference_of_held_out_scenes(scenes):
    train, held = scenes
    net = train_scene_feature_net(train.images_uint8[:64], train.scenes[:64], steps=2, batch=16, **TINY)
    ref = ReferenceSet(extract_features(net, held.images_uint8), "held-out scenes", held.content_hash,
                       network_fingerprint(net))
    same = evaluate_images(held.images_uint8[:40], metrics=("fid", "kid"), feature_net=net, reference=ref)
    other = evaluate_images(255 - train.images_uint8[:40], metrics=("fid", "kid"), feature_net=net, reference=ref)
    assert same["feature_net"]["sha256"] == network_fingerprint(net) == weights_digest(net)  # never written
    assert same["metrics"]["fid"] < other["metrics"]["fid"]  # white canvases: far from the real scenes
    with pytest.raises(ValueError, match="more samples than feature dimensions"):
        evaluate_images(held.images_uint8[:8], metrics=("fid",), feature_net=net, reference=ref)
