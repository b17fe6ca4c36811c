"""Every policy algorithm, three consecutive runs on the tiny model with the synthetic preference
(more digits = better): each run starts from the previous run's policy, as the live loop does,
while the reference stays the anchor (the tiny model). The true preference must improve on
held-out prompts and KL to the anchor must stay within the budget after every run — the drift
that a per-round reference let compound (KL 2.4 -> 6.1 -> 8.4 in the old demo).

Each algorithm is one test well under 2 minutes on 2 CPU cores; all are seeded; a sign error, a
broken baseline or a reference that moves with the parent makes them fail.
"""
import json
import math

import pytest
import torch

from tests.trainer.synthetic import AnswerSampler, digit_count, prompts
from trainer import algorithms
from trainer.config import DPOConfig, KTOConfig, OnlineDPOConfig, PPOConfig, RLOOConfig
from trainer.evaluate import check_finite, generate_answers, kl_between
from trainer.modeling import load_tokenizer
from trainer.policy_base import META_FILE, PolicyJob

MAX_NEW = 16
KL_BUDGET = 12.0     # nats per 16-token answer to the anchor
COMMON = dict(max_new_tokens=MAX_NEW, show_progress_bar=False, seed=0, num_threads=2, device="cpu")
CONFIGS = {
    "ppo": PPOConfig(steps=10, batch_size=16, mini_batch_size=8, lr=1e-3, critic_lr=1e-3,
                     init_kl_coef=0.05, kl_target=4.0, **COMMON),
    "rloo": RLOOConfig(steps=10, batch_size=8, k=2, micro_batch_size=16, lr=1e-3, init_kl_coef=0.05,
                       kl_target=4.0, **COMMON),
    "online_dpo": OnlineDPOConfig(steps=10, batch_size=16, lr=1e-3, beta=0.1, **COMMON),
    "dpo": DPOConfig(lr=5e-4, beta=0.1, epochs=2, batch_size=16, micro_batch_size=16, **COMMON),
    "kto": KTOConfig(lr=1e-3, beta=0.1, epochs=3, batch_size=16, micro_batch_size=16, use_pairs=False,
                     **COMMON),
}


def digits_per_answer(policy_dir) -> float:
    heldout = [p for p in prompts(16, seed=11) for _ in range(4)]   # unseen prompts, 4 samples each
    answers = generate_answers(policy_dir, heldout, MAX_NEW, greedy=False, seed=123)
    return sum(map(digit_count, answers)) / len(answers)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_three_runs_improve_preference_within_kl_budget(name, tiny_model_dir, trained_rm, tmp_path):
    torch.set_num_threads(2)
    rm_dir = trained_rm[0] if algorithms.get(name).needs_reward_model else None
    sampler = AnswerSampler(load_tokenizer(tiny_model_dir), seed=7)
    anchor = tiny_model_dir
    policy, kl_state = tiny_model_dir, None
    start_digits = digits_per_answer(anchor)
    trace = []
    for run in range(1, 4):
        out = tmp_path / f"run{run}"
        job = PolicyJob(policy, anchor, out, prompts=prompts(64, seed=10 + run),
                        pairs=sampler.pairs(96, prompt_seed=20 + run), rated=sampler.rated(96, prompt_seed=30 + run),
                        reward_model_dir=rm_dir, kl_state=kl_state)
        result = algorithms.train_policy(name, job, CONFIGS[name])
        meta = json.loads((out / META_FILE).read_text())
        assert meta["algorithm"] == name and meta["reference"] == str(anchor) and meta["parent"] == str(policy)
        assert check_finite(out) == []
        kl = kl_between(out, anchor, prompts(16, seed=11), MAX_NEW, n_samples=4)
        digits = digits_per_answer(out)
        trace.append({"run": run, "digits": round(digits, 2), "kl_to_anchor": round(kl, 2),
                      "beta": result.get("kl_coef"), "seconds": result["seconds"]})
        assert math.isfinite(kl) and kl <= KL_BUDGET, trace
        if algorithms.get(name).uses_kl_controller:
            # β resumes from the parent's controller and moves within the run
            assert result["kl_coef_start"] == (kl_state["value"] if kl_state else CONFIGS[name].init_kl_coef)
            assert result["kl_coef"] != result["kl_coef_start"], trace
            kl_state = result["kl_state"]
        policy = out
    print(f"\n{name}: digits/answer anchor {start_digits:.2f} -> {trace}")
    assert trace[-1]["digits"] > start_digits + 1.0, trace      # the true preference moved
    assert trace[-1]["digits"] >= trace[0]["digits"] - 0.25, trace   # and held across rounds
