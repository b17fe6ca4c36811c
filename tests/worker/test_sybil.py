"""Issue 12, "Sybil test": one attacker with one API key (and, separately, with 50 keys) votes for a
behaviour the honest users dislike. Measured on the tiny model with the synthetic preference of
tests/trainer/synthetic.py (honest users prefer the answer with more digits; the attacker always
picks the one with fewer).

The records are snapshot records as worker/snapshot.py writes them (event + the stored answers,
each with the `principal` = pseudonym of the key that asked for it, and the end user's pseudonym).
The attacker's key mints one end-user pseudonym per fake user (`user` on its chat requests) and
rates with the feedback_tokens it got back, so the per-rater cap never binds: only the per-key cap
(worker/datasets.py, RLHF_MAX_KEY_SHARE) can.

Figures (printed; `pytest -s` shows them): the attacker's share of the votes and of the RM's
training pairs, the RM's held-out accuracy on the *honest* preference (below 0.5 = it moved toward
the attacker), and digits per sampled answer of the policy DPO (the deployment's default
algorithm) trains from the same data, against the tiny model it started from.
"""
from __future__ import annotations

import json
import random

import pytest
import torch

from common.settings import Settings
from tests.trainer.synthetic import AnswerSampler, digit_count, prompts
from trainer.config import RMConfig
from trainer.modeling import load_tokenizer
from worker.datasets import build_training_sets, key_cap_args

SHARE = 0.25
BACKEND = "k_backend"        # the product's trusted back end (RLHF_TRUSTED_API_KEYS): exempt
HONEST_USERS, VOTES_PER_USER = 25, 8          # 200 honest votes
ATTACK_VOTES = 400                             # 2/3 of all votes before any cap
FIGURES: dict = {}


def _answer(rid, item, text, principal, user):
    return {"response_id": rid, "request_id": rid, "model_version": "v0", "kind": "chat",
            "messages": item.messages, "prompt_key": "pk_" + rid, "text": text,
            "finish_reason": "stop", "principal": principal, "user": user}


def _vote(i, sampler, item, principal, rater, honest, created):
    low = sampler.rng.randint(0, 2)
    high = low + sampler.rng.randint(1, 3)
    more, fewer = _answer(f"r{i}", item, sampler.answer(high), principal, rater), \
        _answer(f"r{i}_1", item, sampler.answer(low), principal, rater)
    a, b = (more, fewer) if sampler.rng.random() < 0.5 else (fewer, more)
    picked = more if honest else fewer
    event = {"event_id": f"fb_{i}", "kind": "comparison", "rater": rater,
             "target": f"{a['response_id']}|{b['response_id']}",
             "response_ids": [a["response_id"], b["response_id"]],
             "choice": "a" if picked is a else "b", "created": created}
    return {"stream_id": f"{i}-0", "event": event, "snapshot_run": "run1",
            "answers": {a["response_id"]: a, b["response_id"]: b}}


def make_records(sampler, attacker_keys: int, honest_keys: list[str] | None = None,
                 attack_votes: int = ATTACK_VOTES, pseudonyms_per_key: int | None = None):
    """Honest users vote through `honest_keys` (default: the trusted back end), the attacker
    through `attacker_keys` keys, each minting its own pseudonyms (5 votes per pseudonym)."""
    honest_keys = honest_keys or [BACKEND]
    rng = random.Random(5)
    items = prompts(HONEST_USERS * VOTES_PER_USER + attack_votes, seed=40)
    who = [(honest_keys[u % len(honest_keys)], f"u_honest{u}", True)
           for u in range(HONEST_USERS) for _ in range(VOTES_PER_USER)]
    per_key = attack_votes // attacker_keys
    for k in range(attacker_keys):
        for j in range(per_key):
            who.append((f"k_attacker{k}", f"u_sybil{k}_{j // 5}", False))
    times = rng.sample(range(len(who) * 10), len(who))    # interleaved in time
    return [_vote(i, sampler, item, key, rater, honest, float(t))
            for i, ((key, rater, honest), item, t) in enumerate(zip(who, items, times))]


