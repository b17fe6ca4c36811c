"""Pure tensor math of RLHF: losses, KL estimators, GAE, whitening, KL controllers.

No models, no I/O: every function here is unit-tested on hand-computed values
(tests/trainer/test_ppo_math.py). Shapes: B = batch, T = response tokens; `mask` is 1.0 on real
response tokens (EOS included) and 0.0 on right padding.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


# ---------------------------------------------------------------- masked statistics
def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of x over positions where mask is 1 (whole tensor, or along `dim`)."""
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def masked_var(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Population variance (divide by n) of x over masked positions."""
    mean = masked_mean(x, mask)
    return masked_mean((x - mean) ** 2, mask)


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True,
                  eps: float = 1e-8) -> torch.Tensor:
    """(x - mean) / std over masked positions; padding is set to 0 so it cannot leak into losses.

    shift_mean=False only rescales (used nowhere by default, kept for reward scaling experiments).
    """
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    whitened = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask


# ---------------------------------------------------------------- per-token log-probs
def logprobs_from_logits(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log π(token) for each position: logits (B, T, V), tokens (B, T) -> (B, T)."""
    return torch.log_softmax(logits.float(), dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of the categorical distribution at each position: (B, T, V) -> (B, T)."""
    logits = logits.float()
    log_p = torch.log_softmax(logits, dim=-1)
    return -(log_p.exp() * log_p).sum(-1)


# ---------------------------------------------------------------- KL estimators
def kl_per_token(logp: torch.Tensor, ref_logp: torch.Tensor, estimator: str = "k1") -> torch.Tensor:
    """Per-token estimate of KL(π || π_ref) from log-probs of tokens sampled from π.

    k1 = log π - log π_ref: unbiased, can be negative per token.
    k3 = (ρ - 1) - log ρ with ρ = π_ref / π: unbiased and always >= 0, lower variance (Schulman 2020).
    """
    log_ratio = logp - ref_logp
    if estimator == "k1":
        return log_ratio
    if estimator == "k3":
        return torch.expm1(-log_ratio) + log_ratio
    raise ValueError(f"unknown KL estimator {estimator!r} (use 'k1' or 'k3')")


# ---------------------------------------------------------------- rewards
def shape_scores(raw: torch.Tensor, has_eos: torch.Tensor, mean: float = 0.0, std: float = 1.0,
                 normalise: bool = True, clip: float | None = None,
                 missing_eos_penalty: float = 0.0) -> torch.Tensor:
    """Sequence-level reward from raw RM scores: normalise, clip, then penalise cut-off answers.

    The penalty is applied after clipping so a truncated answer can never look as good as the
    best complete one.
    """
    scores = (raw - mean) / max(std, 1e-8) if normalise else raw.clone()
    if clip is not None:
        scores = scores.clamp(-clip, clip)
    return scores - missing_eos_penalty * (~has_eos.bool()).float()


def penalised_rewards(scores: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor,
                      kl_coef: float) -> torch.Tensor:
    """Per-token rewards: -β·kl_t on every response token, plus the sequence score on the last one."""
    rewards = -kl_coef * kl * mask
    last = (mask.sum(1).long() - 1).clamp(min=0)
    rewards[torch.arange(rewards.shape[0], device=rewards.device), last] += scores.to(rewards.dtype)
    return rewards


# ---------------------------------------------------------------- GAE
def compute_gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor,
                gamma: float, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over right-padded responses.

    δ_t = r_t + γ V_{t+1} - V_t,  A_t = δ_t + γλ A_{t+1}; V and A are 0 past the last token, so an
    episode ends at its EOS/cut-off. Returns (advantages, returns = advantages + values), both masked.
    """
    rewards, values = rewards * mask, values * mask
    advantages = torch.zeros_like(rewards)
    next_adv = torch.zeros(rewards.shape[0], dtype=rewards.dtype, device=rewards.device)
    next_value = torch.zeros_like(next_adv)
    for t in reversed(range(rewards.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        next_adv = (delta + gamma * lam * next_adv) * mask[:, t]
        advantages[:, t] = next_adv
        next_value = values[:, t]
    return advantages, (advantages + values) * mask


# ---------------------------------------------------------------- PPO losses
def clipped_surrogate_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor,
                           mask: torch.Tensor, cliprange: float) -> tuple[torch.Tensor, dict]:
    """PPO-clip policy loss: mean over tokens of max(-A·ρ, -A·clip(ρ, 1±ε)), ρ = π/π_old.

    Also returns detached stats: clip fraction and approx KL(π_old || π) = ½·mean((log ρ)²).
    """
    log_ratio = logp - old_logp
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - cliprange, 1.0 + cliprange)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        stats = {
            "clip_frac": masked_mean((clipped > unclipped).float(), mask).item(),
            "approx_kl": masked_mean(0.5 * log_ratio ** 2, mask).item(),
        }
    return loss, stats


def clipped_value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor,
                       mask: torch.Tensor, cliprange_value: float) -> tuple[torch.Tensor, dict]:
    """½·mean(max((V - R)², (V_clip - R)²)) with V_clip = V_old + clip(V - V_old, ±ε_v)."""
    clipped_values = old_values + (values - old_values).clamp(-cliprange_value, cliprange_value)
    loss_unclipped = (values - returns) ** 2
    loss_clipped = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(loss_unclipped, loss_clipped), mask)
    with torch.no_grad():
        stats = {"value_clip_frac": masked_mean((loss_clipped > loss_unclipped).float(), mask).item()}
    return loss, stats


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
    """1 - Var(returns - values) / Var(returns) over masked tokens: 1 = the critic predicts the
    returns, 0 = no better than their mean, < 0 = worse. NaN when the returns do not vary."""
    var_returns = masked_var(returns, mask).item()
    if var_returns <= 1e-12:
        return float("nan")
    return 1.0 - masked_var(returns - values, mask).item() / var_returns


