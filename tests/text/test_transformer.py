"""The text transformer: KV-cache logits equal full-forward logits; block-diffusion cache equals its training pass."""

from __future__ import annotations

import pytest
import torch

from ebru.text.block import BlockDiffusion, block_causal_mask, training_mask

from .helpers import tiny_net


def test_ar_cache_matches_full_forward():
    net = tiny_net("ar", vocab=20, context=40)
    x = torch.randint(0, 21, (3, 25))
    full = net(x)
    cache = net.new_cache(3)
    parts = [net(x[:, :9], cache=cache)]  # prefill, then one token at a time
    parts += [net(x[:, i:i + 1], cache=cache) for i in range(9, 17)]
    parts.append(net(x[:, 17:], cache=cache))  # a multi-token chunk after a prefix: causal within, all before
    torch.testing.assert_close(torch.cat(parts, 1), full, rtol=1e-5, atol=1e-5)
    assert cache.length == 25


def test_causal_model_ignores_the_future_and_bidirectional_does_not():
    x = torch.randint(0, 10, (1, 12))
    y = x.clone()
    y[0, 8] = (y[0, 8] + 1) % 10
    ar, bi = tiny_net("ar", vocab=10), tiny_net("masked", vocab=10)
    torch.testing.assert_close(ar(x)[:, :8], ar(y)[:, :8])
    assert not torch.allclose(bi(x)[:, :8], bi(y)[:, :8])


def test_block_cache_matches_training_pass():
    """Denoising block 2 against cached clean blocks 0-1 gives the logits of BD3-LM's 2L training pass."""
    torch.manual_seed(1)
    b, L = 4, 16
    net = tiny_net("block", vocab=10, context=L)
    proc = BlockDiffusion(10, b)
    x0 = torch.randint(0, 10, (2, L))
    xt = x0.clone()
    xt[:, 9] = proc.mask_id
    xt[:, 11] = proc.mask_id
    ref = proc.logits(net, torch.where(torch.arange(L) >= 8, xt, x0), x0)[:, 8:12]
    cache = net.new_cache(2, capacity=L)
    net(x0[:, :8], attn_mask=block_causal_mask(8, b), cache=cache)
    got = net(xt[:, 8:12], cache=cache, commit=False)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    assert cache.length == 8
    # The fused pass [finished block 1 | noisy block 2] commits block 1 only and gives the same logits.
    cache2 = net.new_cache(2, capacity=L)
    net(x0[:, :4], cache=cache2)
    mask = torch.ones(8, 12, dtype=torch.bool)
    mask[:4, 8:] = False
    fused = net(torch.cat([x0[:, 4:8], xt[:, 8:12]], 1), attn_mask=mask, cache=cache2, commit=4)[:, 4:]
    torch.testing.assert_close(fused, ref, rtol=1e-5, atol=1e-5)
    assert cache2.length == 8


def test_training_mask_structure():
    m = training_mask(4, 2)
    expect = torch.tensor([
        [1, 1, 0, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0, 0, 0],
        [0, 0, 1, 1, 1, 1, 0, 0],
        [0, 0, 1, 1, 1, 1, 0, 0],
        [0, 0, 0, 0, 1, 1, 0, 0],
        [0, 0, 0, 0, 1, 1, 0, 0],
        [0, 0, 0, 0, 1, 1, 1, 1],
        [0, 0, 0, 0, 1, 1, 1, 1]], dtype=torch.bool)
    assert torch.equal(m, expect)


def test_positions_past_context_and_bad_config():
    net = tiny_net("masked", vocab=10, context=8)
    with pytest.raises(ValueError, match="past the model's context of 8"):
        net(torch.zeros(1, 9, dtype=torch.long))
    from ebru.nets import TransformerConfig

    with pytest.raises(ValueError, match="did you mean 'depth'"):
        TransformerConfig.from_dict({"vocab_size": 4, "dpeth": 2})
    with pytest.raises(ValueError, match="TransformerConfig has kind 'transformer', got kind='unet'"):
        TransformerConfig.from_dict({"vocab_size": 4, "kind": "unet"})
    cfg = TransformerConfig(vocab_size=4, depth=2)
    assert TransformerConfig.from_dict(cfg.to_dict()) == cfg


def test_text_config_round_trip_and_unknown_key():
    from ebru.text.config import TextConfig

    cfg = TextConfig(process="block", block_size=8)
    assert TextConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match=r"unknown text config key 'blok_size' \(did you mean 'block_size'\?\)"):
        TextConfig.from_dict({"blok_size": 8})
