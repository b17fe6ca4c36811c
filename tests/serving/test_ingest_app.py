"""`rlhf ingest` (issue 13): the feedback routes in their own processes, without any engine.

Answers are written into a private Redis (DB 7) by AnswerStore.save itself, exactly as
`rlhf serve` stores them, so the stored format cannot drift from what the ingest app reads. The
app is the real one (create_ingest_app, its lifespan run in-process through httpx's ASGI
transport), and one test runs the real `rlhf ingest --workers 2` subprocess.
"""
from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys

import httpx
import pytest

from common.events import FeedbackEvent
from common.identity import key_account, key_pseudonym
from common.keys import KEYS
from common.settings import Settings
from serving import feedback_token
from serving.answer_store import AnswerStore, ServedAnswer
from serving.app_setup import redis_client
from serving.ingest_app import create_ingest_app
from serving.metrics import Metrics
from demo.stack import group_pids
from tests.helpers.server import REPO, free_port, running_ingest
from tests.serving.trust_harness import emptied_db_url, r  # noqa: F401  (r: a fixture)

KEY, OTHER, TRUSTED = "ingest-key-a", "ingest-key-b", "ingest-backend"
HMAC = "ingest-test-hmac"


@pytest.fixture
def db_url(redis_server):
    return emptied_db_url(redis_server, 7)   # a DB of its own (trust_harness uses 5)


def settings_for(db_url, tmp_path, **over) -> Settings:
    base = dict(redis_url=db_url, data_dir=tmp_path, api_keys=f"{KEY},{OTHER}",
                trusted_api_keys=TRUSTED, user_hmac_key=HMAC, rate_limit_feedback_key="",
                rate_limit_feedback_rater="")
    return Settings(**(base | over))


def store_answers(s: Settings, key: str | None, request_id: str, n: int = 1,
                  prompt_key: str = "pk1", user: str | None = None) -> tuple[list[str], str]:
    """Store the `n` choices of one request as `rlhf serve` does; (response ids, their
    feedback_token)."""
    ids = [request_id] + [f"{request_id}_{i}" for i in range(1, n)]
    principal = key_pseudonym(key, s) if key else None
    answers = [ServedAnswer(response_id=rid, request_id=request_id, model_version="v0",
                            kind="chat", messages=[{"role": "user", "content": "hi"}],
                            prompt_key=prompt_key, text=f"answer {rid}", user=user,
                            principal=principal, account=key_account(key, s) if key else None)
               for rid in ids]

    async def save():
        redis = redis_client(s.redis_url)
        try:
            assert await AnswerStore(redis, s.retention_days, Metrics()).save(answers)
        finally:
            await redis.aclose()
    asyncio.run(save())
    return ids, feedback_token.issue(s, request_id, n, principal, user)


def run(s: Settings, scenario):
    """`scenario(client)` against the ingest app, its own lifespan run, in one event loop."""
    async def main():
        app = create_ingest_app(s)
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
                return await scenario(c)
    return asyncio.run(main())


