"""Network configs: dict round trips, helpful errors for typos and invalid values, build_net."""

from __future__ import annotations

import json

import pytest

from ebru.nets import NET_CONFIGS, AutoencoderConfig, DiT, DiTConfig, UNet, UNetConfig, build_net


@pytest.mark.parametrize("cfg", [
    UNetConfig(),
    UNetConfig(image_size=32, in_channels=3, out_channels=6, channels=32, channel_mult=(1, 2, 2, 2),
               attention_resolutions=(16, 8), num_classes=10, cond_dim=384, noise_embedding="fourier",
               resample="pool"),
    DiTConfig(),
    DiTConfig(image_size=32, patch_size=4, in_channels=4, hidden=128, depth=2, mlp_ratio=2.5, num_classes=1000,
              cond_dim=384, dropout=0.1),
], ids=["unet-default", "unet-custom", "dit-default", "dit-custom"])
def test_round_trip_through_json(cfg):
    d = json.loads(json.dumps(cfg.to_dict()))
    again = type(cfg).from_dict(d)
    assert again == cfg
    assert again.to_dict() == d
    assert build_net(d).config == cfg


def test_to_dict_has_every_field_and_kind():
    assert UNetConfig().to_dict()["kind"] == "unet"
    assert DiTConfig().to_dict()["kind"] == "dit"
    assert UNetConfig().to_dict()["channel_mult"] == [1, 2, 2]
    assert {"unet": UNetConfig, "dit": DiTConfig, "autoencoder": AutoencoderConfig} == NET_CONFIGS


@pytest.mark.parametrize("cls, key, near", [
    (UNetConfig, "chanels", "channels"),
    (UNetConfig, "attention_resolution", "attention_resolutions"),
    (UNetConfig, "num_class", "num_classes"),
    (DiTConfig, "hiden", "hidden"),
    (DiTConfig, "patchsize", "patch_size"),
])
def test_unknown_key_names_the_nearest_valid_key(cls, key, near):
    with pytest.raises(ValueError, match=f"unknown .* config key '{key}' \\(did you mean '{near}'\\?\\)"):
        cls.from_dict({key: 1})


def test_build_net_from_dicts_and_dataclasses():
    unet = build_net({"kind": "unet", "channels": 32})
    assert type(unet) is UNet and unet.config == UNetConfig(channels=32)  # the other keys take their defaults
    dit = build_net({"kind": "dit", "depth": 1})
    assert type(dit) is DiT and dit.config == DiTConfig(depth=1) and len(dit.blocks) == 1
    assert type(build_net(DiTConfig(depth=1))) is DiT
    with pytest.raises(ValueError, match=r"unknown network kind 'unte' \(did you mean 'unet'\?\)"):
        build_net({"kind": "unte"})
    with pytest.raises(ValueError, match="needs a 'kind' key"):
        build_net({"channels": 32})
    with pytest.raises(ValueError, match="did you mean 'depth'"):
        build_net({"kind": "dit", "dept": 3})
    with pytest.raises(ValueError, match="UNetConfig has kind 'unet', got kind='dit'"):
        UNetConfig.from_dict({"kind": "dit"})
    with pytest.raises(ValueError, match="build_net needs a dict"):
        build_net("unet")


@pytest.mark.parametrize("kwargs, message", [
    ({"image_size": 30}, r"image_size=30 cannot be halved 2 times exactly \(30 -> 15 -> 7.5\)"),
    ({"image_size": 24, "channel_mult": (1, 1, 2, 2, 2)},
     r"cannot be halved 4 times exactly \(24 -> 12 -> 6 -> 3 -> 1.5\)"),
    ({"channels": 0}, "channels must be a positive integer, got 0"),
    ({"channels": 64.0}, "channels must be a positive integer, got 64.0"),
    ({"in_channels": -1}, "in_channels must be a positive integer"),
    ({"channel_mult": ()}, "channel_mult must be a non-empty tuple"),
    ({"channel_mult": (1, 0)}, "every channel_mult entry must be a positive integer"),
    ({"num_res_blocks": 0}, "num_res_blocks must be a positive integer"),
    ({"attention_resolutions": (8,)}, "attention_resolutions has 8, but the feature maps are 28, 14, 7"),
    ({"num_heads": 3}, "num_heads=3 does not divide the width 128 at resolution 7"),
    ({"dropout": 1.0}, r"dropout must be a number in \[0, 1\)"),
    ({"num_classes": 0}, "num_classes must be a positive integer"),
    ({"cond_dim": True}, "cond_dim must be a positive integer"),
    ({"noise_embedding": "fourrier"}, "unknown noise_embedding 'fourrier' \\(did you mean 'fourier'\\?\\)"),
    ({"resample": "bilinear"}, "unknown resample 'bilinear'"),
])
def test_invalid_unet_configs(kwargs, message):
    with pytest.raises(ValueError, match=message):
        UNetConfig(**kwargs)


@pytest.mark.parametrize("kwargs, message", [
    ({"patch_size": 3}, "image_size=28 is not divisible by patch_size=3"),
    ({"hidden": 96, "num_heads": 5}, "num_heads=5 does not divide hidden=96"),
    ({"hidden": 250, "num_heads": 5}, "hidden=250 must be divisible by 4"),
    ({"depth": 0}, "depth must be a positive integer"),
    ({"mlp_ratio": 0}, "mlp_ratio must be a positive number"),
    ({"dropout": -0.1}, r"dropout must be a number in \[0, 1\)"),
    ({"num_classes": -3}, "num_classes must be a positive integer"),
])
def test_invalid_dit_configs(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DiTConfig(**kwargs)


def test_non_power_of_two_sizes_are_fine_when_each_halving_is_exact():
    assert UNetConfig(image_size=28).resolutions == (28, 14, 7)
    cfg = UNetConfig(image_size=24, channel_mult=(1, 1, 2, 2), attention_resolutions=(3,))
    assert cfg.resolutions == (24, 12, 6, 3)
    assert DiTConfig(image_size=28, patch_size=4).grid_size == 7
