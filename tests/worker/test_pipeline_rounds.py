"""The pipeline across rounds, in-process against real Redis and the tiny model (no server: the
deploy step's replica wait is cut short). Shows what must hold from round to round:

- every version records its algorithm, config, anchor (v0), KL to anchor and to its parent;
- PPO's critic and reward model are published in their registries, the next round's critic is the
  previous one and its RM warm-starts from the previous RM;
- the KL controller's β is stored with each version and resumed by the next run;
- a failed run loses nothing: its feedback is still new for the next run, and the trigger
  re-fires after the pause.
"""
import json

import pytest
import redis

from common import artifacts, ops
from common.events import FeedbackEvent, StoredAnswer
from common.keys import KEYS
from common.registry import ModelRegistry
from common.settings import Settings
from tests.trainer.synthetic import AnswerSampler
from trainer.modeling import load_tokenizer
from worker.pipeline import run_pipeline
from worker.tasks import maybe_retrain

OPEN_GATE = dict(gate_min_rm_gain=-1e9, gate_max_kl=1e9, kl_budget=1e9, gate_max_pref_drop=1.0,
                 gate_max_degenerate=1000, gate_min_rm_accuracy=-1.0,
                 gate_eval_prompts=3, gate_max_new_tokens=8, deploy_confirm_timeout_s=0.2)


def _feedback(r: redis.Redis, sampler: AnswerSampler, version: str, round_no: int, n: int = 24) -> int:
    """n comparisons (more digits wins) on answers stored as produced by `version`."""
    for i, pair in enumerate(sampler.pairs(n, prompt_seed=100 + round_no)):
        ids = []
        for j, text in enumerate([pair.chosen, pair.rejected]):
            rid = f"r{round_no}-{i}-{j}"
            r.set(KEYS.answer(rid), StoredAnswer(
                response_id=rid, request_id=f"q{round_no}-{i}", model_version=version, kind="chat",
                messages=pair.messages, prompt_key=f"p{round_no}-{i}", text=text).model_dump_json())
            ids.append(rid)
        ev = FeedbackEvent(event_id=f"e{round_no}-{i}", kind="comparison", rater=f"u{i % 6}",
                           target="|".join(ids), response_ids=ids, choice="a")
        r.xadd(KEYS.feedback_stream, ev.to_stream_fields())
    r.hincrby(KEYS.feedback_counts, "total", n)
    return n


@pytest.fixture
def deployment(redis_url, tmp_path, tiny_model_dir):
    reg = ModelRegistry(tmp_path / "data" / "models")
    reg.set_current(reg.publish(tiny_model_dir, {"parent": None}))
    return (redis.Redis.from_url(redis_url, decode_responses=True),
            AnswerSampler(load_tokenizer(tiny_model_dir), seed=3), reg)


def test_ppo_rounds_carry_critic_rm_and_beta_against_a_fixed_anchor(redis_url, tmp_path, deployment):
    r, sampler, reg = deployment
    settings = Settings(redis_url=redis_url, data_dir=tmp_path / "data", algorithm="ppo", torch_threads=2,
                        ppo_overrides=json.dumps({"steps": 2, "batch_size": 4, "mini_batch_size": 2,
                                                  "max_new_tokens": 8, "init_kl_coef": 0.05,
                                                  "show_progress_bar": False}),
                        rm_overrides=json.dumps({"epochs": 1, "batch_size": 8, "show_progress_bar": False}),
                        **OPEN_GATE)
    _feedback(r, sampler, "v0", 1)
    first = run_pipeline(settings, "round-1")
    assert first["state"] == "succeeded", first
    v1 = reg.metadata("v1")
    assert v1["algorithm"] == "ppo" and v1["anchor"] == "v0" and v1["parent"] == "v0"
    assert v1["reward_model"] == "rm0" and v1["critic"] == "critic0"
    assert isinstance(v1["kl_to_anchor"], float) and isinstance(v1["kl_to_parent"], float)
    assert v1["kl_to_anchor"] == pytest.approx(v1["kl_to_parent"])      # parent is the anchor here
    beta1 = v1["kl_state"]["value"]
    assert v1["kl_state"]["kind"] == "adaptive" and beta1 != 0.05         # β moved within the run
    assert v1["metrics"]["policy"]["critic_init"] == str(artifacts.reward_models(settings).path("rm0"))
    # the status hash tells the truth after a deploy (a bool once made this write fail silently)
    status = r.hgetall(KEYS.pipeline_status)
    assert status["state"] == "succeeded" and status["version"] == "v1"

    _feedback(r, sampler, "v1", 2)
    second = run_pipeline(settings, "round-2")
    assert second["state"] == "succeeded", second
    v2 = reg.metadata("v2")
    assert v2["parent"] == "v1" and v2["anchor"] == "v0"                  # reference did not move
    assert v2["metrics"]["policy"]["kl_coef_start"] == pytest.approx(beta1)   # β resumed
    assert v2["kl_state"]["value"] != beta1
    assert v2["metrics"]["policy"]["critic_init"] == str(artifacts.critics(settings).path("critic0"))
    assert v2["critic"] == "critic1" and v2["reward_model"] == "rm1"
    assert artifacts.reward_models(settings).metadata("rm1")["warm_start"] == "rm0"
    assert v2["data"]["new_pairs"] < v2["data"]["pairs"]                  # round 1's pairs are old now
    assert v2["kl_to_anchor"] != pytest.approx(v2["kl_to_parent"])
    # operators see it: `rlhf versions` and /admin/versions read these rows
    rows = {r["version"]: r for r in ops.list_versions(settings)}
    assert rows["v2"]["algorithm"] == "ppo" and rows["v2"]["anchor"] == "v0"
    assert rows["v2"]["kl_to_anchor"] == v2["kl_to_anchor"] and rows["v2"]["critic"] == "critic1"
    assert rows["v2"]["kl_coef"] == v2["kl_state"]["value"] and rows["v2"]["gate_passed"] is True


