"""Shared by the in-process trust and quota tests (test_trust.py, test_quotas.py): the real app
(create_app: routes, auth, quotas, body cap, feedback script) against real Redis (private
redis-server, DB 5), driven through httpx's ASGI transport; only the vLLM engine is replaced by a
stub that answers instantly, so no engine starts (the end-to-end path with a real engine is
covered by tests/serving/test_feedback_api.py and test_vllm_parity.py on the tiny model)."""
from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager
from types import SimpleNamespace

import httpx
import pytest
import redis as sync_redis

from common.keys import KEYS
from common.settings import Settings
from serving import openai_routes
from serving.answer_store import AnswerStore
from serving.app import create_app, redis_client
from serving.feedback_store import FeedbackStore

KEY, OTHER, TRUSTED = "key-a", "key-b", "key-backend"
HMAC = "trust-test-hmac"
PSEUDO = Settings(user_hmac_key=HMAC).pseudonymise
NO_LIMITS = dict(rate_limit_generation_key="", rate_limit_generation_tokens_key="",
                 rate_limit_generation_user="", rate_limit_feedback_key="",
                 rate_limit_feedback_rater="")


class StubEngine:
    """What the routes use of serving.engine.Engine, answering at once."""

    version = "v0"
    max_model_len = 256
    llm = SimpleNamespace(errored=False)

    def count_tokens(self, text: str) -> list[int]:
        return list(range(len(text.split())))

    def apply_chat_template(self, messages) -> str:
        return " ".join(m["content"] for m in messages)

    @asynccontextmanager
    async def serving(self):
        yield self.version

    async def generate(self, prompt_ids, params, request_id):
        n = params["n"]
        outs = [SimpleNamespace(index=i, text=f"answer {i}", token_ids=[1, 2],
                                finish_reason="stop") for i in range(n)]
        yield SimpleNamespace(outputs=outs)


def emptied_db_url(redis_server, db: int) -> str:
    """URL of DB `db` of the session's private redis-server, emptied with FLUSHDB (FLUSHALL would
    also wipe DB 2, where the shared `rlhf serve` of tests/serving lives all session)."""
    url = redis_server.url.rsplit("/", 1)[0] + f"/{db}"
    sync_redis.Redis.from_url(url).flushdb()
    return url


@pytest.fixture
def db_url(redis_server):
    return emptied_db_url(redis_server, 5)


@pytest.fixture
def r(db_url):
    return sync_redis.Redis.from_url(db_url, decode_responses=True)


@pytest.fixture(autouse=True)
def _no_vllm(monkeypatch):
    # sampling_params imports vllm; the stub engine reads the Prepared sampling dict instead
    monkeypatch.setattr(openai_routes, "sampling_params",
                        lambda prep, stream: prep.sampling | {"max_tokens": prep.max_tokens})


def settings_for(db_url, tmp_path, **over) -> Settings:
    base = dict(redis_url=db_url, data_dir=tmp_path, api_keys=f"{KEY},{OTHER}",
                trusted_api_keys=TRUSTED, user_hmac_key=HMAC, admin_token="admin-secret")
    return Settings(**(base | NO_LIMITS | over))


def run(settings: Settings, scenario):
    """Run `scenario(client)` against the app in one event loop (real Redis, stub engine)."""
    async def main():
        app = create_app(settings)
        redis = redis_client(settings.redis_url)
        app.state.engine = StubEngine()
        app.state.answers = AnswerStore(redis, settings.retention_days, app.state.metrics)
        app.state.feedback = FeedbackStore(redis, settings.idempotency_ttl_s,
                                           settings.retention_days)
        transport = httpx.ASGITransport(app=app)
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
                return await scenario(c)
        finally:
            await redis.aclose()
    return asyncio.run(main())


def auth(key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"} if key else {}


async def chat(c, key=KEY, n=1, user=None, content="hello there", **extra):
    body = {"model": "policy", "messages": [{"role": "user", "content": content}],
            "max_tokens": 4, "n": n} | extra
    if user:
        body["user"] = user
    res = await c.post("/v1/chat/completions", json=body, headers=auth(key))
    assert res.status_code == 200, res.text
    return res.json()["choices"]


def counts(r) -> dict[str, int]:
    return {k: int(v) for k, v in r.hgetall(KEYS.feedback_counts).items()}
