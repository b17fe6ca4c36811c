"""Issue 12, trust rules of the server, against real Redis (private redis-server, DB 5).

The app is the real one (create_app: routes, auth, quotas, body cap, feedback script), driven
in-process through httpx's ASGI transport; only the vLLM engine is replaced by a stub that
answers instantly, so no engine starts here (the end-to-end path with a real engine is covered
by tests/serving/test_feedback_api.py on the shared tiny-model server).
"""
from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
import time
from types import SimpleNamespace

import pytest

from common.identity import key_account
from common.keys import KEYS
from common.settings import Settings
from serving import feedback_token
from serving.auth import authenticate, key_pseudonym
from serving.cli import insecure_bind_refusal
from serving.errors import ApiError
from tests.helpers.server import free_port, rlhf_executable

from tests.serving.trust_harness import (  # noqa: F401  (db_url, r, _no_vllm: fixtures)
    KEY, OTHER, TRUSTED, PSEUDO, db_url, r, _no_vllm, settings_for, run, auth, chat, counts)


# --- votes bound to the answer's audience ------------------------------------------------

def test_every_choice_carries_a_token_that_rates_without_an_api_key(db_url, r, tmp_path):
    s = settings_for(db_url, tmp_path)

    async def scenario(c):
        a, b = await chat(c, n=2, user="alice")
        assert a["feedback_token"] and a["feedback_token"] == b["feedback_token"]
        thumb = await c.post("/v1/feedback", json={"response_id": b["response_id"],
                                                   "rating": "up",
                                                   "feedback_token": b["feedback_token"]})
        assert thumb.status_code == 200, thumb.text
        assert thumb.json()["rater"] == PSEUDO("alice")
        cmp_ = await c.post("/v1/comparisons", json={
            "response_ids": [a["response_id"], b["response_id"]], "choice": "a",
            "feedback_token": a["feedback_token"]})
        assert cmp_.status_code == 200 and cmp_.json()["rater"] == PSEUDO("alice")
        # no end user on the answer: the rater is the key that asked, as the token says
        (x,) = await chat(c)
        res = await c.post("/v1/feedback", json={"response_id": x["response_id"],
                                                 "rating": "down",
                                                 "feedback_token": x["feedback_token"]})
        assert res.json()["rater"] == key_pseudonym(KEY, s)
        # streamed (chat and completions) and non-streamed completions carry it too
        async with c.stream("POST", "/v1/chat/completions", headers=auth(KEY), json={
                "messages": [{"role": "user", "content": "hi"}], "n": 2, "stream": True,
                "max_tokens": 3}) as resp:
            chunks = [json.loads(line[6:]) async for line in resp.aiter_lines()
                      if line.startswith("data: {")]
        finished = [ch for chunk in chunks for ch in chunk["choices"] if ch["finish_reason"]]
        assert len(finished) == 2 and all(ch["feedback_token"] for ch in finished)
        assert all(ch.get("feedback_token") for ch in chunks[0]["choices"])  # the role chunk
        comp = await c.post("/v1/completions", headers=auth(KEY),
                            json={"prompt": "once upon", "max_tokens": 3})
        token = comp.json()["choices"][0]["feedback_token"]
        ok = await c.post("/v1/feedback", json={
            "response_id": comp.json()["choices"][0]["response_id"], "rating": "up",
            "feedback_token": token})
        assert ok.status_code == 200
        return finished

    finished = run(s, scenario)
    rid = finished[0]["response_id"]
    assert feedback_token.verify(s, finished[0]["feedback_token"]).covers(rid)
    assert counts(r)["total"] == 4


def _forge(token: str, **claims) -> str:
    v, payload, sig = token.split(".")
    raw = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    raw.update(claims)
    new = base64.urlsafe_b64encode(json.dumps(raw).encode()).rstrip(b"=").decode()
    return f"{v}.{new}.{sig}"