def test_failed_run_keeps_its_feedback_new_and_the_trigger_refires(redis_url, tmp_path, deployment,
                                                                    monkeypatch):
    r, sampler, reg = deployment
    base = dict(redis_url=redis_url, data_dir=tmp_path / "data", algorithm="dpo", torch_threads=2,
                **OPEN_GATE)
    broken = Settings(**base, algorithm_overrides=json.dumps({"no_such_field": 1}))
    sent = _feedback(r, sampler, "v0", 1)
    with pytest.raises(ValueError, match="no_such_field"):
        run_pipeline(broken, "run-fails")
    assert json.loads(r.lindex(KEYS.pipeline_history, 0))["state"] == "failed"
    assert "run-fails" not in r.smembers(KEYS.consumed_runs)
    assert int(r.get(KEYS.last_snapshot_total) or 0) == 0                  # still counts as new events

    for k, v in {"RLHF_REDIS_URL": redis_url, "RLHF_RETRAIN_MIN_EVENTS": str(sent),
                 "RLHF_RETRAIN_EVERY_MINUTES": "1000", "RLHF_RETRY_AFTER_FAILURE_S": "3600"}.items():
        monkeypatch.setenv(k, v)
    assert maybe_retrain().startswith("waiting after a failed run")       # no hot loop on a bad run
    monkeypatch.setenv("RLHF_RETRY_AFTER_FAILURE_S", "0")
    assert maybe_retrain().startswith("queued run-")                      # then it re-fires

    fixed = Settings(**base, algorithm_overrides=json.dumps({"epochs": 1, "show_progress_bar": False}))
    result = run_pipeline(fixed, "run-recovers")
    assert result["state"] == "succeeded", result
    meta = reg.metadata(result["version"])
    data = meta["data"]
    # the failed run's snapshot was trained on as *new* feedback (not merely replayed)
    assert data["new_pairs"] == data["pairs"] > 0 and meta["algorithm"] == "dpo"
    # dpo trains against no RM; the run's judge RM (gate_train_rm) judged it, never trained it
    assert meta["reward_model"] is None and meta["judge_reward_model"] == "rm0"
    assert meta["metrics"]["gate"]["judges"] == ["rm0"] and meta["metrics"]["gate"]["rm_gain"] is not None
    assert "run-recovers" in r.smembers(KEYS.consumed_runs)
    assert int(r.get(KEYS.last_snapshot_total)) == sent


def test_embedding_rm_rounds_refit_on_all_feedback_and_judge_the_next_round(redis_url, tmp_path, deployment):
    """RMConfig.kind="embedding" through the real pipeline: each RM is published in the registry (its
    folder is no transformer), refits on every pair instead of warm-starting, PPO's critic starts from
    the policy, and the next round's gate is judged by the previous embedding RM."""
    r, sampler, reg = deployment
    settings = Settings(redis_url=redis_url, data_dir=tmp_path / "data", algorithm="ppo", torch_threads=2,
                        ppo_overrides=json.dumps({"steps": 1, "batch_size": 4, "mini_batch_size": 4,
                                                  "max_new_tokens": 8, "show_progress_bar": False}),
                        rm_overrides=json.dumps({"kind": "embedding"}), **OPEN_GATE)
    _feedback(r, sampler, "v0", 1)
    assert run_pipeline(settings, "round-1")["state"] == "succeeded"
    v1 = reg.metadata("v1")
    assert v1["metrics"]["reward_model"]["kind"] == "embedding"
    assert v1["metrics"]["policy"]["critic_init"] == str(reg.path("v0"))
    _feedback(r, sampler, "v1", 2)
    assert run_pipeline(settings, "round-2")["state"] == "succeeded"
    v2 = reg.metadata("v2")
    rms = artifacts.reward_models(settings)
    assert rms.metadata("rm1")["warm_start"] is None                       # refit, not warm-started
    assert v2["data"]["rm_pairs"] == v2["data"]["pairs"] > v2["data"]["new_pairs"]   # on every pair
    assert v2["gate"]["metrics"]["judges"] == ["rm0"]                      # the previous RM judged
    assert (rms.path("rm1") / "embedding_head.json").exists()
    # an operator switches the deployment back to the transformer RM: it starts fresh from the
    # policy (an embedding RM is no transformer to warm-start from)
    _feedback(r, sampler, "v2", 3)
    back = Settings(**{**settings.model_dump(), "rm_overrides": json.dumps({"epochs": 1, "show_progress_bar": False})})
    assert run_pipeline(back, "round-3")["state"] == "succeeded"
    assert rms.metadata("rm2")["warm_start"] is None
    assert reg.metadata("v3")["metrics"]["reward_model"].get("kind") != "embedding"
