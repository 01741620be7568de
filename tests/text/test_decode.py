"""Decoders: invariants (given tokens kept, all masks filled, tokens per step), per-sample seeds,
cached decoding equal to uncached, and the sampling primitives."""

from __future__ import annotations

import pytest
import torch

from ebru.text import TextInputError
from ebru.text.ar import ar_decode
from ebru.text.block import BlockDiffusion, block_decode, split_steps
from ebru.text.decode import masked_decode, most_confident, reveal_counts
from ebru.text.sampling import draw, filter_logits, gumbel_noise
from ebru.text.uniform import uniform_decode

from .helpers import tiny_model, tiny_net

M = 14  # mask id of the tiny models (vocabulary of 14)


def canvas(batch: int = 2) -> torch.Tensor:
    x = torch.full((batch, 20), M)
    x[:, :3] = torch.tensor([1, 2, 3])
    x[:, 10:12] = torch.tensor([4, 5])
    return x


@pytest.mark.parametrize("decoder", ["ancestral", "confidence", "threshold"])
@pytest.mark.parametrize("block_length", [None, 6])
def test_masked_decoders_fill_every_mask_and_keep_given_tokens(decoder, block_length):
    net = tiny_net("masked")
    c = canvas()
    steps_seen = []
    out, nfe = masked_decode(net, c, M, steps=6, decoder=decoder, block_length=block_length,
                             callback=lambda info: steps_seen.append(info))
    given = c != M
    assert torch.equal(out[given], c[given])
    assert not (out == M).any() and out.max() < M
    assert nfe <= len(steps_seen) <= 6 + (3 if block_length else 0)
    for info in steps_seen:  # within a block, decoding never touches other blocks
        lo, hi = info["block"]
        assert not info["revealed"][:, :lo].any() and not info["revealed"][:, hi:].any()


def test_confidence_decoder_reveals_the_scheduled_number_and_the_most_confident():
    net = tiny_net("masked")
    c = canvas(1)
    seen = []
    _out, _ = masked_decode(net, c, M, steps=5, decoder="confidence", temperature=0,
                           callback=lambda info: seen.append(info))
    counts = [int(s["revealed"].sum()) for s in seen]
    assert counts == reveal_counts(int((c == M).sum()), 5)
    # step 1 keeps the highest-probability greedy predictions
    probs = net(c).softmax(-1).max(-1).values[0]
    masked = (c[0] == M).nonzero()[:, 0]
    best = masked[probs[masked].topk(counts[0]).indices]
    assert set(seen[0]["revealed"][0].nonzero()[:, 0].tolist()) == set(best.tolist())


def test_threshold_decoder_reveals_everything_confident_at_once():
    c = canvas(1)
    sure = torch.full((1, 20, M), -10.0)
    sure[..., 7] = 10.0  # every position is certain of token 7
    out, nfe = masked_decode(lambda x: sure, c, M, steps=10, decoder="threshold")
    assert nfe == 1 and (out[c == M] == 7).all()


def test_ancestral_reuses_the_network_when_nothing_changes():
    c = torch.full((1, 4), M)
    calls = []

    def fn(x):
        calls.append(1)
        return torch.zeros(*x.shape, M)

    out, nfe = masked_decode(fn, c, M, steps=200, decoder="ancestral")
    assert nfe == len(calls) <= 4 and not (out == M).any()


def test_a_sample_does_not_depend_on_its_batch():
    net = tiny_net("masked")
    alone, _ = masked_decode(net, canvas(1), M, steps=5, decoder="ancestral", seeds=[7])
    batch, _ = masked_decode(net, canvas(3), M, steps=5, decoder="ancestral", seeds=[3, 7, 11])
    assert torch.equal(alone[0], batch[1])
    m = tiny_model("ar")
    one = m.generate(1, 12, "abc", seeds=5).texts[0]
    three = m.generate(3, 12, "abc", seeds=3).texts
    assert one == three[2]


