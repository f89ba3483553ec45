"""The PTR loss (docs/design.md, "The PTR loss").

For an episode with assistant turns y_1..y_n (y_n the final answer)::

    L = λ1 · CE(y_n) + λ2 · mean_{t=2..n} (1 − cos(h̄_t, h̄_{t−1})) + λ3 · Σ_t β_t · (1 − p̄_t)

* CE(y_n): mean token cross-entropy over the final answer's tokens (the thought mask: every
  other token has label -100 and gets exactly zero gradient from this term).
* h̄_t: mean last-layer hidden state over turn t's tokens, from the same forward pass.
* p̄_t = exp(mean token log-probability of turn t); β_t = t / Σ_s s (later turns weigh more).
  With ``confidence="final"`` the term is 1 − p̄_n alone (the final answer's confidence; β_n = 1,
  every other β_t = 0) instead of Eq. 4's sum over all assistant turns.

CE is averaged over the answer tokens of a micro-batch (token-level, like plain SFT, so
λ = (1, 0, 0) is exactly answer-only cross-entropy). The consistency and confidence terms are
computed per episode and averaged over the micro-batch's episodes; the consistency average
only counts episodes with at least two turns.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from ptr_ray.errors import PtrRayValueError
from ptr_ray.train.encode import IGNORE


@dataclass
class LossTerms:
    total: torch.Tensor
    ce: torch.Tensor
    consistency: torch.Tensor
    confidence: torch.Tensor
    answer_tokens: int

    def floats(self) -> dict[str, float]:
        return {
            "loss": float(self.total.detach()),
            "loss_ce": float(self.ce.detach()),
            "loss_consistency": float(self.consistency.detach()),
            "loss_confidence": float(self.confidence.detach()),
        }


def lambdas_at(
    lambdas: tuple[float, float, float], schedule: str, warmup_steps: int, step: int
) -> tuple[float, float, float]:
    """λ at an optimizer step: constant, or λ2 and λ3 warmed up from 0 while λ1 takes the rest."""
    l1, l2, l3 = lambdas
    if schedule == "warmup" and warmup_steps > 0:
        frac = min(1.0, step / warmup_steps)
        l2, l3 = l2 * frac, l3 * frac
        l1 = 1.0 - l2 - l3
    return l1, l2, l3


def segment_ids(turns: torch.Tensor, shape: tuple[int, int], device: torch.device) -> torch.Tensor:
    """[B, T] index of the turn row (in ``turns``) each token belongs to, -1 outside turns."""
    seg = torch.full(shape, -1, dtype=torch.long, device=device)
    for s, (row, a, b) in enumerate(turns[:, :3].tolist()):
        seg[row, a:b] = s
    return seg


def ptr_loss(
    logits: torch.Tensor,
    hidden: torch.Tensor | None,
    input_ids: torch.Tensor,
    labels: torch.Tensor,
    turns: torch.Tensor,
    lambdas: tuple[float, float, float] = (1.0, 0.0, 0.0),
    ce_only: bool = False,
    confidence: Literal["all_turns", "final"] = "all_turns",
) -> LossTerms:
    """The PTR loss of one micro-batch.

    Args:
        logits: [B, T, V] next-token logits.
        hidden: [B, T, H] last-layer hidden states (may be None when ``ce_only``).
        input_ids, labels: [B, T]; labels are -100 outside the final answers.
        turns: [S, 6] rows (row, start, end, episode, turn 1..n, n turns), the turns of one
            episode consecutive and in order (see :func:`ptr_ray.train.encode.collate`).
        lambdas: (λ1, λ2, λ3).
        ce_only: skip the consistency and confidence terms (IFT mode): only answer tokens'
            logits are scored.
        confidence: ``all_turns`` (Eq. 4 literally: Σ_t β_t (1 − p̄_t)) or ``final``
            (1 − p̄_n: only the final answer's confidence).
    """
    if confidence not in ("all_turns", "final"):
        raise PtrRayValueError(f"confidence must be 'all_turns' or 'final', got {confidence!r}")
    B, T, _ = logits.shape
    device = logits.device
    l1, l2, l3 = lambdas
    tgt = input_ids[:, 1:]
    is_answer = labels[:, 1:] != IGNORE  # token i+1 is an answer token, predicted at i
    zero = logits.new_zeros(())
    if ce_only or turns.numel() == 0:
        sel = is_answer
        nll = F.cross_entropy(logits[:, :-1][sel].float(), tgt[sel], reduction="none")
        n_ans = int(sel.sum())
        ce = nll.sum() / max(n_ans, 1)
        return LossTerms(ce if ce_only else l1 * ce, ce, zero, zero, n_ans)

    seg = segment_ids(turns, (B, T), device)
    seg_next = seg[:, 1:]
    sel = seg_next >= 0
    nll = F.cross_entropy(logits[:, :-1][sel].float(), tgt[sel], reduction="none")
    ans = is_answer[sel]
    n_ans = int(ans.sum())
    # torch.where, not multiplication: non-answer tokens get exactly zero CE gradient.
    ce = torch.where(ans, nll, torch.zeros_like(nll)).sum() / max(n_ans, 1)

    S = turns.shape[0]
    ep, t, n = (
        turns[:, 3].to(device),
        turns[:, 4].to(device).float(),
        turns[:, 5].to(device).float(),
    )
    n_ep = int(ep.max()) + 1
    seg_sel = seg_next[sel]
    counts = torch.bincount(seg_sel, minlength=S).clamp_min(1).float()
    mean_logp = torch.zeros(S, device=device).index_add(0, seg_sel, -nll) / counts
    p_bar = mean_logp.exp()
    beta = t / (n * (n + 1) / 2) if confidence == "all_turns" else (t == n).float()
    conf_ep = torch.zeros(n_ep, device=device).index_add(0, ep, beta * (1 - p_bar))
    conf_term = conf_ep.mean()

    consistency = zero
    later = (turns[:, 4] >= 2).nonzero(as_tuple=True)[0].to(device)
    if later.numel() and hidden is not None:
        H = hidden.shape[-1]
        flat = seg.reshape(-1)
        m = flat >= 0
        hsum = torch.zeros(S, H, device=device, dtype=torch.float32).index_add(
            0, flat[m], hidden.reshape(-1, H)[m].float()
        )
        hcount = torch.bincount(flat[m], minlength=S).clamp_min(1).float()
        h_bar = hsum / hcount[:, None]
        f = 1 - F.cosine_similarity(h_bar[later], h_bar[later - 1], dim=-1)
        f_sum = torch.zeros(n_ep, device=device).index_add(0, ep[later], f)
        pairs = torch.zeros(n_ep, device=device).index_add(0, ep[later], torch.ones_like(f))
        multi = pairs > 0
        consistency = (f_sum[multi] / pairs[multi]).mean()

    total = l1 * ce + l2 * consistency + l3 * conf_term
    return LossTerms(total, ce, consistency, conf_term, n_ans)
