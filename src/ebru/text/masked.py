"""Masked (absorbing-state) diffusion, MDLM / LLaDA style: the forward process, its loss and its ELBO.

Each token of a clean sequence ``x`` is replaced by [MASK] independently with probability
``t`` at time ``t`` in [0, 1] (``alpha_t = 1 - t``, the log-linear schedule
``sigma(t) = -log(1 - t)`` of MDLM, so ``move_chance = 1 - exp(-sigma) = t``).

The network sees ``x_t`` and outputs logits over the ``V`` real tokens only, so the
[MASK] logit is -inf (SUBS "zero masking"); unmasked positions carry their token over
with probability 1 (SUBS "carry-over") and cost nothing. The continuous-time negative
ELBO is then

    NELBO(x) = E_{t ~ U(0,1)} E_{x_t ~ q_t(.|x)} [ (1/t) * sum_{l : x_t^l = MASK} -log p_theta(x^l | x_t) ]

(weight ``-alpha'_t / (1 - alpha_t) = 1/t``), an upper bound on ``-log p_theta(x)``.
Training draws ``t`` low-discrepancy within the batch (stratum ``i`` of ``B``) on
``[eps, 1]``. For evaluation, :func:`nelbo_exact_count` uses the equivalent form that
masks exactly ``l ~ U{1..L}`` random positions with weight ``L / l`` (integrating out
``t``: ``int_0^1 t^(l-1) (1-t)^(L-l) C(L,l) dt = 1/l``): the same expectation, with
finite variance and no cut-off at ``eps``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

Logits = Callable[[Tensor], Tensor]  # x_t (B,L) -> logits (B,L,V)


def low_discrepancy(n: int, generator: torch.Generator | None = None, eps: float = 0.0) -> Tensor:
    """``n`` times in ``[eps, 1)``, one uniform draw in each of ``n`` equal strata (MDLM's antithetic t)."""
    u = (torch.arange(n, dtype=torch.float64) + torch.rand(n, generator=generator, dtype=torch.float64)) / n
    return (eps + (1 - eps) * u).float()


class MaskedDiffusion:
    """The absorbing process over ``vocab_size`` tokens; [MASK] is id ``vocab_size``."""

    kind = "masked"

    def __init__(self, vocab_size: int, eps: float = 1e-3):
        self.vocab_size = vocab_size
        self.mask_id = vocab_size
        self.eps = eps

    @property
    def input_vocab(self) -> int:
        return self.vocab_size + 1

    @staticmethod
    def alpha(t: Tensor) -> Tensor:
        return 1 - t

    def corrupt(self, x0: Tensor, t: Tensor, u: Tensor) -> Tensor:
        """Mask position ``l`` of row ``b`` where ``u[b, l] < t[b]`` (``t`` (B,) or already (B,L))."""
        t = t if t.shape == x0.shape else t[:, None]
        return torch.where(u < t, torch.full_like(x0, self.mask_id), x0)

    def masked_ce(self, logits: Tensor, x0: Tensor, xt: Tensor) -> Tensor:
        """-log p_theta(x0^l | x_t) at masked positions, 0 elsewhere (SUBS carry-over); (B,L) in nats."""
        ce = F.cross_entropy(logits.float().transpose(1, 2), x0, reduction="none")
        return torch.where(xt == self.mask_id, ce, torch.zeros_like(ce))

    def loss(self, logits: Tensor, x0: Tensor, xt: Tensor, t: Tensor) -> Tensor:
        """The continuous-time NELBO estimate of each sequence, in nats: (B,). ``t`` is (B,) or (B,L)."""
        t = t if t.shape == x0.shape else t[:, None].expand_as(x0)
        return (self.masked_ce(logits, x0, xt) / t).sum(1)

    def subs_log_probs(self, logits: Tensor, xt: Tensor) -> Tensor:
        """log p_theta(x^l | x_t) over the V tokens: the model's at masked positions, one-hot carry-over elsewhere."""
        logp = torch.log_softmax(logits.float(), dim=-1)
        keep = xt != self.mask_id
        onehot = torch.full_like(logp, -torch.inf).scatter(-1, xt.clamp(max=self.vocab_size - 1)[..., None], 0.0)
        return torch.where(keep[..., None], onehot, logp)

    @torch.no_grad()
    def nelbo_exact_count(self, logits_fn: Logits, x0: Tensor, samples: int = 1,
                          generator: torch.Generator | None = None) -> Tensor:
        """Unbiased NELBO estimate per sequence (nats, (B,)), averaged over ``samples`` draws.

        Draw ``l`` stratified over {1..L} (draw ``k`` of ``samples`` in stratum ``k``), mask a
        uniformly random set of exactly ``l`` positions, weight the masked cross-entropy by ``L / l``.
        """
        B, L = x0.shape
        total = torch.zeros(B, dtype=torch.float64, device=x0.device)
        for k in range(samples):
            frac = (k + torch.rand(B, generator=generator, dtype=torch.float64)) / samples
            n_mask = (frac * L).floor().long().clamp(0, L - 1) + 1  # uniform on {1..L} within the stratum
            rank = torch.rand(B, L, generator=generator).argsort(dim=1).argsort(dim=1)
            xt = torch.where(rank.to(x0.device) < n_mask[:, None].to(x0.device),
                             torch.full_like(x0, self.mask_id), x0)
            ce = self.masked_ce(logits_fn(xt), x0, xt).double().sum(1)
            total += ce * L / n_mask.to(x0.device)
        return total / samples
