"""All trainer hyper-parameters, one dataclass per stage/algorithm (TRL style), defaults sized for a
135M model on 2 CPU cores.

Every field has a comment saying what it does; `asdict(config)` is stored next to each checkpoint
and in the version metadata. The policy algorithms share `PolicyConfig`; each adds its own fields.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional


@dataclass
class RMConfig:
    """Reward-model training (Bradley–Terry on pairs + pointwise loss on thumbs)."""
    kind: str = "transformer"         # "transformer": the policy's backbone + a scalar head, fine-tuned (below);
                                      # "embedding": a linear head on frozen sentence-encoder features
                                      # (trainer/embedding_rm.py) — what transfers to unseen prompts from a few
                                      # hundred pairs (bench/results/rm_embedding_ab.json)
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
    device: str = "auto"              # "auto" = cuda (bf16 autocast) if present, else cpu (fp32)
    length_debias: bool = True        # ODIN (Chen et al. 2024): fit r_Q + r_L with an extra training-only length
                                      # head r_L, decorrelate the saved head r_Q from answer length (tokens)
    length_corr_coef: float = 0.3     # λ_L on |ρ(r_Q, len)| − ρ(r_L, len), Pearson over each step's answers. The
                                      # authors' code uses 1.0 with ρ over a 256-answer global batch; a step here
                                      # sees 16-48, so ρ is 2-4x noisier, and its scale-free gradient swamps BT while
                                      # the fresh heads' scores barely vary: 0.5-1 sometimes stalled BT on the tiny
                                      # test model (held-out acc 0.57-0.69), 0.3 did not in 5 seeds
    length_ortho_coef: float = 1.0    # λ_O on |w_Q·w_L| (the authors' code's default weight); unnormalised, so tiny
                                      # next to BT unless both heads grow along one direction (which is what it stops)
    pooling: str = "last"             # what the score head reads: "last" = the last token's state (the usual RM
                                      # head), "mean" = the mean of all tokens' states (a bag of what the answer says).
                                      # Measured (bench_rm_efficiency, 60 prompts, pairs of v0 samples, held-out prompts):
                                      # no gain — both at or below chance (balanced 140 pairs: truth acc 0.43 last /
                                      # 0.49 mean; formal_expert 150: 0.51 / 0.51), so the default stays "last"
    embedding_components: int = 32   # kind "embedding": principal directions of the answers' embeddings kept as features.
                                      # Measured (bench_rm_efficiency, 140 pairs, unseen prompts, truth accuracy
                                      # balanced/formal_expert/concise_warm): 16 -> .62/.62/.56, 32 -> .70/.67/.66,
                                      # 64 -> .70/.60/.60 (bench/results/rm_emb_sweep.json). At 200 pairs from a
                                      # 120-prompt pool: 32 -> .61/.60/.61, 96 -> .67/.64/.62, 384 -> chance
                                      # (rm_emb_sweep_200.json); choosing it by the prompt-grouped CV loss picked 32
                                      # there too (no gain, not kept; rm_efficiency_200.json)
    embedding_pca_within_prompt: bool = False  # kind "embedding": fit those principal directions on the answers'
                                      # embeddings minus their prompt's mean answer (how answers to one prompt differ:
                                      # register, detail, tone), not on the raw embeddings, whose top directions are
                                      # mostly *which prompt* was answered — a direction every pair shares both ends of.
                                      # Off: measured no gain (session 25, bench_rm_efficiency, 200 pairs, unseen
                                      # prompts, 4 prompt splits, truth accuracy mean of the 14 preference x split
                                      # cells .778 with vs .777 without; balanced +.02-.03, concise_warm -.01-.05;
                                      # bench/results/rm_variants_s25_split*.json, rm_within_s25_split0.json)
    embedding_l2_grid: tuple = (0.1, 1.0, 3.0, 10.0)  # kind "embedding": L2 strengths tried; the one with the lowest
                                      # held-out BT loss in prompt-grouped cross-validation is used
    embedding_cv_folds: int = 5       # kind "embedding": folds of that cross-validation (prompts never split)
    embedding_surface: bool = True    # kind "embedding": add the answer's surface features (trainer/text_features.py:
                                      # numbers, names, exclamations, contractions, lists, prompt coverage, ...: how it
                                      # is written, which mean-pooled embeddings lose). With `embedding_vocab` 300,
                                      # measured at 200 pairs on unseen prompts, truth accuracy over 3 prompt splits
                                      # (bench_rm_efficiency, rm_surface_s14*.json), balanced / formal_expert /
                                      # concise_warm / "unwritten" (a bench-only taste for reasons, against hedging):
                                      # embedding alone .62-.69 / .55-.69 / .60-.71 / .71-.73; + surface .79-.83 /
                                      # .76-.82 / .68-.76 / .73-.78; + surface + words .76-.84 / .78-.84 / .72-.76 /
                                      # .74-.83
    embedding_vocab: int = 300        # kind "embedding": add a bag of at most this many words (presence), those in at
                                      # least `embedding_vocab_min_df` of the RM's training answers; 0 = none
    embedding_vocab_min_df: int = 8   # kind "embedding": ... a word must occur in this many training answers
    embedding_sign_priors: bool = True  # kind "embedding": features whose direction no user reverses keep it —
                                      # repeated bigrams (looping) never add reward, a finished answer or one that
                                      # ends like a sentence never loses it (a weight fitted the wrong way is held
                                      # at 0: trainer/embedding_rm.SIGN_PRIORS). Measured as gate judges, refitted
                                      # on session 22's formal_expert feedback per round and scored against the
                                      # hidden preference on that run's 3 gate comparisons (bench/rm_judge_variants.py):
                                      # per-prompt gain correlation -0.10/-0.07/+0.27 without, +0.19/+0.13/+0.42 with;
                                      # leaving the length covariate out of the L2 as well: +0.16/+0.11/+0.42 (not kept).
                                      # On pairs of v0's samples (bench_rm_efficiency, 200 pairs, unseen prompts) they
                                      # never bind: truth accuracy .826/.736/.758/.750 either way (balanced /
                                      # formal_expert / concise_warm / unwritten; rm_sign_priors_s22.json)
    trunk_cache: bool = True          # with trainable_layers, run the frozen lower blocks once per text and keep their
                                      # output (trainer/trunk_cache.py): later epochs and the final scoring pass run the
                                      # top blocks alone. Same scores (checked on the run's first texts, else off)


@dataclass
class PolicyConfig:
    """Fields every policy algorithm shares. The reference of every algorithm is the deployment's
    anchor version (not the served parent), so KL is bounded across rounds, not per round."""
    lr: float = 1e-5                  # AdamW learning rate of the policy
    max_grad_norm: float = 1.0        # gradient clipping of the policy (global L2 norm)
    trainable_layers: Optional[int] = 6  # train only the top N blocks (+ final norm); None = all. On SmolLM2
                                         # (30 blocks) 6 cut update time 2.6x and peak RSS 4.7->2.7 GB (bench/)
    seed: int = 0                     # seeds data order, sampling and any head initialisation
    num_threads: Optional[int] = None  # torch.set_num_threads; None leaves torch's default
    show_progress_bar: bool = True    # tqdm bar on stderr
    device: str = "auto"              # "auto" = cuda (bf16 autocast) if present, else cpu (fp32)
    max_new_tokens: int = 48          # sampled answer length cap; answers cut here get missing_eos_penalty
    max_prompt_tokens: int = 256      # templated prompt is left-truncated to this many tokens
    max_answer_tokens: int = 128      # offline answers (DPO/KTO data) are cut to this many tokens
    temperature: float = 1.0          # sampling temperature (log-probs are computed at the same temperature)
    top_k: int = 0                    # 0 = off; policy-gradient theory wants the full distribution
    top_p: float = 1.0                # nucleus sampling; 1.0 = off
    init_kl_coef: float = 0.05        # β at the start of a deployment's first run (later runs resume the
                                      # parent version's β when the controller is adaptive)


@dataclass
class PPOConfig(PolicyConfig):
    """PPO with actor, frozen anchor reference, a critic initialised from the reward model and kept
    across runs, and a reward model (Ziegler et al. / OpenRLHF style)."""
    # --- schedule ---
    steps: int = 8                    # PPO steps; each step = one rollout batch + ppo_epochs of updates
    batch_size: int = 8               # prompts rolled out per step (one response each)
    mini_batch_size: int = 4          # rollouts per optimizer step inside an epoch
    ppo_epochs: int = 2               # passes over each rollout batch
    # --- critic (a separate model: backbone + scalar head, from the RM on the first run) ---
    critic_lr: float = 5e-5           # AdamW learning rate of the critic (critics learn faster than actors)
    critic_max_grad_norm: float = 1.0  # the critic's own gradient clipping, apart from the policy's
    critic_trainable_layers: Optional[int] = 2  # top N critic blocks trained (+ head); None = all
    # --- rewards ---
    normalise_reward: bool = True     # use the RM's stored mean/std: (r - mean) / std
    reward_clip: float = 5.0          # clip the (normalised) score to [-reward_clip, reward_clip]
    missing_eos_penalty: float = 1.0  # subtracted from the score of answers cut off without EOS
    # --- KL to the reference ---
    kl_estimator: Literal["k1", "k3"] = "k1"  # per-token estimator folded into rewards: k1 = logp - logp_ref; k3 = (r - 1) - log r, r = p_ref/p
    init_kl_coef: float = 0.05        # β at the start; per-token reward -= β * kl_t
    adaptive_kl: bool = True          # adapt β towards kl_target (Ziegler et al. 2019); False = fixed β
    kl_target: float = 3.0            # target per-sequence KL to the anchor (nats) for the adaptive controller
    kl_horizon: Optional[int] = None  # controller horizon in samples; None = this run's sample count, so β
                                      # can move up to ±20% within one run (TRL's 10,000 never moved it)
    # --- advantage / losses ---
    gamma: float = 1.0                # discount in GAE
    lam: float = 0.95                 # GAE λ
    whiten_advantages: bool = True    # normalise advantages to mean 0 / std 1 over the batch
    cliprange: float = 0.2            # PPO ratio clip ε
    cliprange_value: float = 0.2      # value clip: V stays within ±this of its rollout-time value
    vf_coef: float = 0.1              # weight of the value loss
    entropy_coef: float = 0.0         # entropy bonus weight (0 = off; entropy is still logged)


@dataclass
class RLOOConfig(PolicyConfig):
    """REINFORCE with a leave-one-out baseline (Ahmadian et al. 2024): k answers per prompt scored by
    the RM; each answer's advantage is its KL-penalised reward minus the mean of the other k-1."""
    steps: int = 8                    # optimizer steps; each = one rollout of batch_size prompts x k answers
    batch_size: int = 8               # prompts per step
    k: int = 2                        # answers sampled per prompt (>= 2: the baseline needs the others)
    micro_batch_size: int = 8         # answers per forward/backward (gradient accumulation; memory knob)
    normalise_reward: bool = True     # use the RM's stored mean/std: (r - mean) / std
    reward_clip: float = 5.0          # clip the (normalised) score to [-reward_clip, reward_clip]
    missing_eos_penalty: float = 1.0  # subtracted from the score of answers cut off without EOS
    adaptive_kl: bool = True          # adapt β towards kl_target (Ziegler et al. 2019); False = fixed β
    kl_target: float = 3.0            # target per-sequence KL to the anchor (nats)
    kl_horizon: Optional[int] = None  # None = this run's sample count (β moves within one run)


