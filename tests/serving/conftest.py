"""One real server (``rlhf serve`` subprocess, tiny model, private Redis, API keys on) shared by
the serving tests of the whole session: an engine start costs ~25-30 s on 2 cores."""
from __future__ import annotations

import os

import pytest
import redis

from tests.helpers.server import running_server

API_KEY = "test-key-1"
OTHER_KEY = "test-key-2"


def serving_redis_url(redis_server) -> str:
    """DB 2 of the private Redis: the shared server lives all session and heartbeats as a replica,
    so it must not appear in DB 0, which other modules flush and fill with their own deployments."""
    return redis_server.url.rsplit("/", 1)[0] + "/2"


@pytest.fixture(scope="session")
def serving_env(redis_server, tmp_path_factory) -> dict[str, str]:
    data = tmp_path_factory.mktemp("serving-data")
    return dict(os.environ, RLHF_REDIS_URL=serving_redis_url(redis_server), RLHF_DATA_DIR=str(data),
                RLHF_API_KEYS=f"{API_KEY},{OTHER_KEY}", RLHF_USER_HMAC_KEY="test-hmac",
                # API_KEY is a trusted back end (may name the rater with `user`); OTHER_KEY is not
                RLHF_TRUSTED_API_KEYS=API_KEY,
                RLHF_MAX_MODEL_LEN="256", RLHF_MAX_NUM_SEQS="16")


@pytest.fixture(scope="session")
def server(serving_env, tiny_model_dir, tmp_path_factory):
    with running_server(serving_env, model_dir=tiny_model_dir,
                        log_dir=tmp_path_factory.mktemp("serve-logs")) as srv:
        yield srv


@pytest.fixture
def r(redis_server) -> redis.Redis:
    """Client on the private Redis (not flushed: the shared server keeps its state)."""
    return redis.Redis.from_url(serving_redis_url(redis_server), decode_responses=True)


@pytest.fixture
def client(server):
    from openai import OpenAI
    return OpenAI(base_url=server.v1, api_key=API_KEY, max_retries=0, timeout=60)