@pytest.mark.parametrize("decoder", ["ancestral", "confidence", "threshold"])
@pytest.mark.parametrize("block_length", [None, 6])
def test_rows_with_different_masks_decode_as_they_would_alone(decoder, block_length):
    # the decoders choose for the whole batch at once; a row that runs out of masks early must not
    # draw from its generator meanwhile, or the rows after a finished window would change
    net = tiny_net("masked")
    # (with block_length the windows and their steps are the batch's: here every row has masks in every window)
    rows = canvas(3)
    rows[0, 12:16] = torch.tensor([1, 2, 3, 4])  # fewer masks than the others
    rows[2, 3:5] = 7
    opts = dict(steps=5, decoder=decoder, block_length=block_length, threshold=0.3)
    batch, _ = masked_decode(net, rows, M, seeds=[4, 5, 6], **opts)
    for i in range(3):
        alone, _ = masked_decode(net, rows[i:i + 1], M, seeds=[4 + i], **opts)
        assert torch.equal(alone[0], batch[i]), f"row {i}"


def test_block_and_uniform_samples_do_not_depend_on_their_batch():
    net = tiny_net("block", context=32)
    prompt = torch.tensor([[1, 2, 3, 4, 5]] * 3)
    batch, _ = block_decode(net, prompt, 12, 4, M, steps_per_block=2, seeds=[8, 9, 10])
    alone, _ = block_decode(net, prompt[:1], 12, 4, M, steps_per_block=2, seeds=[9])
    assert torch.equal(alone[0], batch[1])
    unet = tiny_net("uniform")
    c = torch.randint(M, (3, 16))
    fixed = torch.zeros(3, 16, dtype=torch.bool)
    fixed[:, :3] = True
    fixed[1, 8:] = True  # a row with fewer free positions
    for decoder in ("ancestral", "confidence"):
        batch, _ = uniform_decode(unet, c, fixed, M, steps=4, decoder=decoder, seeds=[1, 2, 3])
        for i in range(3):
            alone, _ = uniform_decode(unet, c[i:i + 1], fixed[i:i + 1], M, steps=4, decoder=decoder, seeds=[1 + i])
            assert torch.equal(alone[0], batch[i]) and torch.equal(batch[i][fixed[i]], c[i][fixed[i]])


def test_most_confident_picks_per_row_and_only_allowed_positions():
    conf = torch.tensor([[0.1, 0.9, 0.5, 0.7], [0.8, 0.2, 0.6, 0.4]])
    allowed = torch.tensor([[True, False, True, True], [True, True, True, True]])
    got = most_confident(conf, allowed, torch.tensor([2, 1]))
    assert got.tolist() == [[False, False, True, True], [True, False, False, False]]
    assert not most_confident(conf, allowed, torch.tensor([0, 0])).any()
    assert most_confident(conf, allowed, torch.tensor([9, 9])).equal(allowed)


def test_ar_cache_gives_the_same_samples():
    net = tiny_net("ar")
    prompt = torch.tensor([[1, 2, 3]] * 2)
    a, _ = ar_decode(net, prompt, 15, bos_id=M, seeds=[1, 2])
    b, _ = ar_decode(net, prompt, 15, bos_id=M, seeds=[1, 2], use_cache=False)
    assert torch.equal(a, b) and torch.equal(a[:, :3], prompt)


def test_block_decoder_with_cache_equals_uncached_reference():
    torch.manual_seed(0)
    net = tiny_net("block", context=32)
    b = 4
    proc = BlockDiffusion(M, b)
    prompt = torch.tensor([[1, 2, 3, 4, 5, 6]])
    got, nfe = block_decode(net, prompt, 14, b, M, steps_per_block=2, temperature=0)
    # reference: each block decoded greedily from full training-mask passes over the whole canvas
    x = torch.cat([prompt, torch.full((1, 14), M)], 1)
    for lo in range(4, 20, b):
        for k in range(2):
            pos = (x[0, lo:lo + b] == M).nonzero()[:, 0] + lo
            if len(pos) == 0:
                break
            logits = proc.logits(net, x, x)[0, pos]
            conf, tok = logits.double().softmax(-1).max(-1)
            n = len(pos) if k == 1 else len(pos) // 2 + len(pos) % 2
            keep = conf.topk(n).indices
            x[0, pos[keep]] = tok[keep]
    assert torch.equal(got, x)
    assert nfe == 1 + 2 * 4  # the prefill, then two passes per block (commits ride along)