@dataclass
class DPOConfig(PolicyConfig):
    """Direct preference optimisation (Rafailov et al. 2023) on the human pairs (comparisons and the
    pairs derived from thumbs), reference = anchor. Needs no reward model."""
    lr: float = 5e-6
    beta: float = 0.1                 # strength of the implicit KL constraint (higher = stays closer to anchor)
    label_smoothing: float = 0.0      # assumed share of flipped labels (conservative DPO); 0 = plain DPO
    rpo_alpha: float = 0.0            # weight of the chosen answers' per-token NLL added to the loss
                                      # (RPO, Pang et al. 2024): keeps preferred answers likely; 0 = plain DPO
    epochs: int = 2                   # passes over the pairs
    batch_size: int = 8               # pairs per optimizer step
    micro_batch_size: int = 8         # pairs per forward/backward (gradient accumulation)
    max_pairs: Optional[int] = 512    # newest pairs used per run (older ones were learned by earlier runs)


@dataclass
class OnlineDPOConfig(PolicyConfig):
    """Online DPO (Guo et al. 2024): each step samples 2 answers per prompt from the *current* policy,
    the RM labels the better one, and a DPO step is taken against the anchor."""
    lr: float = 5e-6
    beta: float = 0.1                 # DPO β
    steps: int = 8                    # optimizer steps (each with fresh samples)
    batch_size: int = 8               # prompts per step (2 answers each)
    micro_batch_size: int = 8         # pairs per forward/backward
    missing_eos_penalty: float = 1.0  # RM score penalty for cut-off answers before labelling
    min_score_gap: float = 0.0        # skip pairs whose normalised RM scores differ by less (RM unsure)


