"""End-to-end learning on the tiny random Llama: RM learns a synthetic preference, PPO follows it.

The preference (more digits = better, see synthetic.py) is only ever shown to the RM as pairs and
thumbs; PPO sees nothing but the RM. The test checks the RM on unseen pairs, then that PPO raises
both the RM score *and the ground-truth digit count* of sampled answers on unseen prompts, with the
KL to the reference measured independently (fresh samples, evaluate.kl_between). Nothing is
hard-coded: a broken loss, sign, mask or GAE makes one of these fail.
"""
import json
import math
import time

import pytest

from tests.trainer.synthetic import digit_count, prompts
from trainer.config import PPOConfig
from trainer.evaluate import check_finite, generate_answers, kl_between, mean_rm_score
from trainer.modeling import load_tokenizer
from trainer.policy_base import PolicyJob
from trainer.ppo import run_ppo
from trainer.reward_model import RewardModel

MAX_NEW = 16


def test_reward_model_learns_preference(trained_rm):
    out, metrics, heldout, calls = trained_rm
    assert metrics["heldout_accuracy"] >= 0.90, metrics
    assert metrics["n_pairs"] == 400 and metrics["n_rated"] == 60
    assert calls and calls[0][0] == "rm" and calls[-1][0] == "rm_done"
    # the saved folder scores like the trained model: reload and recompute accuracy
    rm = RewardModel.load(out)
    rc = rm.score([p.messages for p in heldout], [p.chosen for p in heldout])
    rr = rm.score([p.messages for p in heldout], [p.rejected for p in heldout])
    assert sum(c > r for c, r in zip(rc, rr)) / len(heldout) == pytest.approx(metrics["heldout_accuracy"])
    norm = rm.normalised([heldout[0].messages], [heldout[0].chosen])[0]
    assert norm == pytest.approx((rc[0] - metrics["reward_mean"]) / metrics["reward_std"], rel=1e-4)


def test_ppo_raises_reward_with_bounded_kl(trained_rm, tiny_model_dir, tmp_path):
    rm_dir, rm_metrics, _, _ = trained_rm
    train_prompts = prompts(64, seed=10)
    eval_prompts = [p for p in prompts(16, seed=11) for _ in range(4)]  # unseen; 4 samples each

    def measure(policy_dir):
        answers = generate_answers(policy_dir, eval_prompts, MAX_NEW, greedy=False, seed=123)
        return mean_rm_score(rm_dir, eval_prompts, answers), sum(map(digit_count, answers)) / len(answers)

    score_before, digits_before = measure(tiny_model_dir)
    config = PPOConfig(steps=20, batch_size=16, mini_batch_size=8, ppo_epochs=2, lr=1e-3,
                       max_new_tokens=MAX_NEW, init_kl_coef=0.05, kl_target=4.0, kl_horizon=100,
                       seed=0, show_progress_bar=False)
    calls = []
    started = time.time()
    out = tmp_path / "policy"
    job = PolicyJob(tiny_model_dir, tiny_model_dir, out, prompts=train_prompts, reward_model_dir=rm_dir)
    result = run_ppo(job, config, progress=lambda *a: calls.append(a), eval_prompts=prompts(4, seed=12))
    ppo_seconds = time.time() - started
    score_after, digits_after = measure(out)
    kl = kl_between(out, tiny_model_dir, prompts(16, seed=11), MAX_NEW, n_samples=4)
    print(f"\nRM score {score_before:.2f} -> {score_after:.2f} (reward std {rm_metrics['reward_std']:.2f}), "
          f"digits/answer {digits_before:.2f} -> {digits_after:.2f}, KL {kl:.2f}, PPO {ppo_seconds:.1f}s")

    assert score_after > score_before + 0.5 * rm_metrics["reward_std"]
    assert digits_after > digits_before + 1.0           # the true preference moved, not just the RM
    assert 0.0 < kl < 20.0                              # moved away from the reference, but bounded

    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(steps) == 20 and [c[1] for c in calls if c[0] == "ppo"] == list(range(1, 21))
    for key in ("reward_raw", "reward_normalised", "kl", "entropy", "clip_frac", "approx_kl",
                "value_loss", "response_length", "kl_coef", "critic_grad_norm"):
        assert all(math.isfinite(s[key]) for s in steps), key
    # adaptive controller wired in: β rises after a step whose KL was above target, falls otherwise
    for before, after in zip(steps, steps[1:]):
        assert (after["kl_coef"] > before["kl_coef"]) == (before["kl"] > config.kl_target), (before, after)
    assert steps[0]["kl_coef"] == config.init_kl_coef
    assert result["steps"] == 20 and "eval_reward_end" in result
    meta = json.loads((out / "train_meta.json").read_text())
    assert meta["parent"] == str(tiny_model_dir) and meta["config"]["lr"] == 1e-3
    assert meta["algorithm"] == "ppo" and meta["reference"] == str(tiny_model_dir)
    assert meta["final"]["kl_state"] == {"kind": "adaptive", "value": result["kl_coef"], "target": 4.0,
                                         "horizon": 100}
    # the critic started from the RM and is saved beside the policy for the next run
    assert result["critic_init"] == str(rm_dir) and (out / "critic" / "critic.json").exists()
    ev = [s["explained_variance"] for s in steps if math.isfinite(s["explained_variance"])]
    assert ev and max(ev[len(ev) // 2:]) > 0.0, ev    # the critic explains part of the return later on

    # a servable folder: finite safetensors, same architecture, no value head, same chat template
    assert check_finite(out) == []
    assert json.loads((out / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]
    from safetensors import safe_open
    with safe_open(str(out / "model.safetensors"), framework="pt") as f:
        assert not any("value" in k for k in f.keys())
    assert (out / "generation_config.json").exists()
    assert load_tokenizer(out).chat_template == load_tokenizer(tiny_model_dir).chat_template
