"""Issue 12, "Sybil test": one attacker with one API key (and, separately, with 50 keys of one
account) votes for a behaviour the honest users dislike. Measured on the tiny model with the synthetic preference of
tests/trainer/synthetic.py (honest users prefer the answer with more digits; the attacker always
picks the one with fewer).

The records are snapshot records as worker/snapshot.py writes them (event + the stored answers,
each with the `principal` = pseudonym of the key that asked for it, its `account` = pseudonym of
that key's account, and the end user's pseudonym). The attacker's keys mint one end-user
pseudonym per fake user (`user` on its chat requests) and rate with the feedback_tokens they got
back, so the per-rater cap never binds: only the per-account cap (worker/datasets.py,
RLHF_MAX_KEY_SHARE; accounts from `key:account` in RLHF_API_KEYS, common/identity.py) can.

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

from common.identity import account_pseudonym, key_pseudonym
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


def _answer(rid, item, text, principal, user, account=None):
    # the server records the key's account, its own pseudonym for a key without one
    return {"response_id": rid, "request_id": rid, "model_version": "v0", "kind": "chat",
            "messages": item.messages, "prompt_key": "pk_" + rid, "text": text,
            "finish_reason": "stop", "principal": principal, "account": account or principal,
            "user": user}


def _vote(i, sampler, item, principal, account, rater, honest, created):
    low = sampler.rng.randint(0, 2)
    high = low + sampler.rng.randint(1, 3)
    more, fewer = _answer(f"r{i}", item, sampler.answer(high), principal, rater, account), \
        _answer(f"r{i}_1", item, sampler.answer(low), principal, rater, account)
    a, b = (more, fewer) if sampler.rng.random() < 0.5 else (fewer, more)
    picked = more if honest else fewer
    event = {"event_id": f"fb_{i}", "kind": "comparison", "rater": rater,
             "target": f"{a['response_id']}|{b['response_id']}",
             "response_ids": [a["response_id"], b["response_id"]],
             "choice": "a" if picked is a else "b", "created": created}
    return {"stream_id": f"{i}-0", "event": event, "snapshot_run": "run1",
            "answers": {a["response_id"]: a, b["response_id"]: b}}


def make_records(sampler, attacker_keys: int, honest_keys: list[str] | None = None,
                 attack_votes: int = ATTACK_VOTES, attacker_account: str | None = None,
                 attacker_key=lambda k: f"k_attacker{k}"):
    """Honest users vote through `honest_keys` (default: the trusted back end), the attacker
    through `attacker_keys` keys (principals `attacker_key(k)`), each minting its own pseudonyms
    (5 votes per pseudonym); `attacker_account`: the one account all of them belong to (None:
    each key is its own account)."""
    honest_keys = honest_keys or [BACKEND]
    rng = random.Random(5)
    items = prompts(HONEST_USERS * VOTES_PER_USER + attack_votes, seed=40)
    who = [(honest_keys[u % len(honest_keys)], None, f"u_honest{u}", True)
           for u in range(HONEST_USERS) for _ in range(VOTES_PER_USER)]
    per_key = attack_votes // attacker_keys
    for k in range(attacker_keys):
        for j in range(per_key):
            who.append((attacker_key(k), attacker_account, f"u_sybil{k}_{j // 5}", False))
    times = rng.sample(range(len(who) * 10), len(who))    # interleaved in time
    return [_vote(i, sampler, item, key, account, rater, honest, float(t))
            for i, ((key, account, rater, honest), item, t) in enumerate(zip(who, items, times))]


def attacker_figures(records, sets) -> dict:
    used_attack = sum(1 for r in records if not r["event"]["rater"].startswith("u_honest"))
    pairs_attack = sum(digit_count(p.chosen) < digit_count(p.rejected) for p in sets.pairs)
    return {"votes_in": len(records), "attacker_votes_in": used_attack,
            "attacker_share_in": round(used_attack / len(records), 3),
            "pairs_used": len(sets.pairs), "attacker_pairs_used": pairs_attack,
            "attacker_share_used": round(pairs_attack / max(1, len(sets.pairs)), 3),
            "dropped_key_cap": sets.stats["dropped_key_cap"],
            "dropped_rater_cap": sets.stats["dropped_rater_cap"]}


def figure(name: str, fig: dict) -> None:
    FIGURES[name] = fig
    print(f"\nSYBIL {name}: {json.dumps(fig)}")   # pytest -s shows it


def build(records, share=SHARE, exempt=(BACKEND,), accounts=None):
    return build_training_sets(records, {"v0"}, heldout_fraction=0.0, max_key_share=share,
                               exempt_accounts=frozenset(exempt), accounts=accounts)


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return load_tokenizer(tiny_model_dir)


@pytest.fixture
def sampler(tokenizer):
    # a fresh draw per test: a test's data (and the model test's figures) must not depend on
    # which tests ran before it in the module (a shared sampler made -k and full runs differ)
    return AnswerSampler(tokenizer, seed=0)


# --- the data: cheap, no model ---------------------------------------------------------------

def test_one_key_many_pseudonyms_is_capped_at_the_key_share(sampler):
    records = make_records(sampler, attacker_keys=1)
    sets = build(records)
    fig = attacker_figures(records, sets)
    figure("one_key_capped", fig)
    assert fig["attacker_share_in"] > 0.6
    assert fig["dropped_rater_cap"] == 0          # 80 pseudonyms: the rater cap never binds
    assert fig["attacker_share_used"] <= SHARE, fig
    assert sets.stats["keys_capped"] == 1 and fig["dropped_key_cap"] > 0
    # every honest vote is kept (its key is the trusted back end, exempt)
    assert fig["pairs_used"] - fig["attacker_pairs_used"] == HONEST_USERS * VOTES_PER_USER
    uncapped = build(records, share=None)
    figure("one_key_uncapped", attacker_figures(records, uncapped))
    assert FIGURES["one_key_uncapped"]["attacker_share_used"] > 0.6


def test_one_key_against_many_ordinary_honest_keys(sampler):
    """Multi-tenant: honest votes come through 8 ordinary (capped) keys, none exempt."""
    records = make_records(sampler, attacker_keys=1, honest_keys=[f"k_tenant{i}" for i in range(8)])
    sets = build(records, exempt=())
    fig = attacker_figures(records, sets)
    figure("one_key_vs_8_tenants", fig)
    assert fig["attacker_share_used"] <= SHARE, fig
    assert fig["pairs_used"] - fig["attacker_pairs_used"] == HONEST_USERS * VOTES_PER_USER


def test_fifty_keys_of_one_account_are_capped_as_one_actor(sampler):
    """The operator issued the attacker's 50 keys to one customer (`key:account`): the server
    records that account on every answer, and the cap binds on the account as on one key."""
    records = make_records(sampler, attacker_keys=50, attacker_account="a_attacker")
    sets = build(records)
    fig = attacker_figures(records, sets)
    figure("fifty_keys_one_account", fig)
    assert fig["attacker_share_in"] > 0.6 and fig["dropped_rater_cap"] == 0
    assert fig["attacker_share_used"] <= SHARE, fig
    assert sets.stats["keys_capped"] == 1 and sets.stats["capped_keys_seen"] == 1
    assert fig["pairs_used"] - fig["attacker_pairs_used"] == HONEST_USERS * VOTES_PER_USER


def test_accounts_from_settings_group_records_without_an_account(sampler, tmp_path):
    """Answers stored before accounts existed (no `account` field), or before the operator put
    the 50 keys into one account: the worker maps each principal through today's RLHF_API_KEYS
    (key_cap_args), so the whole history is capped per account."""
    s = Settings(data_dir=tmp_path, user_hmac_key="h", trusted_api_keys="backend-key",
                 api_keys=",".join(f"atk{k}:mallory" for k in range(50)) + ",tenant-key")
    records = make_records(sampler, attacker_keys=50,
                           honest_keys=[key_pseudonym("backend-key", s)],
                           attacker_key=lambda k: key_pseudonym(f"atk{k}", s))
    for rec in records:
        for a in rec["answers"].values():
            del a["account"]
    args = key_cap_args(s)
    sets = build_training_sets(records, {"v0"}, heldout_fraction=0.0, **args)
    fig = attacker_figures(records, sets)
    figure("fifty_keys_one_account_old_records", fig)
    assert fig["attacker_share_used"] <= SHARE, fig
    assert sets.stats["capped_keys_seen"] == 1
    assert fig["pairs_used"] - fig["attacker_pairs_used"] == HONEST_USERS * VOTES_PER_USER
    # the same records under settings without accounts: 50 actors again
    plain = Settings(data_dir=tmp_path, user_hmac_key="h", trusted_api_keys="backend-key",
                     api_keys=",".join(f"atk{k}" for k in range(50)))
    uncapped = build_training_sets(records, {"v0"}, heldout_fraction=0.0, **key_cap_args(plain))
    assert uncapped.stats["dropped_key_cap"] == 0


def test_fifty_keys_in_fifty_accounts_are_fifty_actors(sampler):
    """The remaining trust boundary: accounts are what the operator says they are, so 50 keys
    issued as 50 accounts (e.g. 50 sign-ups by one actor) are 50 tenants. Each stays under the
    share, so the cap does not bind; the attacker's share is whatever volume the 50 accounts'
    quotas allow. Measured, not hidden (README, "Sybil resistance")."""
    records = make_records(sampler, attacker_keys=50)
    sets = build(records)
    fig = attacker_figures(records, sets)
    figure("fifty_keys_fifty_accounts", fig)
    assert fig["dropped_key_cap"] == 0
    assert fig["attacker_share_used"] == pytest.approx(fig["attacker_share_in"], abs=0.01)


def test_a_vote_is_charged_to_todays_account_of_its_key():
    from worker.datasets import vote_account
    rec = lambda *answers: {"answers": {f"r{i}": a for i, a in enumerate(answers)}}  # noqa: E731
    today = {"k_1": "a_acme"}
    # a configured key: today's account, whatever was recorded (the operator regrouped it)
    assert vote_account(rec({"principal": "k_1", "account": "k_1"}), today) == "a_acme"
    # a key no longer configured: the account recorded when it asked; else the key itself
    assert vote_account(rec({"principal": "k_2", "account": "a_old"}), today) == "a_old"
    assert vote_account(rec({"principal": "k_2"}), today) == "k_2"
    # no key (open API): exempt
    assert vote_account(rec({"principal": None}, None), today) is None
    # a comparison across two accounts: the first in sorted order, as for keys before
    assert vote_account(rec({"principal": "k_2"}, {"principal": "k_1"}), today) == "a_acme"


def test_settings_wiring_exempts_trusted_keys_and_single_ordinary_key(tmp_path):
    s = Settings(data_dir=tmp_path, user_hmac_key="h", api_keys="a,b", trusted_api_keys="t")
    args = key_cap_args(s)
    assert args["max_key_share"] == 0.25 and args["exempt_accounts"] == {key_pseudonym("t", s)}
    named = Settings(data_dir=tmp_path, user_hmac_key="h", api_keys="a:acme",
                     trusted_api_keys="t1:shop,t2:shop")
    assert key_cap_args(named)["exempt_accounts"] == {account_pseudonym("shop", named)}
    assert key_cap_args(named)["accounts"][key_pseudonym("a", named)] == \
        account_pseudonym("acme", named)
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
    """Also the 50-key attacker: with its keys in one account (capped), and in 50 accounts
    (the boundary: measured, not asserted). The DPO direction on capped data depends on the
    draw: this one (fresh sampler, seed 0) gives 0.656 -> 2.125 digits (one key) and 1.891 (50
    keys, one account); another draw of the same setting gave 0.625 for one key, a slight move
    toward the attacker, with the RM still at 0.78 (README, "Sybil resistance")."""
    from tests.trainer.learning_runs import digits_per_answer
    torch.manual_seed(0)
    heldout = sampler.pairs(100, prompt_seed=2)          # the honest preference, unseen prompts
    capped = build(make_records(sampler, attacker_keys=1))
    uncapped = build(make_records(sampler, attacker_keys=1), share=None)
    one_account = build(make_records(sampler, attacker_keys=50, attacker_account="a_attacker"))
    fifty = build(make_records(sampler, attacker_keys=50))
    honest_only = [p for p in capped.pairs if digit_count(p.chosen) > digit_count(p.rejected)]
    rm = {name: _rm_accuracy(tiny_model_dir, tmp_path / f"rm_{name}", pairs, heldout)
          for name, pairs in [("honest_only", honest_only), ("one_key_capped", capped.pairs),
                              ("one_key_uncapped", uncapped.pairs),
                              ("fifty_keys_one_account", one_account.pairs),
                              ("fifty_keys_fifty_accounts", fifty.pairs)]}
    start = round(digits_per_answer(tiny_model_dir), 3)
    digits = {name: _dpo_digits(tiny_model_dir, tmp_path / f"dpo_{name}", pairs)
              for name, pairs in [("one_key_capped", capped.pairs),
                                  ("fifty_keys_one_account", one_account.pairs),
                                  ("fifty_keys_fifty_accounts", fifty.pairs)]}
    FIGURES["rm_heldout_accuracy_on_honest_preference"] = rm
    FIGURES["dpo_digits_per_answer"] = {"start": start} | digits
    print("\nSYBIL FIGURES " + json.dumps(FIGURES, indent=1))
    # the capped RM keeps the honest preference (well above chance, no reversal) ...
    assert rm["one_key_capped"] > 0.6, rm
    # ... which the same attack without the cap reverses
    assert rm["one_key_uncapped"] < rm["one_key_capped"], rm
    # the policy trained on the capped data moves *toward the honest users* (more digits), not away
    assert digits["one_key_capped"] >= start, digits
    # 50 keys of one account: the same as one key
    assert rm["fifty_keys_one_account"] > 0.6, rm
    assert digits["fifty_keys_one_account"] >= start, digits