def attacker_figures(records, sets) -> dict:
    used_attack = sum(1 for r in records if not r["event"]["rater"].startswith("u_honest"))
    pairs_attack = sum(digit_count(p.chosen) < digit_count(p.rejected) for p in sets.pairs)
    return {"votes_in": len(records), "attacker_votes_in": used_attack,
            "attacker_share_in": round(used_attack / len(records), 3),
            "pairs_used": len(sets.pairs), "attacker_pairs_used": pairs_attack,
            "attacker_share_used": round(pairs_attack / max(1, len(sets.pairs)), 3),
            "dropped_key_cap": sets.stats["dropped_key_cap"],
            "dropped_rater_cap": sets.stats["dropped_rater_cap"]}


def build(records, share=SHARE, exempt=(BACKEND,)):
    return build_training_sets(records, {"v0"}, heldout_fraction=0.0,
                               max_key_share=share, exempt_keys=frozenset(exempt))


@pytest.fixture(scope="module")
def sampler(tiny_model_dir):
    return AnswerSampler(load_tokenizer(tiny_model_dir), seed=0)


# --- the data: cheap, no model ---------------------------------------------------------------

def test_one_key_many_pseudonyms_is_capped_at_the_key_share(sampler):
    records = make_records(sampler, attacker_keys=1)
    sets = build(records)
    fig = attacker_figures(records, sets)
    FIGURES["one_key_capped"] = fig
    assert fig["attacker_share_in"] > 0.6
    assert fig["dropped_rater_cap"] == 0          # 80 pseudonyms: the rater cap never binds
    assert fig["attacker_share_used"] <= SHARE, fig
    assert sets.stats["keys_capped"] == 1 and fig["dropped_key_cap"] > 0
    # every honest vote is kept (its key is the trusted back end, exempt)
    assert fig["pairs_used"] - fig["attacker_pairs_used"] == HONEST_USERS * VOTES_PER_USER
    uncapped = build(records, share=None)
    FIGURES["one_key_uncapped"] = attacker_figures(records, uncapped)
    assert FIGURES["one_key_uncapped"]["attacker_share_used"] > 0.6


def test_one_key_against_many_ordinary_honest_keys(sampler):
    """Multi-tenant: honest votes come through 8 ordinary (capped) keys, none exempt."""
    records = make_records(sampler, attacker_keys=1, honest_keys=[f"k_tenant{i}" for i in range(8)])
    sets = build(records, exempt=())
    fig = attacker_figures(records, sets)
    FIGURES["one_key_vs_8_tenants"] = fig
    assert fig["attacker_share_used"] <= SHARE, fig
    assert fig["pairs_used"] - fig["attacker_pairs_used"] == HONEST_USERS * VOTES_PER_USER


def test_fifty_keys_are_fifty_actors(sampler):
    """The trust boundary: keys are issued by the operator, so 50 keys held by one actor look like
    50 tenants. Each stays under the share, so the cap does not bind; the attacker's share is
    whatever volume its keys' quotas allow. Measured, not hidden."""
    records = make_records(sampler, attacker_keys=50)
    sets = build(records)
    fig = attacker_figures(records, sets)
    FIGURES["fifty_keys"] = fig
    assert fig["dropped_key_cap"] == 0
    assert fig["attacker_share_used"] == pytest.approx(fig["attacker_share_in"], abs=0.01)


