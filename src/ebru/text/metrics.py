"""Text metrics: bits per character (a bound for diffusion, exact for AR), generative perplexity,
unigram entropy, and decoding speed.

- :func:`bits_per_char`: over non-overlapping context-length windows of a held-out text.
  Diffusion models give an upper bound (report it as ``<=``): masked and block models with
  the exact-count NELBO estimator, uniform-noise models with stratified times. An AR model
  gives the exact value.
- :func:`generative_perplexity`: ``exp`` of the mean per-token NLL of samples under a judge
  (an AR model), from the samples' text re-encoded with the judge's tokenizer.
- :func:`unigram_entropy`: mean per-sample entropy (bits) of the token histogram; a low value
  exposes repetitive, low-temperature samples that a judge scores well.
- :func:`tokens_per_second`: generated tokens per wall-clock second at a batch size.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from .masked import low_discrepancy
from .model import TextModel


def _windows(ids: list[int], length: int, limit: int | None) -> Tensor:
    n = len(ids) // length
    if n == 0:
        raise ValueError(f"the evaluation text has {len(ids)} tokens, fewer than one window of {length}")
    x = torch.tensor(ids[: n * length], dtype=torch.long).view(n, length)
    if limit is not None and limit < n:  # evenly spaced windows, always the same ones
        x = x[torch.linspace(0, n - 1, limit).round().long()]
    return x


@torch.no_grad()
def sequence_nats(model: TextModel, x: Tensor, samples: int = 4, generator: torch.Generator | None = None) -> Tensor:
    """-log p(x) per row (AR, exact) or its NELBO upper bound (diffusion), in nats: (B,) float64."""
    net, p, kind = model.net, model.process, model.kind
    x = x.to(model.device)
    if kind == "ar":
        return p.nll(net, x).double()
    if kind == "masked":
        return p.nelbo_exact_count(net, x, samples, generator)
    B, L = x.shape
    total = torch.zeros(B, dtype=torch.float64, device=x.device)
    for k in range(samples):
        if kind == "block":  # per block: exactly l ~ U{1..|block|} masks (stratified), weight |block| / l
            b = p.block_size
            blk = torch.arange(L, device=x.device) // b
            size = torch.bincount(blk).double()[blk]  # size of each position's block (the last may be short)
            draw = torch.rand(B, int(blk[-1]) + 1, generator=generator, dtype=torch.float64).to(x.device)
            frac = (k + draw) / samples
            n_mask = (frac * size[::b][None]).floor().clamp(min=0) + 1
            n_mask = torch.minimum(n_mask, size[::b][None])[:, blk]
            u = torch.rand(B, L, generator=generator).to(x.device) + blk[None].float() * 2  # rank within each block
            rank = u.argsort(1).argsort(1) - (blk * b)[None]
            xt = torch.where(rank < n_mask, torch.full_like(x, p.mask_id), x)
            ce = p.masked_ce(p.logits(net, xt, x), x, xt).double()
            total += (ce * size[None] / n_mask).sum(1)
        else:  # uniform: stratified times, the NELBO integrand
            t = low_discrepancy(B, generator, p.eps)[torch.randperm(B, generator=generator)].clamp(max=1 - 1e-4)
            u = torch.rand(B, L, generator=generator)
            noise = torch.randint(p.vocab_size, (B, L), generator=generator)
            t, u, noise = t.to(x.device), u.to(x.device), noise.to(x.device)
            zt = p.corrupt(x, t, u, noise)
            total += p.loss(net(zt), x, zt, t).double()
    return total / samples


@torch.no_grad()
def bits_per_char(model: TextModel, text: str, *, windows: int | None = 64, samples: int = 4, batch: int = 16,
                  seed: int = 0, progress: bool = False) -> dict[str, Any]:
    """Bits per character of ``text`` under ``model`` (``bound`` is True for diffusion models)."""
    x = _windows(model.encode(text), model.context, windows)
    g = torch.Generator().manual_seed(seed)
    nats, chars = 0.0, 0
    rows = range(0, len(x), batch)
    if progress:
        from tqdm.auto import tqdm

        rows = tqdm(rows, desc="eval", unit="batch", leave=False)
    for i in rows:
        xb = x[i:i + batch]
        nats += float(sequence_nats(model, xb, samples, g).sum())
        chars += sum(len(model.tokenizer.decode(r.tolist())) for r in xb)
    tokens = x.numel()
    return {"bpc": nats / math.log(2) / chars, "nats_per_token": nats / tokens, "bound": model.kind != "ar",
            "windows": len(x), "tokens": tokens, "chars": chars, "samples": 1 if model.kind == "ar" else samples}


@torch.no_grad()
def generative_perplexity(judge: TextModel, texts: list[str]) -> float:
    """exp(mean NLL per token) of ``texts`` under the AR ``judge`` (each truncated to its context)."""
    if judge.kind != "ar":
        raise ValueError("the judge of generative perplexity must be an autoregressive model")
    nats, count = 0.0, 0
    for text in texts:
        ids = judge.encode(text)[: judge.context]
        if not ids:
            continue
        nll = judge.process.token_nll(judge.net, torch.tensor([ids], device=judge.device))
        nats += float(nll.sum())
        count += len(ids)
    return math.exp(nats / max(count, 1))


def unigram_entropy(rows: Tensor | list[list[int]]) -> float:
    """Mean over samples of the entropy (bits) of each sample's token histogram."""
    ents = []
    for r in rows:
        r = torch.as_tensor(r)
        p = torch.bincount(r).double()
        p = p[p > 0] / r.numel()
        ents.append(float(-(p * p.log2()).sum()))
    return sum(ents) / len(ents)


def tokens_per_second(model: TextModel, batch: int, length: int, *, repeats: int = 1, **generate_kw) -> float:
    """Generated tokens per second at batch size ``batch`` (best of ``repeats`` runs)."""
    best = math.inf
    for r in range(repeats):
        best = min(best, model.generate(batch, length, seeds=1000 * r, **generate_kw).seconds)
    return batch * length / best