def test_forged_and_expired_tokens_are_401_and_record_nothing(db_url, r, tmp_path):
    s = settings_for(db_url, tmp_path)
    other_deployment = settings_for(db_url, tmp_path, user_hmac_key="another-key")

    async def scenario(c):
        (a,) = await chat(c, user="alice")
        rid, tok = a["response_id"], a["feedback_token"]
        cases = {
            "rater swapped": _forge(tok, u=PSEUDO("mallory")),
            "more answers claimed": _forge(tok, n=8),
            "signature of another key": feedback_token.issue(other_deployment, rid, 1, None,
                                                             PSEUDO("mallory")),
            "garbage": "ft1.abc.def",
            "not even a token": "hello",
            "expired": feedback_token.issue(s, rid, 1, key_pseudonym(KEY, s), PSEUDO("alice"),
                                            now=time.time() - s.feedback_token_ttl_s - 5),
        }
        out = {}
        for name, forged in cases.items():
            res = await c.post("/v1/feedback", json={"response_id": rid, "rating": "down",
                                                     "feedback_token": forged})
            out[name] = (res.status_code, res.json()["error"])
        return out

    n_before = r.xlen(KEYS.feedback_stream)
    out = run(s, scenario)
    for name, (status, err) in out.items():
        assert status == 401, name
        assert "feedback_token" in err["message"], name
    assert out["expired"][1]["code"] == "feedback_token_expired"
    assert "bad signature" in out["rater swapped"][1]["message"]
    assert r.xlen(KEYS.feedback_stream) == n_before == 0


def test_a_key_may_only_rate_answers_it_produced(db_url, r, tmp_path):
    s = settings_for(db_url, tmp_path)

    async def scenario(c):
        (mine,) = await chat(c, key=KEY, user="alice")
        (theirs,) = await chat(c, key=OTHER, user="bob")
        own = await c.post("/v1/feedback", headers=auth(KEY),
                           json={"response_id": mine["response_id"], "rating": "up"})
        other = await c.post("/v1/feedback", headers=auth(KEY),
                             json={"response_id": theirs["response_id"], "rating": "down"})
        # the other key's token does not help a key either
        stolen = await c.post("/v1/feedback", headers=auth(KEY), json={
            "response_id": theirs["response_id"], "rating": "down",
            "feedback_token": theirs["feedback_token"]})
        # nor does a token of one answer cover another answer
        wrong = await c.post("/v1/feedback", json={
            "response_id": theirs["response_id"], "rating": "down",
            "feedback_token": mine["feedback_token"]})
        cmp_ = await c.post("/v1/comparisons", headers=auth(OTHER), json={
            "response_ids": [mine["response_id"], theirs["response_id"]], "choice": "b"})
        return own, other, stolen, wrong, cmp_

    own, other, stolen, wrong, cmp_ = run(s, scenario)
    assert own.status_code == 200 and own.json()["rater"] == PSEUDO("alice")
    for res in (other, stolen, wrong):
        assert res.status_code == 403, res.text
    assert "may only rate answers it produced" in other.json()["error"]["message"]
    assert "another API key" in stolen.json()["error"]["message"]
    assert "does not cover" in wrong.json()["error"]["message"]
    assert cmp_.status_code in (403, 422)  # different prompts or not its answer: refused
    assert r.xlen(KEYS.feedback_stream) == 1