# ---------------------------------------------------------------- KL controllers
class FixedKLController:
    """Constant β."""

    def __init__(self, kl_coef: float):
        self.value = kl_coef

    def update(self, current_kl: float, n_steps: int) -> float:
        return self.value

    def state(self) -> dict:
        return {"kind": "fixed", "value": self.value}


class AdaptiveKLController:
    """Proportional controller of Ziegler et al. (2019): β ← β·(1 + clip(KL/target - 1, ±0.2)·n/horizon)."""

    def __init__(self, init_kl_coef: float, target: float, horizon: int):
        if target <= 0 or horizon <= 0:
            raise ValueError("kl target and horizon must be positive")
        self.value, self.target, self.horizon = init_kl_coef, target, horizon

    def update(self, current_kl: float, n_steps: int) -> float:
        """Adapt after a batch of n_steps samples whose mean sequence KL was current_kl."""
        if math.isfinite(current_kl):
            error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
            self.value *= 1.0 + error * n_steps / self.horizon
        return self.value

    def state(self) -> dict:
        """What a version stores so the next run resumes β instead of restarting it."""
        return {"kind": "adaptive", "value": self.value, "target": self.target, "horizon": self.horizon}


def kl_controller_from_state(state: dict):
    """Rebuild a controller saved with `.state()`."""
    if state.get("kind") == "fixed":
        return FixedKLController(state["value"])
    if state.get("kind") == "adaptive":
        return AdaptiveKLController(state["value"], state["target"], state["horizon"])
    raise ValueError(f"unknown KL controller state {state!r}")


# ---------------------------------------------------------------- reward-model losses
def bradley_terry_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor,
                       margin: torch.Tensor | None = None,
                       weight: torch.Tensor | None = None) -> torch.Tensor:
    """Weighted mean of -log σ(r_c - r_r - margin) (Bradley–Terry negative log-likelihood)."""
    diff = r_chosen - r_rejected
    if margin is not None:
        diff = diff - margin
    losses = -F.logsigmoid(diff)
    if weight is None:
        return losses.mean()
    return (losses * weight).sum() / weight.sum().clamp(min=1e-8)


def pointwise_loss(rewards: torch.Tensor, signs: torch.Tensor,
                   weight: torch.Tensor | None = None) -> torch.Tensor:
    """Thumbs loss: weighted mean of -log σ(s·r), s = +1 for up, -1 for down (logistic regression on r)."""
    losses = -F.logsigmoid(signs * rewards)
    if weight is None:
        return losses.mean()
    return (losses * weight).sum() / weight.sum().clamp(min=1e-8)


def pairwise_accuracy(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> float:
    """Share of pairs where the chosen answer scores strictly higher."""
    return (r_chosen > r_rejected).float().mean().item() if r_chosen.numel() else float("nan")


def pearson_correlation(x: torch.Tensor, y: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Pearson correlation of two 1-D tensors, differentiable, 0 (with zero gradient) when either is
    constant or has fewer than 2 entries.

    The ODIN losses see batches where a head's scores can be constant (e.g. all-zero weights) or
    every answer has the same length; plain corrcoef gives NaN there and poisons the whole step.
    Both the value and the sqrt's input go through `where`, so the masked branch has no inf/NaN
    gradient to multiply by 0.
    """
    x, y = x.float().flatten(), y.float().flatten()
    xc, yc = x - x.mean(), y - y.mean()
    sxx, syy = (xc * xc).sum(), (yc * yc).sum()
    ok = (sxx > eps) & (syy > eps) & (x.numel() > 1)
    denom = torch.sqrt(torch.where(ok, sxx * syy, torch.ones_like(sxx)))
    return torch.where(ok, (xc * yc).sum() / denom, torch.zeros_like(sxx))


def length_decorrelation_loss(r_quality: torch.Tensor, r_length: torch.Tensor,
                              lengths: torch.Tensor) -> torch.Tensor:
    """ODIN's length loss (Chen et al. 2024, eq. 6): |ρ(r_Q, L)| − ρ(r_L, L) over one batch of answers.

    The quality head is pushed to carry no linear length signal (either sign: a head that learnt
    "shorter is better" is as much a length meter), the length head to carry all of it, so the
    BT fit of r_Q + r_L puts length into the head that is dropped at scoring time. In [-1, 2].
    """
    return pearson_correlation(r_quality, lengths).abs() - pearson_correlation(r_length, lengths)


def head_orthogonality_loss(w_quality: torch.Tensor, w_length: torch.Tensor) -> torch.Tensor:
    """ODIN's orthogonality loss |w_Q · w_L| on the two linear heads' weight vectors: the heads
    should read different directions of the shared pooled state, not the same one with two scales."""
    return (w_quality.float().flatten() * w_length.float().flatten()).sum().abs()
