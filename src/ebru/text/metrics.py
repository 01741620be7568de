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
    """-log p(x) per row (``process.exact``, e.g. AR) or its NELBO upper bound (diffusion), in nats: (B,) float64.

    ``x``: (B, L) token ids; the process's :meth:`~ebru.text.process.TextProcess.nelbo` averages
    ``samples`` Monte-Carlo draws from ``generator``.
    """
    return model.process.nelbo(model.net, x.to(model.device), samples, generator)


@torch.no_grad()
def bits_per_char(model: TextModel, text: str, *, windows: int | None = 64, samples: int = 4, batch: int = 16,
                  seed: int = 0, progress: bool = False) -> dict[str, Any]:
    """Bits per character of ``text`` under ``model`` over ``windows`` context-length windows.

    Returns ``bpc`` (bits per character), ``nats_per_token``, ``bound`` (True unless the process's
    likelihood is exact: report the value with "<="), window, token and character counts and the
    Monte-Carlo ``samples`` per window. MDLM's BPD metric (Sahoo et al. 2024): NELBO / ln 2 per character.
    """
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
    exact = model.process.exact
    return {"bpc": nats / math.log(2) / chars, "nats_per_token": nats / tokens, "bound": not exact,
            "windows": len(x), "tokens": tokens, "chars": chars, "samples": 1 if exact else samples}


@torch.no_grad()
def generative_perplexity(judge: TextModel, texts: list[str]) -> float:
    """exp(mean NLL per token) of ``texts`` under the AR ``judge`` (each truncated to its context).

    Raises ``ValueError`` when the judge's likelihood is not exact (``process.exact``: an autoregressive model).
    """
    if not judge.process.exact:
        raise ValueError(f"the judge of generative perplexity must be an autoregressive model (an exact "
                         f"likelihood), not {judge.process.article} {judge.process.title} model")
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
    """Mean over samples of the entropy (bits) of each sample's token histogram (rows: (B, T) token ids)."""
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
