"""Shared layers against known answers: embeddings, the null label row, text context, attention, dropout."""

from __future__ import annotations

import math

import pytest
import torch

from ebru.nets import (
    CrossAttention,
    FourierEmbedding,
    LabelEmbedding,
    NoiseEmbedding,
    PositionalEmbedding,
    SelfAttention,
    TextContext,
)
from ebru.nets.dit import sincos_2d
from ebru.nets.layers import Dropout, group_norm


def test_positional_embedding_known_values():
    emb = PositionalEmbedding(8, max_positions=10000)
    x = torch.tensor([0.0, 2.0])
    out = emb(x)
    freqs = 10000.0 ** (-torch.arange(4) / 4)
    assert out.shape == (2, 8)
    torch.testing.assert_close(out[0], torch.cat([torch.ones(4), torch.zeros(4)]))
    torch.testing.assert_close(out[1], torch.cat([(2 * freqs).cos(), (2 * freqs).sin()]))


def test_fourier_embedding_is_saved_with_the_weights():
    emb = FourierEmbedding(16, scale=16)
    assert "freqs" in emb.state_dict()
    out = emb(torch.tensor([0.25]))
    f = emb.freqs
    torch.testing.assert_close(out[0], torch.cat([(2 * math.pi * 0.25 * f).cos(), (2 * math.pi * 0.25 * f).sin()]))
    with pytest.raises(ValueError, match="even width"):
        FourierEmbedding(7)


def test_noise_embedding_kinds():
    c = torch.tensor([-1.5, 0.0, 0.25])
    freqs = 10000.0 ** (-torch.arange(8) / 8)
    for kind in ("positional", "fourier"):
        emb = NoiseEmbedding(kind, 16, 32)
        f = freqs if kind == "positional" else 2 * math.pi * emb.features.freqs
        features = torch.cat([(c[:, None] * f).cos(), (c[:, None] * f).sin()], dim=1)  # (3, 16)
        lin1, lin2 = emb.mlp[0], emb.mlp[2]
        want = lin2(torch.nn.functional.silu(features @ lin1.weight.T + lin1.bias))  # Linear-SiLU-Linear
        torch.testing.assert_close(emb(c), want, rtol=1e-5, atol=1e-5)
        assert emb(c).shape == (3, 32)
    with pytest.raises(ValueError, match="unknown noise embedding 'sinus'"):
        NoiseEmbedding("sinus", 16, 32)


def test_label_embedding_null_row():
    emb = LabelEmbedding(10, 6)
    assert emb.table.num_embeddings == 11
    out = emb(torch.tensor([3, -1, 9]), 3)
    torch.testing.assert_close(out, emb.table.weight[[3, 10, 9]])
    torch.testing.assert_close(emb(None, 2), emb.table.weight[[10, 10]])
    with pytest.raises(ValueError, match=r"must lie in \[0, 10\) or be -1.*\[-2, 3\]"):
        emb(torch.tensor([-2, 3]), 2)
    with pytest.raises(ValueError, match=r"class_labels must have shape \(3,\)"):
        emb(torch.tensor([1, 2]), 3)


def test_text_context_appends_an_always_kept_null_token():
    ctx = TextContext(5)
    states = torch.randn(2, 3, 5)
    mask = torch.tensor([[True, False, True], [False, False, False]])
    context, keep = ctx(states, mask, 2)
    assert context.shape == (2, 4, 5)
    assert keep.tolist() == [[True, False, True, True], [False, False, False, True]]
    torch.testing.assert_close(context[:, -1], ctx.null[0].expand(2, 5))
    torch.testing.assert_close(context[:, :3], torch.nn.functional.layer_norm(states, (5,)))
    null, keep_null = ctx(None, None, 2)
    assert null.shape == (2, 1, 5) and keep_null.tolist() == [[True], [True]]
    assert torch.equal(null, ctx.null.expand(2, 1, 5))  # no text: the learned null token alone
    with pytest.raises(ValueError, match="encoder_mask was given without encoder_states"):
        ctx(None, mask, 2)


def reference_attention(q, k, v, keep=None):
    """softmax(q k^T / sqrt(d)) v, per head, written out."""
    w = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if keep is not None:
        w = w.masked_fill(~keep[:, None, None, :], float("-inf"))
    return w.softmax(-1) @ v


def test_self_attention_matches_the_formula():
    attn = SelfAttention(8, num_heads=2)
    x = torch.randn(3, 5, 8)
    q, k, v = attn.qkv(x).chunk(3, dim=-1)
    heads = [t.reshape(3, 5, 2, 4).transpose(1, 2) for t in (q, k, v)]
    expected = attn.proj(reference_attention(*heads).transpose(1, 2).reshape(3, 5, 8))
    torch.testing.assert_close(attn(x), expected, rtol=1e-5, atol=1e-6)


def test_cross_attention_matches_the_formula_with_a_mask():
    attn = CrossAttention(8, context_dim=6, num_heads=2)
    x, context = torch.randn(2, 5, 8), torch.randn(2, 4, 6)
    keep = torch.tensor([[True, True, False, False], [False, True, True, True]])
    q = attn.q(x).reshape(2, 5, 2, 4).transpose(1, 2)
    k, v = (t.reshape(2, 4, 2, 4).transpose(1, 2) for t in attn.kv(context).chunk(2, dim=-1))
    expected = attn.proj(reference_attention(q, k, v, keep).transpose(1, 2).reshape(2, 5, 8))
    torch.testing.assert_close(attn(x, context, keep), expected, rtol=1e-5, atol=1e-6)


def test_zero_init_attention_outputs_zero():
    assert torch.equal(SelfAttention(8, 2, zero_init=True)(torch.randn(2, 3, 8)), torch.zeros(2, 3, 8))
    with pytest.raises(ValueError, match="num_heads=3 does not divide the width 8"):
        SelfAttention(8, 3)


@pytest.mark.parametrize("channels_last", [False, True])
def test_dropout_statistics_and_gradient(channels_last):
    torch.manual_seed(0)
    drop = Dropout(0.25).train()
    x = torch.ones(8, 16, 32, 32)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    y = drop(x)
    assert y.is_contiguous(memory_format=torch.channels_last) == channels_last
    kept = y != 0
    assert abs(kept.float().mean().item() - 0.75) < 0.01
    torch.testing.assert_close(y[kept], torch.full_like(y[kept], 1 / 0.75))
    y.sum().backward()
    torch.testing.assert_close(x.grad, kept.float() / 0.75)
    # per-channel / per-position keep rates are uniform (no structure from the bit trick)
    rate = kept.float().mean(dim=(0, 2, 3))
    assert rate.min() > 0.7 and rate.max() < 0.8
    assert torch.equal(drop.eval()(x), x)


def test_group_norm_groups():
    assert group_norm(64).num_groups == 16
    assert group_norm(256).num_groups == 32
    assert group_norm(15).num_groups == 3
    assert group_norm(3).num_groups == 1


def test_sincos_2d_position_embedding():
    pos = sincos_2d(8, 3)
    assert pos.shape == (9, 8)
    # first half encodes the row, second half the column
    torch.testing.assert_close(pos[4, :4], torch.tensor([math.sin(1), math.sin(0.01), math.cos(1), math.cos(0.01)]))
    torch.testing.assert_close(pos[1, :4], pos[0, :4])
    assert len({tuple(r.tolist()) for r in pos}) == 9