def test_user_field_only_from_trusted_back_ends(db_url, r, tmp_path):
    s = settings_for(db_url, tmp_path)

    async def scenario(c):
        (a,) = await chat(c, key=KEY, user="alice")
        spoof = await c.post("/v1/feedback", headers=auth(KEY), json={
            "response_id": a["response_id"], "rating": "down", "user": "sybil-1"})
        spoof_token = await c.post("/v1/feedback", json={
            "response_id": a["response_id"], "rating": "down", "user": "sybil-2",
            "feedback_token": a["feedback_token"]})
        (t,) = await chat(c, key=TRUSTED)
        trusted = await c.post("/v1/feedback", headers=auth(TRUSTED), json={
            "response_id": t["response_id"], "rating": "up", "user": "carol"})
        batch = await c.post("/v1/feedback/batch", headers=auth(KEY), json={"items": [
            {"response_id": a["response_id"], "rating": "up"},
            {"response_id": a["response_id"], "rating": "up", "user": "sybil-3"}]})
        return spoof, spoof_token, trusted, batch

    spoof, spoof_token, trusted, batch = run(s, scenario)
    for res in (spoof, spoof_token, batch):
        assert res.status_code == 403, res.text
        assert "trusted back-end keys" in res.json()["error"]["message"]
    assert batch.json()["error"]["message"].startswith("items[1]:")
    assert trusted.status_code == 200 and trusted.json()["rater"] == PSEUDO("carol")
    assert r.xlen(KEYS.feedback_stream) == 1  # only the trusted back end's vote


def test_open_api_trusts_every_caller_and_keys_are_checked_when_configured(db_url, tmp_path):
    open_s = settings_for(db_url, tmp_path, api_keys="", trusted_api_keys="")

    async def open_scenario(c):
        (a,) = await chat(c, key=None)
        return await c.post("/v1/feedback", json={"response_id": a["response_id"],
                                                  "rating": "up", "user": "dev"})

    res = run(open_s, open_scenario)
    assert res.status_code == 200 and res.json()["rater"] == PSEUDO("dev")

    async def closed(c):
        (a,) = await chat(c)
        out = [await c.post(path, json=body) for path, body in [
            ("/v1/feedback", {"response_id": a["response_id"], "rating": "up"}),
            ("/v1/feedback", {}),
            ("/v1/comparisons", {"response_ids": ["x", "y"], "choice": "a"}),
            ("/v1/feedback/batch", {"items": [{"response_id": a["response_id"],
                                               "rating": "up"}]})]]
        out.append(await c.post("/v1/feedback", headers=auth("wrong"),
                                json={"response_id": a["response_id"], "rating": "up",
                                      "feedback_token": a["feedback_token"]}))
        out.append(await c.post("/v1/chat/completions", headers={"Authorization": "Basic x"},
                                json={"messages": [{"role": "user", "content": "x"}]}))
        return out

    for res in run(settings_for(db_url, tmp_path), closed):
        assert res.status_code == 401, res.text
        assert "API key" in res.json()["error"]["message"]


# --- the retrain trigger counts distinct votes; batches are all-or-nothing -----------------

def test_repeated_votes_count_once_toward_the_trigger(db_url, r, tmp_path):
    s = settings_for(db_url, tmp_path)

    async def scenario(c):
        (a,) = await chat(c, user="alice")
        body = {"response_id": a["response_id"], "feedback_token": a["feedback_token"]}
        for rating in ["up", "down", "up", "up"]:
            res = await c.post("/v1/feedback", json=body | {"rating": rating})
            assert res.status_code == 200

    run(s, scenario)
    c = counts(r)
    assert c["events"] == 4 and c["total"] == 1  # the trigger reads "total"
    assert r.xlen(KEYS.feedback_stream) == 4       # every event is still kept