def auth(key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"} if key else {}


def stream(r) -> list[FeedbackEvent]:
    return [FeedbackEvent.from_stream_fields(f) for _, f in r.xrange(KEYS.feedback_stream)]


def test_a_thumb_with_an_api_key_is_recorded_once(db_url, r, tmp_path):
    s = settings_for(db_url, tmp_path)
    (rid,), _ = store_answers(s, KEY, "resp_a1")

    async def scenario(c):
        body = {"response_id": rid, "rating": "up"}
        headers = auth(KEY) | {"Idempotency-Key": "click-1"}
        first = await c.post("/v1/feedback", json=body, headers=headers)
        retry = await c.post("/v1/feedback", json=body, headers=headers)
        return first, retry

    first, retry = run(s, scenario)
    assert first.status_code == 200, first.text
    assert first.json()["duplicate"] is False and retry.json()["duplicate"] is True
    assert retry.json()["event_id"] == first.json()["event_id"]
    (ev,) = stream(r)
    assert (ev.kind, ev.response_id, ev.rating, ev.rater) == ("thumb", rid, "up",
                                                              key_pseudonym(KEY, s))
    assert r.hgetall(KEYS.feedback_counts) == {"up": "1", "events": "1", "total": "1"}
    assert r.xinfo_groups(KEYS.feedback_stream)[0]["name"] == "trainer"


def test_forged_token_and_other_keys_answer_are_refused_as_in_the_main_app(db_url, r,
                                                                          tmp_path):
    s = settings_for(db_url, tmp_path)
    (rid,), token = store_answers(s, KEY, "resp_b1", user=s.pseudonymise("alice"))
    forged = feedback_token.issue(settings_for(db_url, tmp_path, user_hmac_key="other"),
                                  rid, 1, None, s.pseudonymise("mallory"))

    async def scenario(c):
        out = {}
        for name, body, key in [
                ("forged token", {"feedback_token": forged}, None),
                ("garbage token", {"feedback_token": "ft1.abc.def"}, None),
                ("no key, no token", {}, None),
                ("wrong key", {}, "not-a-key"),
                ("another key's answer", {}, OTHER),
                ("user from an untrusted key", {"user": "bob"}, KEY)]:
            res = await c.post("/v1/feedback", headers=auth(key),
                               json={"response_id": rid, "rating": "down"} | body)
            out[name] = (res.status_code, res.json()["error"]["code"])
        ok = await c.post("/v1/feedback", json={"response_id": rid, "rating": "up",
                                                "feedback_token": token})
        out["valid token"] = (ok.status_code, ok.json()["rater"])
        return out

    out = run(s, scenario)
    assert out == {"forged token": (401, "invalid_feedback_token"),
                   "garbage token": (401, "invalid_feedback_token"),
                   "no key, no token": (401, "missing_api_key"),
                   "wrong key": (401, "invalid_api_key"),
                   "another key's answer": (403, "not_your_answer"),
                   "user from an untrusted key": (403, "user_not_allowed"),
                   "valid token": (200, s.pseudonymise("alice"))}
    assert [ev.rating for ev in stream(r)] == ["up"]  # only the valid vote reached the stream


def test_comparison_and_unknown_id(db_url, r, tmp_path):
    s = settings_for(db_url, tmp_path)
    (a, b), token = store_answers(s, KEY, "resp_c1", n=2)
    (x,), _ = store_answers(s, KEY, "resp_c2", prompt_key="another prompt")

    async def scenario(c):
        ok = await c.post("/v1/comparisons", json={"response_ids": [a, b], "choice": "b",
                                                   "feedback_token": token})
        other_prompt = await c.post("/v1/comparisons", headers=auth(KEY),
                                    json={"response_ids": [a, x], "choice": "a"})
        unknown = await c.post("/v1/feedback", headers=auth(KEY),
                               json={"response_id": "resp_never", "rating": "up"})
        return ok, other_prompt, unknown

    ok, other_prompt, unknown = run(s, scenario)
    assert ok.status_code == 200, ok.text
    assert ok.json()["target"] == f"{a}|{b}" and ok.json()["kind"] == "comparison"
    assert other_prompt.json()["error"]["code"] == "different_prompts"
    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == "response_not_found"
    (ev,) = stream(r)
    assert ev.response_ids == [a, b] and ev.choice == "b"


def test_an_answer_still_being_flushed_is_503_with_retry_after_not_404(db_url, r, tmp_path):
    # `rlhf serve` writes the answers it buffered during a Redis outage with this flag set
    # (serving/answer_store.py): a miss then means "not written yet", not "unknown"
    s = settings_for(db_url, tmp_path)
    r.set(KEYS.answers_flushing, "1", ex=10)

    async def scenario(c):
        return await c.post("/v1/feedback", headers=auth(KEY),
                            json={"response_id": "resp_buffered", "rating": "up"})

    res = run(s, scenario)
    assert res.status_code == 503 and res.headers["Retry-After"] == "2"
    assert res.json()["error"]["code"] == "answer_not_written_yet"


def test_flushing_buffered_answers_sets_the_flag(db_url, r):
    async def scenario():
        store = AnswerStore(redis_client(db_url), retention_days=1, metrics=Metrics())
        store._pending["resp_f1"] = ServedAnswer(
            response_id="resp_f1", request_id="resp_f1", model_version="v0", kind="completion",
            prompt="p", prompt_key="k", text="t")
        assert not await store.being_flushed()
        assert await store.flush_pending() == 1
        flushing = await store.being_flushed()
        await store.redis.aclose()
        return flushing

    assert asyncio.run(scenario()) is True
    assert 0 < r.ttl(KEYS.answers_flushing) <= 10 and r.exists(KEYS.answer("resp_f1"))


def test_a_batch_is_all_or_nothing(db_url, r, tmp_path):
    s = settings_for(db_url, tmp_path)
    (mine, mine2), _ = store_answers(s, KEY, "resp_d1", n=2)
    (theirs,), _ = store_answers(s, OTHER, "resp_d2")

    async def scenario(c):
        bad = await c.post("/v1/feedback/batch", headers=auth(KEY), json={"items": [
            {"response_id": mine, "rating": "up"}, {"response_id": theirs, "rating": "up"}]})
        missing = await c.post("/v1/feedback/batch", headers=auth(KEY), json={"items": [
            {"response_id": mine, "rating": "up"}, {"response_id": "resp_gone", "rating": "up"}]})
        before = r.xlen(KEYS.feedback_stream) if r.exists(KEYS.feedback_stream) else 0
        good = await c.post("/v1/feedback/batch", headers=auth(KEY), json={"items": [
            {"response_id": mine, "rating": "up"}, {"response_id": mine2, "rating": "down"}]})
        return bad, missing, before, good

    bad, missing, before, good = run(s, scenario)
    assert bad.status_code == 403 and bad.json()["error"]["param"] == "items.1.response_id"
    assert missing.status_code == 404 and before == 0
    assert good.status_code == 200, good.text
    assert [(ev.response_id, ev.rating) for ev in stream(r)] == [(mine, "up"),
                                                                 (mine2, "down")]


def test_health_metrics_body_cap_cors_and_widget_routes(db_url, r, tmp_path):
    s = settings_for(db_url, tmp_path, max_request_bytes=2000,
                     ui_cors_origins="https://shop.example")
    (rid,), token = store_answers(s, KEY, "resp_e1", user=s.pseudonymise("carol"))

    async def scenario(c):
        health = await c.get("/health")
        big = await c.post("/v1/feedback", headers=auth(KEY), content=b"x" * 3000)
        pre = await c.options("/v1/feedback", headers={
            "Origin": "https://shop.example", "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type,idempotency-key"})
        vote = await c.post("/v1/feedback", headers={"Origin": "https://shop.example"},
                            json={"response_id": rid, "rating": "up", "feedback_token": token})
        state = await c.post("/ui/api/vote-state", json={"feedback_token": token,
                                                          "targets": [rid]})
        script = await c.get("/ui/feedback.js")
        pages = [(await c.get(p)).status_code for p in ("/ui", "/ui/admin", "/v1/models",
                                                         "/admin/status")]
        metrics = await c.get("/metrics")
        return health, big, pre, vote, state, script, pages, metrics

    health, big, pre, vote, state, script, pages, metrics = run(s, scenario)
    assert health.status_code == 200
    assert health.json()["status"] == "ok" and health.json()["role"] == "ingest"
    assert big.status_code == 413 and big.json()["error"]["code"] == "request_too_large"
    assert pre.status_code == 200
    assert pre.headers["access-control-allow-origin"] == "https://shop.example"
    assert vote.status_code == 200
    assert vote.headers["access-control-allow-origin"] == "https://shop.example"
    assert state.json()["votes"][rid]["rating"] == "up"
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
    assert pages == [404, 404, 404, 404]  # no chat page, console, generation or admin here
    assert 'rlhf_feedback_total{kind="thumb"} 1.0' in metrics.text
    assert 'status="413"' in metrics.text  # the cap answers before routing: counted too


def test_ingest_imports_neither_vllm_nor_torch():
    code = ("import sys, serving.ingest_app; "
            "print(sorted(m for m in ('vllm', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                         text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]"


def test_ingest_refuses_a_public_address_without_api_keys(tmp_path):
    env = {k: v for k, v in os.environ.items()
           if k not in ("RLHF_API_KEYS", "RLHF_TRUSTED_API_KEYS")}
    env |= {"RLHF_DATA_DIR": str(tmp_path), "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "cli.main", "ingest", "--host", "0.0.0.0",
                           "--port", "1"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2 and "refusing to listen on '0.0.0.0'" in proc.stderr


def test_rlhf_ingest_with_two_workers_records_feedback_and_leaves_no_orphans(db_url, r,
                                                                            tmp_path):
    s = settings_for(db_url, tmp_path)
    ids, token = store_answers(s, KEY, "resp_g1", n=2)
    env = dict(os.environ, RLHF_REDIS_URL=db_url, RLHF_DATA_DIR=str(tmp_path),
               RLHF_API_KEYS=f"{KEY},{OTHER}", RLHF_TRUSTED_API_KEYS=TRUSTED,
               RLHF_USER_HMAC_KEY=HMAC, RLHF_RATE_LIMIT_FEEDBACK_KEY="",
               RLHF_RATE_LIMIT_FEEDBACK_RATER="")
    with running_ingest(env, workers=2, log_dir=tmp_path) as srv:
        group = group_pids(srv.proc.pid)
        assert len(group) >= 3, srv.log_tail()  # the supervisor and its two workers
        pids, codes = set(), []
        for i in range(8):  # a new connection each: the workers share the listening socket
            with httpx.Client(base_url=srv.url, timeout=10) as c:
                pids.add(c.get("/health").json()["pid"])
                codes.append(c.post("/v1/feedback", headers=auth(KEY) | {
                    "Idempotency-Key": f"k{i % 4}"}, json={"response_id": ids[i % 2],
                                                           "rating": "up"}).status_code)
        with httpx.Client(base_url=srv.url, timeout=10) as c:
            cmp_ = c.post("/v1/comparisons", json={"response_ids": ids, "choice": "tie",
                                                   "feedback_token": token})
            forged_token = token.rsplit(".", 1)[0] + ".forged"  # claims kept, signature not
            forged = c.post("/v1/feedback", json={"response_id": ids[0], "rating": "up",
                                                  "feedback_token": forged_token})
            unknown = c.post("/v1/feedback", headers=auth(KEY),
                             json={"response_id": "resp_nope", "rating": "up"})
    assert codes == [200] * 8 and pids <= set(group)
    assert cmp_.status_code == 200, cmp_.text
    assert forged.status_code == 401 and unknown.status_code == 404
    # 4 distinct idempotency keys: 4 thumbs, each once, then the comparison
    assert [ev.kind for ev in stream(r)] == ["thumb"] * 4 + ["comparison"]
    assert not group_pids(srv.proc.pid), "rlhf ingest left processes behind"  # zombies excepted
    assert srv.proc.returncode in (0, -signal.SIGTERM)  # stopped, not killed


def test_without_redis_health_and_feedback_are_503(tmp_path):
    s = settings_for(f"redis://127.0.0.1:{free_port()}/0", tmp_path)  # nobody listens there

    async def scenario(c):
        return (await c.get("/health"),
                await c.post("/v1/feedback", headers=auth(KEY),
                             json={"response_id": "resp_x", "rating": "up"}))

    health, vote = run(s, scenario)
    assert health.status_code == 503 and health.json()["status"] == "redis_unavailable"
    assert vote.status_code == 503 and vote.headers["Retry-After"] == "2"
    assert vote.json()["error"]["code"] == "store_unavailable"


def test_direct_feedback_path_answers_exactly_as_fastapi_does(db_url, r, tmp_path):
    """serving/direct_routes.py answers the feedback POSTs without FastAPI's per-request
    machinery: every outcome (accepted, duplicate, 401, 403, 404, 405, 422, 413 while reading a
    chunked body, CORS) must be the same as through FastAPI, and /metrics must name the route."""
    outcomes = {}
    for direct in (False, True):
        r.flushdb()
        s = settings_for(db_url, tmp_path, direct_routes=direct, max_request_bytes=2000,
                         ui_cors_origins="https://shop.example")
        (rid, rid2), token = store_answers(s, KEY, "resp_d1", n=2)
        (other,), _ = store_answers(s, OTHER, "resp_d2")

        async def chunks():
            for _ in range(3):
                yield b"x" * 1000

        async def scenario(c):
            thumb = {"response_id": rid, "rating": "up"}
            calls = [
                c.post("/v1/feedback", json=thumb, headers=auth(KEY) | {"Idempotency-Key": "k1"}),
                c.post("/v1/feedback", json=thumb, headers=auth(KEY) | {"Idempotency-Key": "k1"}),
                c.post("/v1/feedback", json=thumb | {"rating": "down"},
                       headers=auth(KEY) | {"Idempotency-Key": "k1"}),
                c.post("/v1/feedback", json=thumb),
                c.post("/v1/feedback", json=thumb, headers=auth("wrong-key")),
                c.post("/v1/feedback", json={"response_id": rid, "rating": "meh"}, headers=auth(KEY)),
                c.post("/v1/feedback", content=b"{not json", headers=auth(KEY)),
                c.post("/v1/feedback", json={"response_id": "nope", "rating": "up"}, headers=auth(KEY)),
                c.post("/v1/feedback", json={"response_id": other, "rating": "up"}, headers=auth(KEY)),
                c.post("/v1/feedback", json=thumb | {"user": "mallory"}, headers=auth(KEY)),
                c.post("/v1/feedback", content=chunks(), headers=auth(KEY)),
                c.get("/v1/feedback", headers=auth(KEY)),
                c.post("/v1/feedback/", json=thumb, headers=auth(KEY)),
                c.post("/v1/feedback/batch", json={"items": [thumb, {"response_id": "nope",
                                                                     "rating": "up"}]},
                       headers=auth(KEY)),
                c.post("/v1/comparisons", json={"response_ids": [rid, rid2], "choice": "a",
                                                "feedback_token": token},
                       headers={"Origin": "https://shop.example"}),
            ]
            answers = [await call for call in calls]
            return answers, (await c.get("/metrics")).text

        answers, metrics = run(s, scenario)
        seen = []
        for res in answers:
            body = res.json() if res.headers.get("content-type", "").startswith("application/json") else res.text
            if isinstance(body, dict):
                body = {k: v for k, v in body.items() if k not in ("event_id", "stream_id", "data")}
            seen.append((res.status_code, body, res.headers.get("access-control-allow-origin"),
                         res.headers.get("www-authenticate"), res.headers.get("allow")))
        outcomes[direct] = seen
        assert [x[0] for x in seen] == [200, 200, 422, 401, 401, 422, 422, 404, 403, 403, 413,
                                        405, 307, 404, 200], seen
        assert 'route="/v1/feedback",status="200"' in metrics
        assert 'route="/v1/comparisons",status="200"' in metrics
        assert len(stream(r)) == 2      # the first thumb and the comparison; nothing else
    assert outcomes[True] == outcomes[False]
