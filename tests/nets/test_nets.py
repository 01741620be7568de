"""Behaviour shared by the U-Net and the DiT: shapes, zero init, class and text conditioning, input checks."""

from __future__ import annotations

import pytest
import torch

from ebru.diffusion import ClassifierFreeGuidance, Precond
from ebru.nets import DiTConfig, UNet, UNetConfig, build_net

TINY = {
    "unet": dict(kind="unet", image_size=8, in_channels=2, out_channels=3, channels=16, channel_mult=(1, 2),
                 num_res_blocks=1, attention_resolutions=(4,), num_heads=2, dropout=0.0),
    "dit": dict(kind="dit", image_size=8, patch_size=2, in_channels=2, out_channels=3, hidden=32, depth=2,
                num_heads=2),
}
KINDS = sorted(TINY)


def tiny(kind: str, **overrides) -> torch.nn.Module:
    return build_net({**TINY[kind], **overrides}).eval()


@torch.no_grad()
def perturb(net: torch.nn.Module, scale: float = 0.1, seed: int = 1) -> torch.nn.Module:
    """Move every parameter off its initial value (zero-initialised layers would hide conditioning)."""
    g = torch.Generator().manual_seed(seed)
    for p in net.parameters():
        p.add_(scale * torch.randn(p.shape, generator=g))
    return net


