"""Pure maths of the critic-free objectives that fit live feedback: RLOO, DPO, KTO.

Like `ppo_math`, no models and no I/O: each function is tested on hand-computed values
(tests/trainer/test_preference_math.py). Log-probabilities here are *sequence* sums,
log π(y|x) = Σ_t log π(y_t | x, y_<t), one value per answer (shape (B,)).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F


# ---------------------------------------------------------------- RLOO
def rloo_advantages(rewards: torch.Tensor) -> torch.Tensor:
    """Leave-one-out baseline over the k samples of each prompt (Ahmadian et al. 2024).

    rewards: (N, k), k >= 2 answers per prompt. A_i = r_i - mean_{j != i} r_j
    = (k·r_i - Σ_j r_j) / (k - 1): unbiased, and needs no critic.
    """
    k = rewards.shape[-1]
    if k < 2:
        raise ValueError("RLOO needs at least 2 samples per prompt")
    total = rewards.sum(-1, keepdim=True)
    return (k * rewards - total) / (k - 1)


def kl_penalised_scores(scores: torch.Tensor, seq_logp: torch.Tensor, ref_seq_logp: torch.Tensor,
                        beta: float) -> torch.Tensor:
    """Sequence-level reward r - β·(log π(y) - log π_ref(y)): the k1 KL estimate of one sample."""
    return scores - beta * (seq_logp - ref_seq_logp)


def reinforce_loss(seq_logp: torch.Tensor, advantages: torch.Tensor, n_tokens: torch.Tensor
                   ) -> torch.Tensor:
    """-mean(A · log π(y)/|y|): REINFORCE with per-token averaging, so long answers do not get
    bigger steps just for being long (advantages are constants here)."""
    return -(advantages.detach() * seq_logp / n_tokens.clamp(min=1)).mean()


# ---------------------------------------------------------------- DPO
def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor,
             ref_chosen: torch.Tensor, ref_rejected: torch.Tensor, beta: float,
             label_smoothing: float = 0.0, weight: torch.Tensor | None = None
             ) -> tuple[torch.Tensor, dict]:
    """Direct preference optimisation (Rafailov et al. 2023).

    h = β·[(log π(y_c) - log π_ref(y_c)) - (log π(y_r) - log π_ref(y_r))];
    loss = -(1-ε)·log σ(h) - ε·log σ(-h) (ε = label smoothing: conservative DPO for noisy raters).
    Stats: implicit reward accuracy (h > 0) and the mean margin h/β.
    """
    chosen_reward = policy_chosen - ref_chosen
    rejected_reward = policy_rejected - ref_rejected
    h = beta * (chosen_reward - rejected_reward)
    losses = -(1 - label_smoothing) * F.logsigmoid(h) - label_smoothing * F.logsigmoid(-h)
    loss = losses.mean() if weight is None else (losses * weight).sum() / weight.sum().clamp(min=1e-8)
    with torch.no_grad():
        stats = {"reward_accuracy": (h > 0).float().mean().item(),
                 "reward_margin": (chosen_reward - rejected_reward).mean().item(),
                 "chosen_reward": chosen_reward.mean().item(),
                 "rejected_reward": rejected_reward.mean().item()}
    return loss, stats


def rpo_nll(policy_chosen: torch.Tensor, chosen_tokens: torch.Tensor,
            weight: torch.Tensor | None = None) -> torch.Tensor:
    """The NLL term of RPO (Pang et al. 2024, "Iterative Reasoning Preference Optimization"):
    -log π(y_c)/|y_c|, the chosen answer's per-token negative log-likelihood, averaged over pairs
    (weighted like the DPO term). Added as α·NLL to the DPO loss it keeps the preferred answers
    likely: plain DPO only widens the *margin*, and on a few dozen pairs it does so partly by
    pushing probability into text neither answer contains (the repeated n-grams seen in demos)."""
    nll = -policy_chosen / chosen_tokens.clamp(min=1)
    return nll.mean() if weight is None else (nll * weight).sum() / weight.sum().clamp(min=1e-8)


def implicit_preference_agreement(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor,
                                  ref_chosen: torch.Tensor, ref_rejected: torch.Tensor) -> torch.Tensor:
    """Per pair: 1 if the policy's log-prob margin over the reference favours the chosen answer
    (DPO's implicit reward model agrees with the person), 0 if it favours the rejected one, and
    0.5 for a zero margin (no opinion: the reference itself has margin 0 on every pair, so the
    anchor agrees like a coin). Per pair, so two policies can be compared pair by pair."""
    margin = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)
    return (margin > 0).float() + 0.5 * (margin == 0).float()


def implicit_preference_accuracy(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor,
                                 ref_chosen: torch.Tensor, ref_rejected: torch.Tensor) -> float:
    """Share of pairs the policy agrees with (`implicit_preference_agreement`): a policy-level
    check on human pairs that needs no reward model; the anchor scores 0.5."""
    agree = implicit_preference_agreement(policy_chosen, policy_rejected, ref_chosen, ref_rejected)
    return agree.mean().item() if agree.numel() else float("nan")


# ---------------------------------------------------------------- KTO
def kto_class_weights(n_desirable: int, n_undesirable: int, ratio: float = 1.0) -> tuple[float, float]:
    """(λ_D, λ_U) such that λ_D·n_D / (λ_U·n_U) = ratio, with the larger weight equal to 1.

    The KTO paper (Ethayarajh et al. 2024, §4) recommends λ_D·n_D / (λ_U·n_U) in [1, 4/3]: the
    rarer class is up-weighted so it is not drowned out. One class missing -> (1, 1).
    """
    if n_desirable <= 0 or n_undesirable <= 0:
        return 1.0, 1.0
    lam_d = ratio * n_undesirable / n_desirable   # with λ_U = 1
    if lam_d > 1.0:
        return 1.0, 1.0 / lam_d
    return lam_d, 1.0


def kto_loss(policy_logp: torch.Tensor, ref_logp: torch.Tensor, desirable: torch.Tensor,
             kl_ref: torch.Tensor | float, beta: float, lambda_d: float, lambda_u: float
             ) -> tuple[torch.Tensor, dict]:
    """Kahneman–Tversky optimisation: per answer r = log π(y) - log π_ref(y), reference point z0
    (a detached batch estimate of KL(π || π_ref), clamped at 0):

        desirable:   λ_D · (1 - σ(β·(r - z0)))
        undesirable: λ_U · (1 - σ(β·(z0 - r)))

    Mean over the batch. `desirable` is a bool tensor (thumbs up = True).
    """
    z0 = torch.as_tensor(kl_ref, dtype=policy_logp.dtype, device=policy_logp.device).detach().clamp(min=0)
    r = policy_logp - ref_logp
    d = desirable.bool()
    losses = torch.where(d, lambda_d * (1 - torch.sigmoid(beta * (r - z0))),
                         lambda_u * (1 - torch.sigmoid(beta * (z0 - r))))
    with torch.no_grad():
        stats = {"kl_ref_point": float(z0),
                 "reward_desirable": r[d].mean().item() if d.any() else float("nan"),
                 "reward_undesirable": r[~d].mean().item() if (~d).any() else float("nan")}
    return losses.mean(), stats


def kto_reference_point(policy_logp_mismatched: torch.Tensor, ref_logp_mismatched: torch.Tensor
                        ) -> torch.Tensor:
    """z0 = max(0, mean(log π(y'|x) - log π_ref(y'|x))) over answers y' paired with *other*
    prompts x (the paper's biased but cheap KL estimate); detached: it only sets the level."""
    return (policy_logp_mismatched - ref_logp_mismatched).mean().detach().clamp(min=0)


def best_of_group(scores: torch.Tensor, eligible: torch.Tensor, min_advantage: float = 0.0,
                  source: Sequence[int] | None = None) -> list[tuple[int, int]]:
    """Rejection sampling (RAFT, Dong et al. 2023; Llama 2's rejection-sampling fine-tuning): for
    each prompt's candidates (row i of the (n, m) `scores`), the index of the best-scored one
    among the `eligible` ones (a boolean (n, m) mask: degenerate or cut-off answers are never
    kept), if it beats the mean of the prompt's *other samples* (what the policy usually says,
    eligible or not) by more than `min_advantage`. Returns [(i, j)], in prompt order.

    `source[j]`: the sample column candidate j was derived from (None = every column is a sample
    of its own). A derived candidate (e.g. a cut-off sample closed at its last full sentence) is
    compared with the samples other than its source; derived columns never count as "usual"."""
    out = []
    m = scores.shape[1]
    source = list(range(m)) if source is None else list(source)
    samples = [j for j in range(m) if source[j] == j]
    for i in range(scores.shape[0]):
        ok = [j for j in range(m) if bool(eligible[i, j])]
        if not ok or len(samples) < 2:
            continue
        best = max(ok, key=lambda j: float(scores[i, j]))
        others = [float(scores[i, j]) for j in samples if j != source[best]]
        if float(scores[i, best]) - sum(others) / len(others) > min_advantage:
            out.append((i, best))
    return out


def repeated_ngram_mask(ids: Sequence[int], n: int) -> list[bool]:
    """Which tokens of a sequence belong to a repeat: True at every position covered by an
    n-gram occurrence whose n-gram already started at an earlier position (the first occurrence
    stays False). The negative candidates of sequence-level unlikelihood training (Welleck et al.
    2019, "Neural Text Generation with Unlikelihood Training", section 5.2)."""
    mask = [False] * len(ids)
    seen: set[tuple[int, ...]] = set()
    for s in range(len(ids) - n + 1):
        gram = tuple(ids[s:s + n])
        if gram in seen:
            for t in range(s, s + n):
                mask[t] = True
        seen.add(gram)
    return mask


def unlikelihood_loss(token_logp: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
    """Sequence-level unlikelihood (Welleck et al. 2019): mean over the marked tokens of
    -log(1 - π(y_t | y_<t)), which pushes the probability of continuing a repeat towards 0 and
    vanishes as it gets there (unlike -NLL, which would push without bound). `token_logp`:
    (B, T) log π of each token; `negatives`: (B, T) 0/1 mask of the tokens to unlearn."""
    p = token_logp.exp().clamp(max=1.0 - 1e-6)
    per_token = -torch.log1p(-p)
    return (per_token * negatives).sum() / negatives.sum().clamp(min=1.0)
