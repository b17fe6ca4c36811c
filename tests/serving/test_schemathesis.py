"""Issue 12: schemathesis (all checks, every phase including the stateful one) against the app's
OpenAPI spec: 0 server errors and 0 conformance failures.

The app is the real one (create_app: every route, auth, quotas, body cap, error handlers, real
Redis: a private redis-server, DB 6); only the vLLM engine and the hot-swapper are stand-ins that
answer at once (the engine stub of tests/serving/test_trust.py), so no engine starts. It is served
by uvicorn in a thread and the `schemathesis run` CLI fuzzes it as it would a deployment (the same
command as /work/shared/NOTES.md). One bearer is both an API key and the admin token, so every
route is reached past authentication; the figures (cases, failures) are printed.

Run alone: `.venv/bin/pytest -q -s tests/serving/test_schemathesis.py`.
"""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import asynccontextmanager
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
import redis as sync_redis

from common.settings import Settings
from demo.stack import free_port

TOKEN = "schemathesis-key"
NO_LIMITS = dict(rate_limit_generation_key="", rate_limit_generation_tokens_key="",
                 rate_limit_generation_user="", rate_limit_feedback_key="",
                 rate_limit_feedback_rater="")


class _Swapper:
    def state(self) -> dict:
        return {"replica_id": "schemathesis", "version": "v0", "status": "serving"}

    async def run(self) -> None:
        return None

    async def withdraw(self) -> None:
        return None


def stub_app(settings: Settings):
    """create_app with the engine replaced by the stub; state is built in the server's loop."""
    from serving import openai_routes
    from serving.answer_store import AnswerStore
    from serving.app import create_app, redis_client
    from serving.feedback_store import FeedbackStore
    from tests.serving.trust_harness import StubEngine

    # sampling_params imports vllm; the stub engine reads the prepared sampling dict instead
    openai_routes.sampling_params = lambda prep, stream: prep.sampling | {"max_tokens": prep.max_tokens}
    app = create_app(settings)

    class Engine(StubEngine):
        # A context that holds any request the documented caps allow (RLHF_MAX_MESSAGES x
        # RLHF_MAX_MESSAGE_CHARS + RLHF_MAX_TOKENS_LIMIT): the model's context length is not
        # in the schema (400 context_length_exceeded depends on the prompt's tokens), and one
        # token per character, as a real tokenizer gives a whitespace prompt tokens too.
        max_model_len = 1 << 30

        def count_tokens(self, text: str) -> list[int]:
            return list(range(len(text)))

    @asynccontextmanager
    async def lifespan(app):
        redis = redis_client(settings.redis_url)
        state = app.state
        state.engine, state.swapper, state.redis = Engine(), _Swapper(), redis
        state.answers = AnswerStore(redis, settings.retention_days, state.metrics)
        state.feedback = FeedbackStore(redis, settings.idempotency_ttl_s, settings.retention_days)
        try:
            yield
        finally:
            await redis.aclose()

    app.router.lifespan_context = lifespan
    return app


class ThreadServer:
    def __init__(self, app):
        import uvicorn
        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port,
                                                    log_level="error", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self):
        self.thread.start()
        for _ in range(200):
            if self.server.started:
                return self
            time.sleep(0.05)
        raise RuntimeError("uvicorn did not start")

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(10)


def schemathesis_exe() -> str:
    exe = Path(sys.executable).parent / "schemathesis"
    return str(exe) if exe.exists() else (shutil.which("schemathesis") or "schemathesis")


# Served only by vLLM's own handlers (serving/vllm_api.py): the stub engine cannot answer them
# (501); `schemathesis run` against `rlhf serve` on the tiny model covers them (NOTES.md).
NEEDS_VLLM = r"^/(v1/responses|tokenize|detokenize)$"
# The routes of the feedback and admin layer (feedback_routes.py, admin_routes.py, app.py).
FEEDBACK_AND_ADMIN = (r"^/(v1/feedback|v1/feedback/batch|v1/comparisons|health|metrics|"
                      r"admin/(versions|status|retrain|deploy|rollback|users/\{user\}))$")


def run_schemathesis(url: str, max_examples: int = 30, seed: int = 1,
                     include: str | None = None, exclude: str | None = None) -> tuple[int, str]:
    cmd = [schemathesis_exe(), "run", f"{url}/openapi.json", "--checks", "all",
           "--phases", "examples,coverage,fuzzing,stateful", "--max-examples", str(max_examples),
           "--seed", str(seed), "--workers", "1", "-H", f"Authorization: Bearer {TOKEN}",
           "--warnings", "off", "--no-color"]
    cmd += ["--include-path-regex", include] if include else []
    cmd += ["--exclude-path-regex", exclude] if exclude else []
    with tempfile.TemporaryDirectory() as cwd:   # its report folder (.schemathesis/) goes there
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=cwd)
    return proc.returncode, proc.stdout + proc.stderr


def seed_registry(settings: Settings) -> None:
    """Two versions (v1 served), so the admin links list -> deploy -> rollback have data."""
    from common import ops
    folder = Path(settings.data_dir) / "fake-model"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text("{}")
    reg = ops.registry(settings)
    for _ in range(2):
        reg.set_current(reg.publish(folder, {"note": "schemathesis"}), actor="test")


def fuzz_settings_for(redis_url: str, data_dir: Path) -> Settings:
    s = Settings(**NO_LIMITS, redis_url=redis_url, data_dir=data_dir, api_keys=TOKEN,
                 admin_token=TOKEN, user_hmac_key="schemathesis-hmac")
    seed_registry(s)
    return s


@pytest.fixture
def fuzz_settings(redis_server, tmp_path):
    url = redis_server.url.rsplit("/", 1)[0] + "/6"
    sync_redis.Redis.from_url(url).flushdb()
    return fuzz_settings_for(url, tmp_path)


def _fuzz(settings: Settings, **kw) -> tuple[int, str]:
    if shutil.which(schemathesis_exe()) is None and not Path(schemathesis_exe()).exists():
        pytest.fail("schemathesis is not installed (pip install -e '.[dev]')")
    with ThreadServer(stub_app(settings)) as srv:
        assert httpx.get(srv.url + "/health").status_code == 200
        rc, out = run_schemathesis(srv.url, **kw)
    keep = re.compile(r"(Operations:|passed|failed|Scenarios|API Links|generated|unique failures"
                      r"|^_{5,} |^- ST\d{3}|Received:|Documented:)")
    print("\nSCHEMATHESIS\n" + "\n".join(line for line in out.splitlines() if keep.search(line)))
    return rc, out


@pytest.mark.slow
def test_schemathesis_feedback_and_admin_routes(fuzz_settings):
    """All checks, all phases (the stateful one follows the admin links list -> deploy ->
    rollback and the links schemathesis infers), on the feedback and admin routes."""
    rc, out = _fuzz(fuzz_settings, include=FEEDBACK_AND_ADMIN)
    assert rc == 0, out[-12000:]


@pytest.mark.slow
def test_schemathesis_every_route(fuzz_settings):
    """The whole app's spec (less the routes only vLLM's handlers serve): 0 server errors,
    0 conformance failures."""
    rc, out = _fuzz(fuzz_settings, exclude=NEEDS_VLLM)
    assert rc == 0, out[-12000:]