def test_filters_and_gumbel():
    logits = torch.tensor([[2.0, 1.0, 0.5, -1.0]])
    assert torch.isinf(filter_logits(logits, top_k=2)[0, 2:]).all()
    p = logits.softmax(-1)[0]  # 0.609, 0.224, 0.136, 0.030
    kept = ~torch.isinf(filter_logits(logits, top_p=0.8)[0])
    assert kept.tolist() == [True, True, False, False]  # 0.609 < 0.8 <= 0.833
    assert float(p[:2].sum()) >= 0.8
    g = torch.Generator().manual_seed(0)
    assert gumbel_noise((3,), g).dtype == torch.float64
    many = logits.expand(40000, 4)
    tok, conf = draw(many, torch.Generator().manual_seed(1))
    freq = torch.bincount(tok, minlength=4).double() / 40000
    torch.testing.assert_close(freq, p.double(), atol=0.01, rtol=0)
    torch.testing.assert_close(conf, p.double()[tok])
    tok0, _ = draw(many[:5], g, temperature=0)
    assert (tok0 == 0).all()
    tok_k1, _ = draw(many[:50], g, top_k=1)
    assert (tok_k1 == 0).all()


def test_bad_steps_and_decoders():
    net = tiny_net("masked")
    with pytest.raises(TextInputError, match="steps must be a positive integer"):
        masked_decode(net, canvas(), M, steps=0)
    with pytest.raises(TextInputError, match="unknown decoder 'greedy'"):
        masked_decode(net, canvas(), M, steps=3, decoder="greedy")
    with pytest.raises(TextInputError, match="temperature must be >= 0"):
        masked_decode(net, canvas(), M, steps=3, temperature=-1)


def test_fewer_steps_than_blocks_is_refused_not_raised_silently():
    """Semi-autoregressive decoding needs a step per block: 2 steps over 3 blocks used to run 3 steps."""
    import pytest as _pytest
    import torch as _torch

    from ebru.text import TextInputError
    from ebru.text.decode import masked_decode

    V = 5
    canvas = _torch.full((1, 8), V)  # 8 masked positions, blocks of 3: windows [0,3) [3,6) [6,8)
    calls = []

    def logits_fn(x):
        calls.append(1)
        return _torch.zeros(*x.shape, V)

    with _pytest.raises(TextInputError, match=r"steps 2 .*3 blocks"):
        masked_decode(logits_fn, canvas, V, steps=2, block_length=3)
    assert calls == []
    tokens, nfe = masked_decode(logits_fn, canvas, V, steps=3, block_length=3)
    assert nfe == 3 and bool((tokens < V).all())


@pytest.mark.parametrize("steps, expected", [(10, [1, 2, 2, 2, 1, 1, 1]), (7, [1] * 7), (3, [1] * 7),
                                             (16, [1, 3, 3, 3, 2, 2, 2]), (40, [1] + [4] * 6)])
def test_block_generate_takes_the_steps_asked_for_over_its_blocks(steps, expected):
    # 3 prompt tokens + 25 generated in blocks of 4: 7 blocks hold generated positions, the first only one
    # token; the steps asked for are shared over them (never rounded up to ceil(steps / blocks) per block), at
    # least one per block and at most one per token
    net = tiny_net("block", context=32)
    seen = []
    BlockDiffusion(M, 4).generate(net, torch.tensor([[1, 2, 3]]), 25, steps=steps, decoder="confidence",
                                  callback=lambda e: seen.append(e["block"]))
    per_block = [sum(1 for blk in seen if blk == b) for b in dict.fromkeys(seen)]
    assert per_block == expected == split_steps(steps, 3, 25, 4) and len(seen) == min(max(steps, 7), 25)


def test_block_decode_refuses_a_schedule_of_the_wrong_length():
    net = tiny_net("block", context=32)
    with pytest.raises(TextInputError, match="7 blocks"):
        block_decode(net, torch.tensor([[1, 2, 3]]), 25, 4, M, steps_per_block=[2, 2])
    with pytest.raises(TextInputError, match="steps"):
        block_decode(net, torch.tensor([[1, 2, 3]]), 25, 4, M, steps_per_block=[2, 0, 1, 1, 1, 1, 1])