def test_batch_with_an_idempotency_conflict_writes_nothing(db_url, r, tmp_path):
    s = settings_for(db_url, tmp_path)

    async def scenario(c):
        choices = await chat(c, n=3, user="alice")
        ids = [ch["response_id"] for ch in choices]
        first = await c.post("/v1/feedback/batch", headers=auth(KEY), json={"items": [
            {"response_id": ids[0], "rating": "up", "idempotency_key": "k1"}]})
        assert first.status_code == 200
        before = (r.xlen(KEYS.feedback_stream), counts(r), sorted(r.keys(KEYS.vote("*", "*"))))
        conflict = await c.post("/v1/feedback/batch", headers=auth(KEY), json={"items": [
            {"response_id": ids[1], "rating": "up", "idempotency_key": "k2"},
            {"response_id": ids[2], "rating": "down"},
            {"response_id": ids[0], "rating": "down", "idempotency_key": "k1"}]})
        in_batch = await c.post("/v1/feedback/batch", headers=auth(KEY), json={"items": [
            {"response_id": ids[1], "rating": "up", "idempotency_key": "k3"},
            {"response_id": ids[2], "rating": "up", "idempotency_key": "k3"}]})
        after = (r.xlen(KEYS.feedback_stream), counts(r), sorted(r.keys(KEYS.vote("*", "*"))))
        k2_taken = r.exists(KEYS.idempotency(f"{key_pseudonym(KEY, s)}:k2"))
        retry = await c.post("/v1/feedback/batch", headers=auth(KEY), json={"items": [
            {"response_id": ids[1], "rating": "up", "idempotency_key": "k2"},
            {"response_id": ids[0], "rating": "up", "idempotency_key": "k1"}]})
        return before, conflict, in_batch, after, k2_taken, retry

    before, conflict, in_batch, after, k2_taken, retry = run(s, scenario)
    assert conflict.status_code == 422 and in_batch.status_code == 422
    assert conflict.json()["error"]["message"].startswith("items[2]:")
    assert "nothing of this batch was recorded" in conflict.json()["error"]["message"]
    assert in_batch.json()["error"]["message"].startswith("items[1]:")
    assert after == before                                  # nothing written, nothing counted
    assert not k2_taken
    assert retry.status_code == 200                          # the key k2 is still free
    assert [d["duplicate"] for d in retry.json()["data"]] == [False, True]


# --- secure defaults -----------------------------------------------------------------------