@dataclass
class RAFTConfig(PolicyConfig):
    """Reward-ranked fine-tuning (RAFT, Dong et al. 2023; the rejection-sampling fine-tuning of
    Llama 2): sample k answers per prompt from the served policy, score them with the RM, keep the
    best healthy answer of each prompt (never a degenerate one, common/degeneracy.py), and fine-tune
    on those by plain likelihood. Every target is an answer the policy itself wrote, fluent by
    construction, so a round moves it towards its own best behaviour instead of pushing a margin
    without bound (what made DPO on a few dozen pairs repeat itself in the demos)."""
    lr: float = 1e-4
    k: int = 6                        # answers sampled per prompt (the "n" of best-of-n)
    max_prompts: Optional[int] = 48   # prompts sampled per run (a random subset); None = all
    max_new_tokens: int = 64          # as long as the answers users get, so "finished in time" is learnable
    top_p: float = 0.9                # nucleus sampling of the k candidates (Holtzman et al. 2020): the fine-tuning
                                      # imitates the kept samples, and at top_p 1 they carry tail-token glitches
                                      # ("...and theiromachiles", "...universal  0 natural <<zero") that it learns.
                                      # Measured (formal_expert demo, session 12, one run each): top_p 1.0 -> v1-v3
                                      # all refused for a looping gate answer (served v0); 0.9 -> v1 passed (75%
                                      # win, 0 degenerate), v2-v3 refused
    sample_temperature: Optional[float] = 0.7   # temperature of the k candidates only (None = `temperature`, which
                                      # every log-prob, training included, keeps): below 1 the tail openers the kept
                                      # answers carry ("Hugging Face: The age-old debate", "Hurry, little one!") get
                                      # rarer, and the greedy policy copies them onto unseen prompts less. Measured
                                      # (bench/raft_degenerate_ab.py, one round, 136 unseen prompts): 1.0 -> 3
                                      # degenerate greedy answers ("Hugging Face:"), win 82%; 0.7 -> 1 (a loop), win 85%
    require_eos: bool = True          # keep only answers that ended by themselves: a cut-off sample is no
                                      # complete answer, and imitating it teaches the policy not to stop
                                      # (measured: trained on 80% cut-off targets, the probe answer ran on
                                      # into "la femme, la femme, ..." at KL 0.97)
    epochs: int = 2                   # passes over the kept answers. Measured (demo, 19 kept answers): a third
                                      # epoch memorised them (NLL 2.1 -> 1.4, KL 0.2 -> 1.9) and greedy answers
                                      # began to loop ("They're so much more than just a species...")
    batch_size: int = 8               # kept answers per optimizer step
    micro_batch_size: int = 8         # answers per forward/backward
    generation_batch_size: int = 64   # sequences per `generate` call (memory knob). Measured (SmolLM2, 2 cores,
                                      # 64 sampled tokens): 0.57 s per answer at 32, 0.51 at 64, 0.50 at 96
    normalise_reward: bool = True     # use the RM's stored mean/std: (r - mean) / std
    reward_clip: float = 5.0          # clip the (normalised) score to [-reward_clip, reward_clip]
    missing_eos_penalty: float = 1.0  # subtracted from the score of answers cut off without EOS
    min_advantage: float = 0.25       # keep a prompt's best answer only if it beats the mean of the
                                      # others by this much (normalised RM units): where the RM sees
                                      # no difference, there is nothing to learn but noise
    max_repeated_ngram_share: float = 0.1  # a kept answer repeats at most this share of its word 3-grams:
                                      # stricter than the gate's "degenerate" (0.25), so no loop is taught
    close_cut_answers: bool = True   # also rank, for each sample cut off by max_new_tokens, the same answer
                                      # closed (EOS) after its last full sentence. Measured (session 6 demos):
                                      # only 9-15% of samples finish within the 64 tokens users get, so most
                                      # prompts had no eligible answer and a round kept 9-19
    close_min_share: float = 0.3      # a closed candidate keeps at least this share of its sample's tokens
    close_at: str = "last"            # where a cut-off sample is closed: "last" = after its last whole sentence;
                                      # "likeliest" = after the whole sentence where the policy itself was the most
                                      # likely to stop (π(EOS) there), so the stop it learns stands where it already
                                      # leaned to stop rather than wherever the token budget ran out
    closed_eos_weight: float = 1.0    # weight of the likelihood of the EOS that closes a kept closed candidate
                                      # (its other tokens weigh 1). That EOS stands after an arbitrary sentence
                                      # end (see early_stop_weight); 0 = a closed answer teaches what to say,
                                      # and only answers that ended by themselves teach where to stop
    min_length_ratio: float = 0.15    # a kept answer has at least this share of the words of the prompt's median
                                      # sample: stricter than the gate's "far too short" (0.06 of the anchor's), so
                                      # no quip is taught (measured: a candidate answered "The storm.")
    replay_max: int = 32              # kept answers of earlier rounds replayed once in this round's fine-tuning (a
                                      # random subset of the served version's raft_kept.jsonl: what it and its
                                      # ancestors were taught); 0 = off. Llama 2's rejection-sampling rounds also
                                      # trained on the best samples of all earlier iterations, against regressions:
                                      # a round taught only its own few dozen answers drifts on everything else.
                                      # 32, not 48 (session 23): each 8 replayed answers add an optimizer step
                                      # (~10-15 s with its unlikelihood and opening terms), and round 3 replayed 48
    replay_keep: int = 256            # kept answers a version's raft_kept.jsonl carries forward (newest first)
    start_from_anchor: bool = False   # sample from the served version, but fine-tune the *anchor* on this round's
                                      # kept answers plus all earlier rounds' (up to `anchor_replay_max`, every
                                      # epoch), as ReST-EM (Singh et al. 2023) fine-tunes the base model each
                                      # iteration, against overfitting. Why it exists: continuing from the served
                                      # version drifted without a judged gain (session 12 demos: rounds 2-3 at KL
                                      # 5.8-6.1 to the anchor). Why off: measured (formal_expert demo, session 13,
                                      # one run) it lowered that drift (KL 4.7-4.8) but gained nothing either (v2
                                      # 58%, v3 62% win vs v0, both refused: judges' bound -0.09 / -0.20 and one
                                      # looping gate answer each) and made rounds 2-3 slower (RAFT 306 s vs ~195 s,
                                      # demo 26.3 min vs 23.5). False = continue from the served version.
    anchor_replay_max: int = 128      # earlier rounds' kept answers trained on when starting from the anchor
    unlikelihood_weight: float = 0.3  # weight of sequence-level unlikelihood (Welleck et al. 2019) on the
                                      # policy's own looping answers (0 = off). Why: a greedy answer that loops
                                      # ("connected to a gear wheel, which is connected to a gear wheel") was the
                                      # gate's most frequent refusal. Measured at 1.0 (balanced demo, round 1,
                                      # session 7) it dominated the clipped gradient (norm 3.2) and hurt: KL to v0
                                      # 6.1 vs 2.0 without (bench/results/raft_unlikelihood_ab.txt). Why 0.3 with
                                      # opening_stop_weight 2.0 (session 15, bench/raft_degenerate_ab.py: one round
                                      # from v0, 136 unseen prompts, greedy): degenerate answers 3 (all "Hugging
                                      # Face:") vs 5 at the old defaults (4 fragments, 1 loop; v0 itself: 5 loops),
                                      # win vs v0 82% vs 85%, finished 86% vs 90%, KL 3.0 vs 3.9. Each alone: 0.3 ->
                                      # 5 (fragments); opening stop alone -> 3 (loops of v0's own, "A creature of the
                                      # night, a creature of the night"): stopping less after an opening fragment
                                      # lets the answer run into a loop, and this term unlearns the loops
    early_stop_weight: float = 0.0    # weight of an unlikelihood term on stopping where a kept answer went on:
                                      # -log(1 - π(EOS)) at every token of it but the last. Why: a kept answer
                                      # closed after its last full sentence ends at an arbitrary sentence, so
                                      # fine-tuning cannot tell the final sentence end from the others and
                                      # learns π(EOS | any sentence end) ≈ the share of final ones (measured:
                                      # 0.44 mean at the non-final sentence ends of its own kept answers, v0
                                      # 0.009); greedy decoding then stops after the first sentence whenever
                                      # no continuation is as likely ("What is cheese?" -> "The cheese.").
                                      # Plain likelihood already pushes π(EOS) there with gradient π(EOS);
                                      # this adds `early_stop_weight` times that. 0 = off. Why off: measured at
                                      # 2.0 it did what it says on the better-candidate gate test (π(EOS) at
                                      # non-final sentence ends 0.44 -> 0.20, degenerate gate answers 2/33 ->
                                      # 0/33), but in the balanced demo (docs/demo/balanced-early-stop, one run)
                                      # greedy answers that no longer stopped looped instead ("a never-ending
                                      # journey, a never-ending journey"): v1 58% / 2 degenerate of 24 vs 81% / 1
    early_stop_share: float = 1.0     # the early-stop term covers the first this share of each kept answer's tokens
                                      # (1.0 = all but the last). A stop in the first part of an answer is the one that
                                      # leaves a fragment ("The elephant."), while a stop at a later sentence end is
                                      # what the closed answers teach, and suppressing that one too made answers loop.
                                      # Measured (136 unseen prompts, weight 2.0): share 0.5 -> 0 fragments, 3 loops,
                                      # but finished 53% and win 70% (vs 90%, 85%); 0.15 -> 2 fragments (4 at 0)
    opening_stop_weight: float = 2.0  # weight of an unlikelihood term on stopping within the opening (the first
                                      # `opening_share` of tokens) of every answer the policy sampled this round, kept
                                      # or not: none of them stopped there. Why: the early stops it learns happen after
                                      # an opening fragment of its own style ("The elephant.", "Hugging Face:"), a
                                      # context the kept answers rarely show, so early_stop_weight on them cannot reach
                                      # it; the samples do. 0 = off. Measured with unlikelihood_weight (see there):
                                      # at 2.0 or 5.0 alone, 0 fragments in 136 unseen prompts (4 at 0) but 3 loops
    opening_share: float = 0.15       # the opening: this share of a sample's tokens (RAFT's "far too short" bar is
                                      # 0.15 of the prompt's median sample)
    opening_batch: int = 12           # sample openings in each step's term (cycled). Why 12, not 24 (session 23):
                                      # each 8 openings cost a forward/backward of ~2.4 s on the demo machine, as
                                      # much per step as the kept answers' own; 12 still cycles through most of
                                      # a round's samples over its 8-18 steps
    unlikelihood_ngram: int = 4       # a token belongs to a repeat when a token n-gram covering it occurred before
    unlikelihood_greedy: bool = True  # also decode the round's prompts greedily (what the gate and the report
                                      # see) to find loops, not only among the samples
    unlikelihood_batch: int = 8       # looping answers in each step's unlikelihood term (cycled)
    loop_check: bool = True           # after fine-tuning, decode the round's prompts greedily (as the gate does); if
                                      # some answers are degenerate, keep the epoch-end weights with the fewest
                                      # (trainer/rejection.check_loops): a round that sharpened the policy into
                                      # loops gives back its last epoch rather than the whole round
    repair_rounds: int = 0            # after the loop check, while some greedy answers to the round's prompts are
                                      # still degenerate: rounds of unlikelihood on them (a fragment's stop token, a
                                      # loop's repeated tokens) and a re-check; keeps the weights with the fewest
                                      # (trainer/raft_repair.py). 0 = off. Measured (session 16, bench one round,
                                      # 136 unseen prompts): 3 rounds cleared the round's prompts (1 -> 2 -> 0) but
                                      # left 3 unseen degenerate answers as before, finished 62% vs 86%, win 73% vs 82%
    repair_steps: int = 3             # optimizer steps per repair round
    repair_weight: float = 1.0        # weight of the repair's unlikelihood beside the kept answers' likelihood
    drop_fragment_openings: bool = False  # never keep a sample whose first sentence, were it to stop there, would be a
                                      # "far too short" answer (common/degeneracy.fragment_opening: "The sleep. Sleep
                                      # is...", "Sure! ..."); only with drop_degenerate (a language rule too). Why it
                                      # exists: "Tell me something interesting about thunderstorms." -> "The
                                      # thunderstorms." (a stop) or "... They are a never-ending cycle, a never-ending
                                      # cycle" (a loop) was the served versions' most frequent degenerate held-out
                                      # answer in sessions 14-23, and round 1 kept "The sleep. Sleep is ...". Why off:
                                      # measured (session 24, two demos, 4-11 samples of 180-288 dropped per round)
                                      # both served versions still had 1 degenerate answer of 24 ("Thunderbolts!",
                                      # "The thunderstorms."): v0 itself opens 13 of 136 unseen prompts' greedy answers
                                      # that way (bench/greedy_openings.py), and the trained versions 3-12 with the
                                      # rule vs 8-14 without (one run each) — no gain shown
    fragment_unlikelihood_weight: float = 0.0  # weight of an unlikelihood term on the token that ends a fragment opening
                                      # (common/degeneracy.fragment_opening: a first sentence that, were the answer to
                                      # stop there, would be "far too short": "The storm." before "Thunderstorms are
                                      # ...") in every sample of the round that opens with one, kept or not. Why: the
                                      # served versions' degenerate held-out answers (sessions 14-24) are such an
                                      # opening followed by a stop ("The thunderstorms.") or a loop; the opening is
                                      # v0's own (13 of 136 unseen prompts' greedy answers) and the stop after it is
                                      # what fine-tuning adds. Unlearning the "." after "The storm" makes the policy
                                      # write the sentence on ("The storm is ..."), so it has no fragment to stop
                                      # after, on prompts it never saw: the pattern is generic, not the topic's. 0 = off.
                                      # Measured (session 25, bench/raft_degenerate_ab.py, one round from v0, same samples,
                                      # 136 unseen prompts, greedy): fragment openings 19 -> 0, degenerate 2 -> 2 (both
                                      # loops either way: "The thunderstorms – they're a never-ending cycle of chaos, a
                                      # never-ending cycle"), finished 0.79 -> 0.79, win vs v0 0.83 -> 0.81, KL 3.80 ->
                                      # 3.46 at the last epoch (raft_fragment_ab_s25_last_epoch.json); at 3.0 and with the
                                      # loop check both weights kept epoch 1 (win 0.61 / 0.74, raft_fragment_ab_s25.json).
                                      # Why off: the habit moves rather than goes. In the balanced demo at 1.0
                                      # (docs/demo/balanced-session25-fragment-unlikelihood) the served v1 (81%) had 2
                                      # degenerate held-out answers of 24, both loops after an opening now closed by
                                      # "..." ("The trains... they're a never-ending journey, a never-ending journey"),
                                      # as the A/B's loops opened with "The tunnels –": no fewer degenerate answers shown
    fragment_batch: int = 8           # fragment openings in each step's term (cycled)
    drop_degenerate: bool = True      # never keep a degenerate sample; False only for models whose text is
                                      # not language (the tests' random tiny model: all "off the prompt")
    kl_brake_share: Optional[float] = 0.9   # keep the trained policy's KL to the anchor (sampled on the round's
                                      # prompts, as the gate samples held-out ones) under this share of the job's
                                      # kl_budget (the deployment's, from the worker): while above, the trained
                                      # weights are pulled back toward the served version's, θ_s + α(θ - θ_s), α
                                      # cut by a secant step (or halved; trainer/kl_brake.py). None (or a job without a budget) = off. Why:
                                      # rounds overshot the budget in one jump (3.99 -> 9.22) and the gate threw
                                      # the whole round away. Measured (balanced demo, session 20, share 0.8): this
                                      # estimate minus the gate's was -0.42, +0.72, +0.77 in rounds 1-3 (the round's
                                      # own prompts read higher once it replays); α 1/2 read 6.77 and 6.86, just over
                                      # 6.4, so both rounds went to α 1/4 (KL to served 0.13 and 0.01) at ~30 s per
                                      # estimate. 0.9 (7.2) keeps ~1 nat of margin below the budget
    kl_brake_tries: int = 2           # smaller α tried at most after α = 1 (kl_brake.next_alpha); the last is kept even
                                      # if still over
    kl_brake_prompts: int = 32        # round prompts (one sampled answer each) per KL estimate
    kl_brake_verify_secant: bool = False  # estimate the KL again at the α a secant step chose (True), or apply it and
                                      # record the line's prediction (False; trainer/kl_brake.py). Why False: the
                                      # re-estimate cost ~33 s in most braked rounds (a demo's rounds 2-3), the gate
                                      # measures the KL to the anchor anyway, and the line held in every recorded round


@dataclass
class KTOConfig(PolicyConfig):
    """Kahneman–Tversky optimisation (Ethayarajh et al. 2024) from thumbs: desirable (up) and
    undesirable (down) answers, reference = anchor. Needs no reward model and no pairs."""
    lr: float = 5e-6
    beta: float = 0.1                 # KTO β
    desirable_ratio: float = 1.0      # λ_D·n_D / (λ_U·n_U); the paper recommends [1, 4/3]
    use_pairs: bool = True            # also use comparisons: chosen -> desirable, rejected -> undesirable
    epochs: int = 2                   # passes over the rated answers
    batch_size: int = 8               # answers per optimizer step (>= 2: the KL reference point
                                      # pairs each answer with another prompt of the batch)
    micro_batch_size: int = 8         # answers per forward/backward
    max_examples: Optional[int] = 1024  # newest examples used per run
