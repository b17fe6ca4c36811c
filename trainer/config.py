"""All trainer hyper-parameters, one dataclass per stage, defaults sized for a 135M model on 2 CPU cores.

Every field has a comment saying what it does; `asdict(config)` is stored next to each checkpoint.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional


@dataclass
class RMConfig:
    """Reward-model training (Bradley–Terry on pairs + pointwise loss on thumbs)."""
    lr: float = 1e-5                  # AdamW learning rate
    weight_decay: float = 0.0         # AdamW weight decay
    epochs: int = 1                   # passes over the pair (and rated) data
    batch_size: int = 8               # pairs (and rated answers) per optimizer step
    max_length: int = 512             # tokens per templated (prompt, answer); longer ones lose their *start*
    pointwise_coef: float = 0.5       # weight of the thumbs loss -log σ(±r) relative to the pair loss
    heldout_fraction: float = 0.1     # share of pairs held out for accuracy when eval_pairs is not given
    min_heldout_pairs: int = 10       # below this many pairs no held-out split is made (all pairs train)
    max_grad_norm: float = 1.0        # gradient clipping (global L2 norm)
    trainable_layers: Optional[int] = 6  # train only the top N blocks (+ final norm, scalar head); None = all. CPU knob
    eval_batch_size: int = 16         # sequences per forward when scoring
    seed: int = 0                     # seeds shuffling, the held-out split and the head initialisation
    num_threads: Optional[int] = None  # torch.set_num_threads; None leaves torch's default
    show_progress_bar: bool = True    # tqdm bar on stderr


@dataclass
class PPOConfig:
    """PPO with actor, frozen reference, value head (critic) and a reward model (Ziegler et al. / TRL style)."""
    # --- schedule ---
    steps: int = 8                    # PPO steps; each step = one rollout batch + ppo_epochs of updates
    batch_size: int = 8               # prompts rolled out per step (one response each)
    mini_batch_size: int = 4          # rollouts per optimizer step inside an epoch
    ppo_epochs: int = 2               # passes over each rollout batch
    lr: float = 1e-5                  # AdamW learning rate for policy + value head
    max_grad_norm: float = 1.0        # gradient clipping (global L2 norm)
    trainable_layers: Optional[int] = 6  # train only the top N blocks (+ final norm); None = all. On SmolLM2
                                         # (30 blocks) 6 cut update time 2.6x and peak RSS 4.7->2.7 GB (bench/)
    seed: int = 0                     # seeds prompt order, sampling and value-head init
    num_threads: Optional[int] = None  # torch.set_num_threads; None leaves torch's default
    show_progress_bar: bool = True    # tqdm bar on stderr
    # --- rollouts ---
    max_new_tokens: int = 48          # response length cap; answers cut here get missing_eos_penalty
    max_prompt_tokens: int = 256      # templated prompt is left-truncated to this many tokens
    temperature: float = 1.0          # sampling temperature (log-probs are computed at the same temperature)
    top_k: int = 0                    # 0 = off; PPO theory wants the full distribution, so keep 0 / top_p 1
    top_p: float = 1.0                # nucleus sampling; 1.0 = off
    # --- rewards ---
    normalise_reward: bool = True     # use the RM's stored mean/std: (r - mean) / std
    reward_clip: float = 5.0          # clip the (normalised) score to [-reward_clip, reward_clip]
    missing_eos_penalty: float = 1.0  # subtracted from the score of answers cut off without EOS
    # --- KL to the reference ---
    kl_estimator: Literal["k1", "k3"] = "k1"  # per-token estimator folded into rewards: k1 = logp - logp_ref; k3 = (r - 1) - log r, r = p_ref/p
    init_kl_coef: float = 0.05        # β at the start; per-token reward -= β * kl_t
    adaptive_kl: bool = True          # adapt β towards kl_target (Ziegler et al. 2019); False = fixed β
    kl_target: float = 6.0            # target per-sequence KL (nats) for the adaptive controller
    kl_horizon: int = 10000           # controller horizon in samples; smaller = faster β changes
    # --- advantage / losses ---
    gamma: float = 1.0                # discount in GAE
    lam: float = 0.95                 # GAE λ
    whiten_advantages: bool = True    # normalise advantages to mean 0 / std 1 over the batch
    cliprange: float = 0.2            # PPO ratio clip ε
    cliprange_value: float = 0.2      # value clip: V stays within ±this of its rollout-time value
    vf_coef: float = 0.1              # weight of the value loss
    entropy_coef: float = 0.0         # entropy bonus weight (0 = off; entropy is still logged)
