"""Issue 12, quotas and request caps of the server (split from test_trust.py; same harness):
rate limits answer 429 with Retry-After, per key, per rater and per account; request size caps
are clear 4xx; the default max_tokens is the setting capped by the context."""
from __future__ import annotations

import asyncio
import json

import pytest

from common.identity import account_pseudonym
from common.keys import KEYS
from serving.auth import key_pseudonym
from serving.errors import ApiError
from serving.quotas import PipelinedScript, Quotas

from tests.serving.trust_harness import (  # noqa: F401  (db_url, r, _no_vllm: fixtures)
    KEY, OTHER, db_url, r, _no_vllm, settings_for, run, auth, chat)


# --- quotas --------------------------------------------------------------------------------

def test_rate_limits_answer_429_with_retry_after(db_url, r, tmp_path):
    s = settings_for(db_url, tmp_path, rate_limit_feedback_rater="2/minute",
                     rate_limit_generation_key="3/minute",
                     rate_limit_generation_tokens_key="1000/minute",
                     rate_limit_generation_user="2/minute")

    async def scenario(c):
        choices = await chat(c, n=3, user="alice")
        votes = [await c.post("/v1/feedback", json={"response_id": ch["response_id"],
                                                    "rating": "up",
                                                    "feedback_token": ch["feedback_token"]})
                 for ch in choices]
        await chat(c, user="alice")
        user_limited = await c.post("/v1/chat/completions", headers=auth(KEY), json={
            "messages": [{"role": "user", "content": "x"}], "max_tokens": 2, "user": "alice"})
        await chat(c, user="bob")
        key_limited = await c.post("/v1/chat/completions", headers=auth(KEY), json={
            "messages": [{"role": "user", "content": "x"}], "max_tokens": 2, "user": "dan"})
        other_key = await c.post("/v1/chat/completions", headers=auth(OTHER), json={
            "messages": [{"role": "user", "content": "x"}], "max_tokens": 2})
        huge = await c.post("/v1/chat/completions", headers=auth(OTHER), json={
            "messages": [{"role": "user", "content": "x"}], "max_tokens": 200, "n": 8})
        return votes, user_limited, key_limited, other_key, huge

    votes, user_limited, key_limited, other_key, huge = run(s, scenario)
    assert [v.status_code for v in votes] == [200, 200, 429]
    for res in (votes[2], user_limited, key_limited):
        assert res.status_code == 429, res.text
        assert 1 <= int(res.headers["Retry-After"]) <= 60
        assert res.json()["error"]["code"] == "rate_limit_exceeded"
    assert "per rater" in votes[2].json()["error"]["message"]
    assert "per end user" in user_limited.json()["error"]["message"]
    assert "per API key" in key_limited.json()["error"]["message"]
    assert other_key.status_code == 200  # limits are per key
    assert huge.status_code == 400 and huge.json()["error"]["code"] == "request_exceeds_quota"
    assert r.xlen(KEYS.feedback_stream) == 2
    assert any(k.startswith(KEYS.rate_limits) for k in r.keys("*"))


@pytest.mark.parametrize("group_commit", [1, 128])
def test_concurrent_quota_hits_are_exact_whether_pipelined_or_not(db_url, r, tmp_path, group_commit):
    """60 concurrent hits on a 25/minute rater quota: exactly 25 pass, with the hits sent one
    round trip each (group commit 1) or pipelined (serving/quotas.PipelinedScript); pipelined,
    they share round trips, and a lost script cache (SCRIPT FLUSH) is reloaded, not a 5xx."""
    s = settings_for(db_url, tmp_path, rate_limit_feedback_rater="25/minute",
                     redis_group_commit=group_commit)

    async def main():
        quotas = Quotas(s)
        check = [("rate_limit_feedback_rater", "alice", 1, "feedback events per rater")]

        async def hit():
            try:
                await quotas.charge(check)
                return 200
            except ApiError as exc:
                return exc.status
        first = await asyncio.gather(*[hit() for _ in range(60)])
        r.script_flush()
        check[0] = ("rate_limit_feedback_rater", "bob", 1, "feedback events per rater")
        second = await asyncio.gather(*[hit() for _ in range(30)])
        script = quotas.storage.bridge.lua_acquire_sliding_window
        return first, second, script
    first, second, script = asyncio.run(main())
    assert sorted(first) == [200] * 25 + [429] * 35
    assert sorted(second) == [200] * 25 + [429] * 5
    if group_commit == 1:
        assert not isinstance(script, PipelinedScript)
    else:
        assert isinstance(script, PipelinedScript)
        assert script._commit.batches <= 10, script._commit.batches   # shared: far fewer round trips than 90 hits


def test_generation_tokens_quota(db_url, tmp_path):
    s = settings_for(db_url, tmp_path, rate_limit_generation_tokens_key="100/minute")

    async def scenario(c):
        body = {"messages": [{"role": "user", "content": "one two"}], "max_tokens": 30, "n": 2}
        return [await c.post("/v1/chat/completions", headers=auth(KEY), json=body)
                for _ in range(2)]

    first, second = run(s, scenario)
    assert first.status_code == 200 and second.status_code == 429  # 62 + 62 > 100
    assert "tokens per API key" in second.json()["error"]["message"]