def test_settings_wiring_exempts_trusted_keys_and_single_ordinary_key(tmp_path):
    from common.identity import key_pseudonym
    s = Settings(data_dir=tmp_path, user_hmac_key="h", api_keys="a,b", trusted_api_keys="t")
    args = key_cap_args(s)
    assert args["max_key_share"] == 0.25 and args["exempt_keys"] == {key_pseudonym("t", s)}
    assert key_cap_args(Settings(data_dir=tmp_path, max_key_share=1.0))["max_key_share"] is None
    # a deployment whose votes all come through one ordinary key (e.g. the demo) loses nothing
    sampler_free = [{"stream_id": f"{i}-0", "snapshot_run": "r",
                     "event": {"event_id": f"e{i}", "kind": "thumb", "rater": f"u{i}",
                               "target": f"r{i}", "response_id": f"r{i}", "rating": "up",
                               "created": float(i)},
                     "answers": {f"r{i}": _answer(f"r{i}", prompts(1, i)[0], "x", "k_only", f"u{i}")}}
                    for i in range(100)]
    sets = build_training_sets(sampler_free, {"v0"}, heldout_fraction=0.0, **args)
    assert sets.stats["votes_used"] == 100 and sets.stats["dropped_key_cap"] == 0


# --- the models: RM and policy trained on each data set (tiny model, ~minutes on 2 cores) ------

def _rm_accuracy(tiny_model_dir, out, pairs, heldout) -> float:
    from trainer.reward_model import train_reward_model
    metrics = train_reward_model(
        pairs, [], tiny_model_dir, out,
        RMConfig(lr=5e-4, epochs=3, batch_size=16, show_progress_bar=False, seed=0, device="cpu",
                 length_debias=False, num_threads=1),
        eval_pairs=heldout)
    return round(metrics["heldout_accuracy"], 3)


def _dpo_digits(tiny_model_dir, out, pairs) -> float:
    from tests.trainer.learning_runs import CONFIGS, digits_per_answer
    from dataclasses import replace
    from trainer import algorithms
    from trainer.policy_base import PolicyJob
    job = PolicyJob(tiny_model_dir, tiny_model_dir, out, prompts=prompts(64, seed=10), pairs=pairs)
    algorithms.train_policy("dpo", job, replace(CONFIGS["dpo"], num_threads=1, max_pairs=None))
    return round(digits_per_answer(out), 3)


@pytest.mark.slow
def test_reward_model_and_policy_do_not_move_toward_one_key_attacker(sampler, tiny_model_dir, tmp_path):
    from tests.trainer.learning_runs import digits_per_answer
    torch.manual_seed(0)
    heldout = sampler.pairs(100, prompt_seed=2)          # the honest preference, unseen prompts
    capped = build(make_records(sampler, attacker_keys=1))
    uncapped = build(make_records(sampler, attacker_keys=1), share=None)
    fifty = build(make_records(sampler, attacker_keys=50))
    honest_only = [p for p in capped.pairs if digit_count(p.chosen) > digit_count(p.rejected)]
    rm = {name: _rm_accuracy(tiny_model_dir, tmp_path / f"rm_{name}", pairs, heldout)
          for name, pairs in [("honest_only", honest_only), ("one_key_capped", capped.pairs),
                              ("one_key_uncapped", uncapped.pairs), ("fifty_keys", fifty.pairs)]}
    start = round(digits_per_answer(tiny_model_dir), 3)
    digits = {name: _dpo_digits(tiny_model_dir, tmp_path / f"dpo_{name}", pairs)
              for name, pairs in [("one_key_capped", capped.pairs), ("fifty_keys", fifty.pairs)]}
    FIGURES["rm_heldout_accuracy_on_honest_preference"] = rm
    FIGURES["dpo_digits_per_answer"] = {"start": start} | digits
    print("\nSYBIL FIGURES " + json.dumps(FIGURES, indent=1))
    # the capped RM keeps the honest preference (well above chance, no reversal) ...
    assert rm["one_key_capped"] > 0.6, rm
    # ... which the same attack without the cap reverses
    assert rm["one_key_uncapped"] < rm["one_key_capped"], rm
    # the policy trained on the capped data moves *toward the honest users* (more digits), not away
    assert digits["one_key_capped"] >= start, digits