def test_serve_refuses_a_non_loopback_address_without_api_keys(tmp_path, redis_server):
    s_open, s_keys = Settings(data_dir=tmp_path), Settings(data_dir=tmp_path, api_keys="k")
    assert insecure_bind_refusal("0.0.0.0", s_open, insecure=False)
    assert insecure_bind_refusal("::", s_open, insecure=False)
    assert insecure_bind_refusal("example.org", s_open, insecure=False)
    assert insecure_bind_refusal("0.0.0.0", s_open, insecure=True) is None
    assert insecure_bind_refusal("0.0.0.0", s_keys, insecure=False) is None
    for host in ("127.0.0.1", "localhost", "::1", "127.0.0.2"):
        assert insecure_bind_refusal(host, s_open, insecure=False) is None
    env = dict(os.environ, RLHF_DATA_DIR=str(tmp_path), RLHF_REDIS_URL=redis_server.url)
    for k in ("RLHF_API_KEYS", "RLHF_TRUSTED_API_KEYS"):
        env.pop(k, None)
    proc = subprocess.run([rlhf_executable(), "serve", "--host", "0.0.0.0", "--port",
                           str(free_port())], env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2
    assert "refusing to listen on '0.0.0.0' without API keys" in proc.stderr
    assert "--insecure" in proc.stderr


def test_admin_token_is_compared_as_bytes_and_bearer_is_case_insensitive(db_url, tmp_path):
    s = settings_for(db_url, tmp_path)

    async def scenario(c):
        out = {}
        for name, value in [("non-ascii", "Bearer admin-sécret".encode("latin-1")),
                            ("wrong", b"Bearer nope"), ("lower", b"bearer admin-secret"),
                            ("upper", b"BEARER admin-secret"), ("none", None)]:
            headers = [(b"authorization", value)] if value else []
            res = await c.get("/admin/versions", headers=headers)
            out[name] = res.status_code
        return out

    assert run(s, scenario) == {"non-ascii": 401, "wrong": 401, "lower": 200, "upper": 200,
                                "none": 401}


def test_hmac_key_file_is_private_and_key_pseudonyms_use_it(tmp_path):
    s = Settings(data_dir=tmp_path)
    key = s._hmac_key_bytes
    path = tmp_path / "user_hmac.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and len(key) == 64
    old = tmp_path / "old"
    old.mkdir()
    (old / "user_hmac.key").write_text("k" * 64)
    (old / "user_hmac.key").chmod(0o644)          # written by an older version
    assert Settings(data_dir=old)._hmac_key_bytes == b"k" * 64
    assert stat.S_IMODE((old / "user_hmac.key").stat().st_mode) == 0o600
    a, b = Settings(user_hmac_key="one"), Settings(user_hmac_key="two")
    assert key_pseudonym("same-key", a) != key_pseudonym("same-key", b)
    assert key_pseudonym("same-key", a) == key_pseudonym("same-key", Settings(user_hmac_key="one"))
    assert "same-key" not in key_pseudonym("same-key", a)


def test_authenticate_maps_each_configured_key_to_its_caller_and_refuses_the_rest():
    """The per-configuration key table (serving/auth.py `_callers`) gives each key the caller
    the pseudonym functions define, follows a changed configuration, and 401s anything else."""
    def call(settings, header):
        headers = {} if header is None else {"authorization": header}
        return authenticate(SimpleNamespace(app=SimpleNamespace(state=SimpleNamespace(settings=settings)),
                                            headers=headers), key_optional=True)

    s = Settings(user_hmac_key="h", api_keys="plain,shared:acme", trusted_api_keys="backend:acme-be,shared:acme")
    for key, trusted in [("plain", False), ("shared", True), ("backend", True)]:
        c = call(s, f"Bearer {key}")
        assert (c.principal, c.account, c.trusted, c.has_key, c.open) == (
            key_pseudonym(key, s), key_account(key, s), trusted, True, False)
    assert call(s, "Bearer shared").account != call(s, "Bearer shared").principal  # a named account
    assert call(s, None) is None and call(s, "Basic plain") is None  # no bearer: token-only caller
    for wrong in ["Bearer plain2", "Bearer plai", "Bearer sécret", "Bearer PLAIN"]:
        with pytest.raises(ApiError) as exc:
            call(s, wrong)
        assert exc.value.status == 401 and exc.value.code == "invalid_api_key"
    # another configuration (new keys, another HMAC key) is another table
    s2 = Settings(user_hmac_key="h2", api_keys="plain2")
    assert call(s2, "Bearer plain2").principal == key_pseudonym("plain2", s2) != key_pseudonym("plain2", s)
    with pytest.raises(ApiError):
        call(s2, "Bearer plain")
    opened = call(Settings(user_hmac_key="h"), "Bearer anything")
    assert opened.open and opened.trusted and opened.principal == key_pseudonym("anything", s)


def test_comparison_across_two_requests_needs_both_tokens_of_one_user(db_url, r, tmp_path):
    s = settings_for(db_url, tmp_path)

    async def scenario(c):
        (a,) = await chat(c, user="alice", content="same prompt")
        (b,) = await chat(c, user="alice", content="same prompt")
        (m,) = await chat(c, user="mallory", content="same prompt")
        pair = {"response_ids": [a["response_id"], b["response_id"]], "choice": "a"}
        one = await c.post("/v1/comparisons", json=pair | {"feedback_token": a["feedback_token"]})
        both = await c.post("/v1/comparisons", json=pair | {
            "feedback_token": [a["feedback_token"], b["feedback_token"]]})
        mixed = await c.post("/v1/comparisons", json={
            "response_ids": [a["response_id"], m["response_id"]], "choice": "b",
            "feedback_token": [a["feedback_token"], m["feedback_token"]]})
        three = await c.post("/v1/comparisons", json=pair | {"feedback_token": ["x", "y", "z"]})
        return one, both, mixed, three

    one, both, mixed, three = run(s, scenario)
    assert one.status_code == 403 and "does not cover" in one.json()["error"]["message"]
    assert both.status_code == 200 and both.json()["rater"] == PSEUDO("alice")
    assert mixed.status_code == 403 and "different callers or users" in mixed.text
    assert three.status_code == 422
    assert r.xlen(KEYS.feedback_stream) == 1