def test_a_key_of_an_account_authenticates_alone_and_shares_the_accounts_quotas(db_url, r,
                                                                             tmp_path):
    """`key:account` entries: the bearer is the key part; the answer records the key (its
    owner) and the account (the worker's training-data cap); the account's keys share the
    per-key quotas, feedback included."""
    s = settings_for(db_url, tmp_path, api_keys=f"{KEY}:acme,{OTHER}:acme,key-c",
                     rate_limit_generation_key="2/minute", rate_limit_feedback_key="1/minute")
    msg = {"messages": [{"role": "user", "content": "x"}], "max_tokens": 2}

    async def scenario(c):
        whole = await c.post("/v1/chat/completions", headers=auth(f"{KEY}:acme"), json=msg)
        (a,) = await chat(c, key=KEY)
        (b,) = await chat(c, key=OTHER)
        third = await c.post("/v1/chat/completions", headers=auth(OTHER), json=msg)
        own = await c.post("/v1/chat/completions", headers=auth("key-c"), json=msg)
        votes = [await c.post("/v1/feedback", json={"response_id": x["response_id"],
                                                    "rating": "up",
                                                    "feedback_token": x["feedback_token"]})
                 for x in (a, b)]
        return whole, a, third, own, votes

    whole, a, third, own, votes = run(s, scenario)
    assert whole.status_code == 401, whole.text
    stored = json.loads(r.get(KEYS.answer(a["response_id"])))
    assert stored["principal"] == key_pseudonym(KEY, s)
    assert stored["account"] == account_pseudonym("acme", s)
    assert third.status_code == 429, third.text            # KEY and OTHER: 2 requests of acme
    assert "shared by the keys of one account" in third.json()["error"]["message"]
    assert own.status_code == 200                          # key-c is its own account
    assert [v.status_code for v in votes] == [200, 429]    # one feedback event for acme


def test_caps_on_request_size_are_clear_4xx(db_url, tmp_path):
    s = settings_for(db_url, tmp_path, max_request_bytes=4000, max_messages=3,
                     max_message_chars=50, max_stop_sequences=2, max_stop_chars=5,
                     default_max_tokens=7, max_tokens_limit=20, max_n=2)

    def msgs(k, text="hi"):
        return [{"role": "user", "content": text}] * k

    cases = [
        ({"messages": msgs(4)}, 400, "RLHF_MAX_MESSAGES"),
        ({"messages": msgs(1, "x" * 51)}, 400, "RLHF_MAX_MESSAGE_CHARS"),
        ({"messages": msgs(1), "stop": ["a", "b", "c"]}, 400, "RLHF_MAX_STOP_SEQUENCES"),
        ({"messages": msgs(1), "stop": "toolong"}, 400, "RLHF_MAX_STOP_CHARS"),
        ({"messages": msgs(1), "max_tokens": 21}, 400, "RLHF_MAX_TOKENS_LIMIT"),
        ({"messages": msgs(1), "max_completion_tokens": 21}, 400, "RLHF_MAX_TOKENS_LIMIT"),
        ({"messages": msgs(1), "n": 3}, 400, "RLHF_MAX_N"),
        ({"messages": msgs(1, "y" * 45), "stop": "z" * 5000}, 413, "RLHF_MAX_REQUEST_BYTES"),
    ]

    async def scenario(c):
        out = [await c.post("/v1/chat/completions", headers=auth(KEY), json=body)
               for body, _, _ in cases]
        out.append(await c.post("/v1/completions", headers=auth(KEY),
                                json={"prompt": "p" * 51}))
        ok = await c.post("/v1/chat/completions", headers=auth(KEY), json={"messages": msgs(3)})

        async def chunked():  # no Content-Length: counted while read
            for _ in range(5):
                yield b" " * 1000
        big_feedback = await c.post("/v1/feedback", headers=auth(KEY) | {
            "content-type": "application/json"}, content=chunked())
        return out, ok, big_feedback

    out, ok, big_feedback = run(s, scenario)
    for (body, status, needle), res in zip(cases, out):
        assert res.status_code == status, (body, res.text)
        assert needle in res.json()["error"]["message"], (body, res.text)
    assert out[-1].status_code == 400 and "RLHF_MAX_MESSAGE_CHARS" in out[-1].text
    assert ok.status_code == 200
    assert ok.json()["usage"]["completion_tokens"] == 2  # stub
    assert big_feedback.status_code == 413, big_feedback.text
    assert "RLHF_MAX_REQUEST_BYTES" in big_feedback.json()["error"]["message"]


def test_default_max_tokens_is_the_setting_capped_by_context(db_url, r, tmp_path):
    s = settings_for(db_url, tmp_path, default_max_tokens=7)

    async def scenario(c):
        return await chat(c, max_tokens=None)

    (a,) = run(s, scenario)
    stored = json.loads(r.get(KEYS.answer(a["response_id"])))
    assert stored["sampling"]["max_tokens"] == 7
    assert stored["principal"] == key_pseudonym(KEY, s)