def inputs(batch: int = 2, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 2, 8, 8, generator=g), torch.randn(batch, generator=g)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("classes, text", [(False, False), (True, False), (False, True), (True, True)])
def test_output_shape(kind, classes, text):
    net = tiny(kind, num_classes=10 if classes else None, cond_dim=12 if text else None)
    x, c = inputs(3)
    cond = {}
    if classes:
        cond["class_labels"] = torch.tensor([0, 9, -1])
    if text:
        cond["encoder_states"] = torch.randn(3, 5, 12)
        cond["encoder_mask"] = torch.tensor([[True] * 5, [True, True, False, False, False], [False] * 5])
    out = perturb(net)(x, c, **cond)
    assert out.shape == (3, 3, 8, 8) and out.dtype == torch.float32
    # batch independence: each sample's output is the one it gets alone (eval mode, no batch statistics)
    for i in range(3):
        alone = net(x[i:i + 1], c[i:i + 1], **{k: v[i:i + 1] for k, v in cond.items()})
        torch.testing.assert_close(out[i:i + 1], alone, rtol=0, atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_zero_init_gives_exactly_zero_output_and_precond_starts_at_c_skip_x(kind):
    net = build_net({**TINY[kind], "in_channels": 3, "num_classes": 4, "cond_dim": 12})
    x = torch.randn(2, 3, 8, 8)
    out = net(x, torch.tensor([-1.0, 0.7]), class_labels=torch.tensor([1, -1]),
              encoder_states=torch.randn(2, 4, 12))
    assert torch.equal(out, torch.zeros_like(out))
    d = Precond(net, "edm")
    sigma = torch.tensor([0.3, 5.0])
    c_skip = 0.25 / (sigma**2 + 0.25)
    assert torch.equal(d(x, sigma, class_labels=torch.tensor([1, -1])), c_skip.view(-1, 1, 1, 1) * x)


@pytest.mark.parametrize("kind", KINDS)
def test_null_label_equals_no_labels_and_labels_matter(kind):
    net = perturb(tiny(kind, num_classes=5))
    x, c = inputs(2)
    null = net(x, c, class_labels=torch.full((2,), -1))
    assert torch.equal(null, net(x, c))
    a = net(x, c, class_labels=torch.tensor([0, 1]))
    b = net(x, c, class_labels=torch.tensor([1, 0]))
    assert (a - b).abs().amax(dim=(1, 2, 3)).min() > 1e-3  # each sample depends on its label
    assert (a - null).abs().amax() > 1e-3
    # a sample's output does not depend on the other samples' labels
    mixed = net(x, c, class_labels=torch.tensor([0, -1]))
    torch.testing.assert_close(mixed[0], a[0], rtol=0, atol=1e-5)
    torch.testing.assert_close(mixed[1], null[1], rtol=0, atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_one_condition_broadcasts_over_the_batch_and_works_with_cfg(kind):
    net = perturb(tiny(kind, num_classes=5, cond_dim=12, out_channels=2))
    x, c = inputs(3)
    torch.testing.assert_close(net(x, c, class_labels=torch.tensor([2])), net(x, c, class_labels=torch.full((3,), 2)))
    states, mask = torch.randn(1, 4, 12), torch.tensor([[True, True, False, True]])
    torch.testing.assert_close(net(x, c, encoder_states=states, encoder_mask=mask),
                               net(x, c, encoder_states=states.expand(3, 4, 12), encoder_mask=mask.expand(3, 4)))
    # classifier-free guidance's unconditional pass uses a single -1 label
    d = Precond(net, "edm")
    sigma = torch.full((3,), 0.8)
    labels = torch.tensor([0, 1, 4])
    cfg0 = ClassifierFreeGuidance(d, 0.0, uncond={"class_labels": torch.tensor([-1])})
    torch.testing.assert_close(cfg0(x, sigma, class_labels=labels), d(x, sigma), rtol=0, atol=1e-5)
    cfg2 = ClassifierFreeGuidance(d, 2.0, uncond={"class_labels": torch.tensor([-1])})
    expected = 2 * d(x, sigma, class_labels=labels) - d(x, sigma)
    torch.testing.assert_close(cfg2(x, sigma, class_labels=labels), expected, rtol=0, atol=1e-4)


@pytest.mark.parametrize("kind", KINDS)
def test_noise_level_matters(kind):
    net = perturb(tiny(kind))
    x, _ = inputs(2)
    lo, hi = net(x, torch.full((2,), -1.0)), net(x, torch.full((2,), 1.0))
    assert (lo - hi).abs().amax() > 1e-3
    # a 0-d c_noise is broadcast over the batch
    torch.testing.assert_close(net(x, torch.tensor(1.0)), hi, rtol=0, atol=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_encoder_mask_is_respected(kind):
    net = perturb(tiny(kind, cond_dim=12))
    x, c = inputs(2)
    states = torch.randn(2, 6, 12)
    mask = torch.tensor([[True, True, True, False, False, False], [True, False, True, False, True, False]])
    base = net(x, c, encoder_states=states, encoder_mask=mask)
    changed = states.clone()
    changed[~mask] = 100 * torch.randn(int((~mask).sum()), 12)
    torch.testing.assert_close(net(x, c, encoder_states=changed, encoder_mask=mask), base, rtol=0, atol=1e-5)
    # ...while the kept tokens do matter
    kept = states.clone()
    kept[mask] += torch.randn(int(mask.sum()), 12)
    assert (net(x, c, encoder_states=kept, encoder_mask=mask) - base).abs().amax(dim=(1, 2, 3)).min() > 1e-4
    # no mask = all tokens kept
    torch.testing.assert_close(net(x, c, encoder_states=states), net(x, c, encoder_states=states,
                                                                      encoder_mask=torch.ones(2, 6, dtype=torch.bool)))


@pytest.mark.parametrize("kind", KINDS)
def test_all_masked_sample_gets_the_null_text_condition(kind):
    net = perturb(tiny(kind, cond_dim=12))
    x, c = inputs(2)
    states = torch.randn(2, 4, 12)
    mask = torch.tensor([[False] * 4, [True] * 4])
    out = net(x, c, encoder_states=states, encoder_mask=mask)
    null = net(x, c)  # encoder_states=None: the learned null sequence
    torch.testing.assert_close(out[0], null[0], rtol=0, atol=1e-5)
    assert (out[1] - null[1]).abs().amax() > 1e-4


@pytest.mark.parametrize("kind", KINDS)
def test_channels_last_gives_the_same_output(kind):
    net = perturb(tiny(kind, num_classes=3, cond_dim=12))
    if isinstance(net, UNet):
        net.channels_last = False  # the reference run stays NCHW throughout
    x, c = inputs(2)
    cond = dict(class_labels=torch.tensor([2, -1]), encoder_states=torch.randn(2, 3, 12))
    ref = net(x, c, **cond)
    net = net.to(memory_format=torch.channels_last)
    if isinstance(net, UNet):
        net.channels_last = True
    x_cl = x.contiguous(memory_format=torch.channels_last)
    out = net(x_cl, c, **cond)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)
    assert out.is_contiguous(memory_format=torch.channels_last)  # the caller's format comes back


@pytest.mark.parametrize("kind", KINDS)
def test_gradients_reach_every_parameter(kind):
    net = perturb(tiny(kind, num_classes=3, cond_dim=12)).train()
    x, c = inputs(2)
    out = net(x, c, class_labels=torch.tensor([0, 1]), encoder_states=torch.randn(2, 3, 12))
    out.square().mean().backward()
    # the null class row and null text token get no gradient from a fully conditional batch
    missing = [n for n, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert set(missing) <= {"text.null"}, missing


@pytest.mark.parametrize("kind", KINDS)
def test_state_dict_round_trip_through_the_config(kind):
    net = perturb(tiny(kind, num_classes=3))
    again = build_net(net.config.to_dict()).eval()
    again.load_state_dict(net.state_dict(), strict=True)
    x, c = inputs(2)
    assert torch.equal(again(x, c, class_labels=torch.tensor([0, 2])), net(x, c, class_labels=torch.tensor([0, 2])))


@pytest.mark.parametrize("kind", KINDS)
def test_wrong_inputs_raise_clear_errors(kind):
    net = tiny(kind)
    c = torch.zeros(2)
    with pytest.raises(ValueError, match="model expects 2x8x8 images, got 3x8x8"):
        net(torch.randn(2, 3, 8, 8), c)
    with pytest.raises(ValueError, match="model expects 2x8x8 images, got 2x16x16"):
        net(torch.randn(2, 2, 16, 16), c)
    with pytest.raises(ValueError, match=r"model expects 2x8x8 images, got a tensor of shape \(2, 8, 8\)"):
        net(torch.randn(2, 8, 8), c)
    with pytest.raises(ValueError, match=r"c_noise must have shape \(2,\)"):
        net(torch.randn(2, 2, 8, 8), torch.zeros(3))
    with pytest.raises(ValueError, match="no class conditioning"):
        net(torch.randn(2, 2, 8, 8), c, class_labels=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="no text conditioning"):
        net(torch.randn(2, 2, 8, 8), c, encoder_states=torch.randn(2, 3, 12))
    cond = tiny(kind, num_classes=4, cond_dim=12)
    x = torch.randn(2, 2, 8, 8)
    with pytest.raises(ValueError, match=r"class_labels must lie in \[0, 4\) or be -1"):
        cond(x, c, class_labels=torch.tensor([0, 4]))
    with pytest.raises(ValueError, match="class_labels must be integers"):
        cond(x, c, class_labels=torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match=r"encoder_states must have shape \(2, L, 12\)"):
        cond(x, c, encoder_states=torch.randn(2, 3, 7))
    with pytest.raises(ValueError, match=r"encoder_mask must be a bool tensor of shape \(2, 3\)"):
        cond(x, c, encoder_states=torch.randn(2, 3, 12), encoder_mask=torch.ones(2, 3))


def test_default_error_message_names_both_shapes():
    with pytest.raises(ValueError, match=r"^model expects 1x28x28 images, got 3x32x32$"):
        UNet()(torch.randn(1, 3, 32, 32), torch.zeros(1))


@pytest.mark.parametrize("cfg, lo, hi", [
    (UNetConfig(), 2e6, 8e6),
    (UNetConfig(num_classes=10, cond_dim=384), 2e6, 9e6),
    (DiTConfig(), 3e6, 12e6),
], ids=["unet-default-6.9M", "unet-class-text-7.7M", "dit-default-7.4M"])
def test_default_parameter_counts(cfg, lo, hi):
    n = sum(p.numel() for p in build_net(cfg).parameters())
    print(f"{cfg.kind}: {n:,} parameters")
    assert lo < n < hi


def test_default_unet_size_and_the_class_table_is_its_only_class_parameter():
    def count(cfg):
        return sum(p.numel() for p in build_net(cfg).parameters())

    assert count(UNetConfig()) == 6_946_881  # the "6.9M" U-Net that docs/gpu.md benchmarks
    # class conditioning adds one (num_classes + 1) x (4 * channels) embedding table: 11 x 256, the null row included
    assert count(UNetConfig(num_classes=10)) - count(UNetConfig()) == 11 * 4 * 64
    assert count(DiTConfig(num_classes=10)) - count(DiTConfig()) == 11 * DiTConfig().hidden


@pytest.mark.parametrize("overrides", [dict(noise_embedding="fourier"), dict(resample="pool"),
                                       dict(channels=15, num_heads=5)], ids=["fourier", "pool", "odd-width"])
def test_unet_variants(overrides):
    from ebru.nets.layers import FourierEmbedding
    from ebru.nets.unet import Downsample, Upsample

    net = perturb(tiny("unet", **overrides))
    x, c = inputs(3)
    out = net(x, c)
    assert out.shape == (3, 3, 8, 8)
    for i in range(3):  # batch independence
        torch.testing.assert_close(out[i:i + 1], net(x[i:i + 1], c[i:i + 1]), rtol=0, atol=1e-5)
    again = build_net(net.config.to_dict()).eval()  # the variant survives the config round trip
    again.load_state_dict(net.state_dict(), strict=True)
    assert torch.equal(again(x, c), out)
    if overrides.get("noise_embedding") == "fourier":  # the random frequencies are saved with the weights
        fourier = [m for m in net.modules() if isinstance(m, FourierEmbedding)]
        assert len(fourier) == 1 and any(k.endswith("features.freqs") for k in net.state_dict())
    if overrides.get("resample") == "pool":  # 2x2 mean down, nearest-neighbour up, no convolution either way
        t = torch.randn(2, 4, 6, 6)
        downs = [m for m in net.modules() if isinstance(m, Downsample)]
        ups = [m for m in net.modules() if isinstance(m, Upsample)]
        assert downs and ups
        for m in downs:
            torch.testing.assert_close(m(t), (t[..., ::2, ::2] + t[..., 1::2, ::2] + t[..., ::2, 1::2]
                                              + t[..., 1::2, 1::2]) / 4)
        for m in ups:
            assert torch.equal(m(t), t.repeat_interleave(2, -1).repeat_interleave(2, -2))


@pytest.mark.parametrize("kind", KINDS)
def test_pooled_text_vector_conditions_the_output_and_starts_at_no_effect(kind):
    fresh = tiny(kind, pooled_dim=6)
    x, c = inputs(2)
    pooled = torch.randn(2, 6)
    # zero-initialised last layer: a fresh network's output does not depend on the pooled vector yet
    torch.testing.assert_close(fresh(x, c, encoder_pooled=pooled), fresh(x, c), rtol=0, atol=0)
    net = perturb(fresh)
    out = net(x, c, encoder_pooled=pooled)
    assert (out - net(x, c, encoder_pooled=-pooled)).abs().amax(dim=(1, 2, 3)).min() > 1e-4
    # one (1, P) vector applies to the whole batch; each sample gets what it gets alone
    torch.testing.assert_close(net(x, c, encoder_pooled=pooled[:1]), net(x, c, encoder_pooled=pooled[:1].expand(2, -1)))
    torch.testing.assert_close(out[1:], net(x[1:], c[1:], encoder_pooled=pooled[1:]), rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match=r"encoder_pooled must have shape \(2, 6\)"):
        net(x, c, encoder_pooled=torch.randn(2, 5))
    with pytest.raises(ValueError, match="no pooled text input"):
        tiny(kind)(x, c, encoder_pooled=pooled)
