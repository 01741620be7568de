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
from torch import Tensor, nn

from .decode import DECODERS, masked_decode
from .process import PROCESSES, Callback, TextProcess

Logits = Callable[[Tensor], Tensor]  # x_t (B,L) -> logits (B,L,V)


def low_discrepancy(n: int, generator: torch.Generator | None = None, eps: float = 0.0) -> Tensor:
    """``n`` times in ``[eps, 1)``, one uniform draw in each of ``n`` equal strata: (n,) float32.

    MDLM's low-discrepancy (antithetic) time sampler (Sahoo et al. 2024, "low-discrepancy sampler"):
    ``t_i = eps + (1 - eps) (i + U_i) / n``, computed in float64. Draws ``n`` float64 uniforms from
    ``generator``.
    """
    u = (torch.arange(n, dtype=torch.float64) + torch.rand(n, generator=generator, dtype=torch.float64)) / n
    return (eps + (1 - eps) * u).float()


@PROCESSES.register("masked")
class MaskedDiffusion(TextProcess):
    """The absorbing (masking) process over ``vocab_size`` real tokens; [MASK] is id ``vocab_size``.

    MDLM (Sahoo et al., NeurIPS 2024): forward ``q(x_t^l | x^l) = Cat(alpha_t x^l + (1 - alpha_t) m)``
    with ``alpha_t = 1 - t``, the SUBS parameterisation (zero masking, carry-over) and the
    continuous-time NELBO ``E_t [(-alpha'_t / (1 - alpha_t)) sum_masked -log p_theta]`` as training
    loss. The network is bidirectional; it embeds V + 1 ids and predicts the V real tokens.
    Decoders: ``ancestral`` (MDLM's reverse process), ``confidence`` (LLaDA low-confidence
    remasking), ``threshold`` (Fast-dLLM); see ``ebru.text.decode``.

    Args:
        vocab_size: V, real tokens.
        eps: training times are drawn on ``[eps, 1]``.
    """

    name = "masked"
    title = "masked-diffusion"
    description = "masked (absorbing-state) diffusion language model (MDLM/LLaDA-style, SUBS, continuous-time ELBO)"
    can_infill = True
    decoders = DECODERS
    default_decoder = "confidence"

    def __init__(self, vocab_size: int, eps: float = 1e-3):
        super().__init__(vocab_size, eps)
        self.mask_id = vocab_size

    @property
    def input_vocab(self) -> int:
        """V + 1: the real tokens and [MASK]."""
        return self.vocab_size + 1

    @staticmethod
    def alpha(t: Tensor) -> Tensor:
        """``alpha_t = 1 - t``: the probability that a token is still clean at time ``t`` (MDLM's linear schedule)."""
        return 1 - t

    def corrupt(self, x0: Tensor, t: Tensor, u: Tensor) -> Tensor:
        """``x_t`` (B, L): position ``l`` of row ``b`` masked where ``u[b, l] < t[b]``.

        ``t``: (B,) or already (B, L) times; ``u``: (B, L) uniforms on [0, 1) (so each token is
        masked with probability ``1 - alpha_t = t``, MDLM eq. 2).
        """
        t = t if t.shape == x0.shape else t[:, None]
        return torch.where(u < t, torch.full_like(x0, self.mask_id), x0)

    def masked_ce(self, logits: Tensor, x0: Tensor, xt: Tensor) -> Tensor:
        """-log p_theta(x0^l | x_t) at masked positions, 0 elsewhere (SUBS carry-over): (B, L) float32, nats.

        ``logits``: (B, L, V) over the real tokens (the [MASK] logit is -inf by construction).
        """
        ce = F.cross_entropy(logits.float().transpose(1, 2), x0, reduction="none")
        return torch.where(xt == self.mask_id, ce, torch.zeros_like(ce))

    def nelbo_at(self, logits: Tensor, x0: Tensor, xt: Tensor, t: Tensor) -> Tensor:
        """The continuous-time NELBO integrand at ``t``, summed over positions: (B,) float32, nats.

        ``(1/t) * sum_{l: x_t^l = MASK} -log p_theta(x0^l | x_t)`` (MDLM's continuous-time NELBO with
        ``-alpha'_t / (1 - alpha_t) = 1/t``): an unbiased one-sample estimate of NELBO(x0) when
        ``t ~ U(0, 1)``. ``t`` is (B,) or (B, L) (block diffusion: one time per block).
        """
        t = t if t.shape == x0.shape else t[:, None].expand_as(x0)
        return (self.masked_ce(logits, x0, xt) / t).sum(1)

    def subs_log_probs(self, logits: Tensor, xt: Tensor) -> Tensor:
        """log p_theta(x^l | x_t) over the V tokens: (B, L, V), the model's at masked positions and a one-hot
        carry-over elsewhere (MDLM's SUBS parameterisation)."""
        logp = torch.log_softmax(logits.float(), dim=-1)
        keep = xt != self.mask_id
        onehot = torch.full_like(logp, -torch.inf).scatter(-1, xt.clamp(max=self.vocab_size - 1)[..., None], 0.0)
        return torch.where(keep[..., None], onehot, logp)

    # ---------------------------------------------------------------------------------- training
    def draw(self, batch_size: int, context: int, generator: torch.Generator) -> dict[str, Tensor]:
        """``t`` (B,) low-discrepancy on ``[eps, 1]``, shuffled so strata are not tied to rows (or devices),
        and ``u`` (B, L) uniforms for the masks; drawn in that order."""
        t = low_discrepancy(batch_size, generator, self.eps)
        return {"t": t[torch.randperm(batch_size, generator=generator)],
                "u": torch.rand(batch_size, context, generator=generator)}

    def loss(self, model: nn.Module, x0: Tensor, batch: dict[str, Tensor]) -> Tensor:
        """Mean over the batch of :meth:`nelbo_at` / L: 0-d, nats per token (an upper bound on the NLL)."""
        xt = self.corrupt(x0, batch["t"], batch["u"])
        return (self.nelbo_at(self.logits(model, xt, x0), x0, xt, batch["t"]) / x0.shape[1]).mean()

    @torch.no_grad()
    def nelbo(self, net: nn.Module, x0: Tensor, samples: int = 1,
              generator: torch.Generator | None = None) -> Tensor:
        """The NELBO of each row by :meth:`nelbo_exact_count`: (B,) float64, nats (an upper bound on -log p)."""
        return self.nelbo_exact_count(net, x0, samples, generator)

    @torch.no_grad()
    def nelbo_exact_count(self, logits_fn: Logits, x0: Tensor, samples: int = 1,
                          generator: torch.Generator | None = None) -> Tensor:
        """Unbiased NELBO estimate per sequence (nats, (B,) float64), averaged over ``samples`` draws.

        Draw ``l`` stratified over {1..L} (draw ``k`` of ``samples`` in stratum ``k``), mask a
        uniformly random set of exactly ``l`` positions, weight the masked cross-entropy by ``L / l``
        (MDLM's NELBO with ``t`` integrated out, see the module docstring; LLaDA's likelihood estimator,
        Nie et al. 2025).
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

    # ---------------------------------------------------------------------------------- decoding
    def generate(self, net: nn.Module, prompt: Tensor, length: int, *, steps: int, decoder: str,
                 block_length: int | None = None, threshold: float = 0.9, temperature: float = 1.0,
                 top_k: int | None = None, top_p: float | None = None, seeds: int | list[int] = 0,
                 callback: Callback | None = None) -> tuple[Tensor, int]:
        """Fill ``length`` masks after ``prompt`` (B, P) with :func:`~ebru.text.decode.masked_decode`.

        ``block_length`` decodes semi-autoregressively in blocks of that many positions (LLaDA).
        Returns (B, P + length) tokens and the network calls.
        """
        decoder = self.check_decoder(decoder)
        B = prompt.shape[0]
        canvas = torch.cat([prompt, torch.full((B, length), self.mask_id, dtype=prompt.dtype,
                                               device=prompt.device)], 1)
        return masked_decode(net, canvas, self.mask_id, steps=steps, decoder=decoder, block_length=block_length,
                             threshold=threshold, temperature=temperature, top_k=top_k, top_p=top_p, seeds=seeds,
                             callback=callback)

    def infill(self, net: nn.Module, tokens: Tensor, fixed: Tensor, *, steps: int, decoder: str,
               temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
               seeds: int | list[int] = 0, callback: Callback | None = None) -> tuple[Tensor, int]:
        """Mask the positions of ``tokens`` (B, T) that are not ``fixed`` and decode them (clamping the rest,
        as SEDD's conditional sampling does); returns (B, T) tokens and the network calls."""
        self.check_infill()
        decoder = self.check_decoder(decoder)
        canvas = torch.where(fixed.to(torch.bool), tokens, torch.full_like(tokens, self.mask_id))
        return masked_decode(net, canvas, self.mask_id, steps=steps, decoder=decoder, temperature=temperature,
                             top_k=top_k, top_p=top_p, seeds=seeds, callback=callback)
