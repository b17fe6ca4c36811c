"""End to end with real processes: private Redis, `rlhf serve` on the tiny model (vLLM),
`rlhf worker` (a real Celery worker). Feedback -> retrain -> gate -> publish -> hot-swap under
load with zero failed requests -> rollback restores exact greedy outputs -> a worker killed
mid-training leaves no partial version and the job runs again.

The gate's score/KL thresholds are opened wide here: on a random tiny model "reward gain" is
noise, and this test checks the machinery (gate rejection has its own test below).
"""
from __future__ import annotations

import json
import signal
import time

import httpx
import psutil
import pytest
import redis
from openai import OpenAI

from common import ops
from common.keys import KEYS
from common.registry import ModelRegistry
from common.settings import Settings
from demo.stack import Stack, free_port
from tests.helpers.load import ChatLoad

pytestmark = pytest.mark.slow
ADMIN = "admin-secret"
PROMPTS = [f"Tell me about topic number {i}." for i in range(12)]


@pytest.fixture(scope="module")
def live(redis_server, tiny_model_dir, tmp_path_factory):
    data = tmp_path_factory.mktemp("live") / "data"
    redis.Redis.from_url(redis_server.url).flushall()
    port = free_port()
    env = {
        **__import__("os").environ,
        "RLHF_REDIS_URL": redis_server.url, "RLHF_DATA_DIR": str(data), "RLHF_ADMIN_TOKEN": ADMIN,
        "RLHF_ALGORITHM": "ppo",   # the slowest path: the kill test needs time inside training
        "RLHF_KL_BUDGET": "1e9", "RLHF_GATE_MAX_PREF_DROP": "1", "RLHF_GATE_MAX_DEGENERATE": "1000",
        "RLHF_GATE_MIN_RM_ACCURACY": "-1",
        "RLHF_PPO_OVERRIDES": json.dumps({"steps": 3, "batch_size": 4, "mini_batch_size": 2,
                                          "max_new_tokens": 12, "show_progress_bar": False}),
        "RLHF_RM_OVERRIDES": json.dumps({"epochs": 1, "batch_size": 4, "show_progress_bar": False}),
        "RLHF_GATE_MIN_RM_GAIN": "-1e9", "RLHF_GATE_MAX_KL": "1e9", "RLHF_GATE_EVAL_PROMPTS": "4",
        "RLHF_GATE_MAX_NEW_TOKENS": "12", "RLHF_PIPELINE_LOCK_TTL_S": "10",
        "RLHF_RETRAIN_MIN_EVENTS": "100000", "VLLM_CPU_KVCACHE_SPACE": "1",
        "RLHF_TORCH_THREADS": "1",  # the server shares 2 cores with training: no OpenMP fight
    }
    stack = Stack(tmp_path_factory.mktemp("logs"), env)
    try:
        stack.rlhf("server", "serve", "--model", str(tiny_model_dir), "--port", str(port))
        stack.rlhf("worker", "worker", "--loglevel", "info")
        stack.wait_http(f"http://127.0.0.1:{port}/health", timeout=300, what="server")
        settings = Settings(redis_url=redis_server.url, data_dir=data, admin_token=ADMIN)
        yield {"url": f"http://127.0.0.1:{port}", "settings": settings, "stack": stack}
    finally:
        stack.stop()


def _client(live) -> OpenAI:
    return OpenAI(base_url=live["url"] + "/v1", api_key="unused", max_retries=0, timeout=120)


def _greedy(live, prompts=PROMPTS[:3]) -> list[str]:
    c = _client(live)
    return [c.chat.completions.create(model="policy", messages=[{"role": "user", "content": p}],
                                      temperature=0, max_tokens=12).choices[0].message.content
            for p in prompts]


def _served(live) -> str:
    return httpx.get(live["url"] + "/v1/models").json()["data"][0]["version"]


def _give_feedback(live, rounds: int = 1) -> int:
    """Chats with n=2 and rates them by a synthetic taste (shorter answer wins); returns events."""
    c = _client(live)
    sent = 0
    for _ in range(rounds):
        for p in PROMPTS:
            r = c.chat.completions.create(model="policy", messages=[{"role": "user", "content": p}],
                                          n=2, max_tokens=12, temperature=1.0, user="alice")
            a, b = r.choices
            ids = [a.model_extra["response_id"], b.model_extra["response_id"]]
            choice = "a" if len(a.message.content) <= len(b.message.content) else "b"
            for body, route in [({"response_ids": ids, "choice": choice, "user": f"rater{sent % 5}"}, "/v1/comparisons"),
                                ({"response_id": ids[0], "rating": "up" if choice == "a" else "down",
                                  "user": f"rater{(sent + 1) % 5}"}, "/v1/feedback")]:
                resp = httpx.post(live["url"] + route, json=body, timeout=30)
                assert resp.status_code in (200, 201), resp.text
                sent += 1
    return sent


def _wait_pipeline(live, run_id: str, timeout: float = 900) -> dict:
    deadline = time.time() + timeout
    r = ops.client(live["settings"])
    while time.time() < deadline:
        for raw in r.lrange(KEYS.pipeline_history, 0, -1):
            rec = json.loads(raw)
            if rec.get("run_id") == run_id:
                return rec
        live["stack"].check_alive()
        time.sleep(0.5)
    raise AssertionError(f"pipeline {run_id} did not finish; status={ops.pipeline_status(live['settings'])}")


def _wait_step(live, run_id: str, steps: tuple[str, ...], timeout: float = 900) -> None:
    r = ops.client(live["settings"])
    deadline = time.time() + timeout
    while time.time() < deadline:
        st = r.hgetall(KEYS.pipeline_status)
        if st.get("run_id") == run_id and st.get("step") in steps:
            return
        if st.get("run_id") == run_id and st.get("state") not in (None, "running"):
            raise AssertionError(f"pipeline ended before {steps}: {st}")
        time.sleep(0.05)
    raise AssertionError(f"pipeline never reached {steps}")


def test_feedback_to_new_version_under_load_then_rollback(live):
    settings = live["settings"]
    assert _served(live) == "v0"
    v0_greedy = _greedy(live)
    assert _give_feedback(live) == 2 * len(PROMPTS)

    run_id = ops.request_retrain(settings, reason="test")
    # Clients hammer the server from the gate step on: the swap happens at deploy, right
    # after; hammering through training too would only starve training of CPU.
    _wait_step(live, run_id, ("gate", "publish", "deploy"))
    with ChatLoad(live["url"], clients=3) as hammer:
        result = _wait_pipeline(live, run_id)
        assert result["state"] == "succeeded", result
        assert result["version"] == "v1"
        deadline = time.time() + 30
        while _served(live) != "v1" and time.time() < deadline:
            time.sleep(0.2)
        time.sleep(1.0)  # some traffic on the new version too
    assert hammer.failures == [], hammer.failures[:5]
    assert hammer.ok > 10 and "v0" in hammer.versions and "v1" in hammer.versions
    assert _served(live) == "v1"

    # new answers carry the new id, in the response and in the stored record
    r = _client(live).chat.completions.create(model="policy", max_tokens=4,
                                              messages=[{"role": "user", "content": "hi"}])
    assert r.model_extra["model_version"] == "v1"
    stored = json.loads(redis.Redis.from_url(settings.redis_url).get(KEYS.answer(r.choices[0].model_extra["response_id"])))
    assert stored["model_version"] == "v1"

    meta = ModelRegistry(settings.models_dir).metadata("v1")
    assert meta["parent"] == "v0" and meta["gate"]["passed"] is True
    assert meta["data"]["pairs"] + meta["data"]["eval_pairs"] > 0
    assert ops.status(settings)["feedback"]["not_yet_trained_on"] == 0
    assert _greedy(live) != v0_greedy  # the weights really changed

    # rollback through the admin route, then exact greedy outputs of v0 come back
    h = {"Authorization": f"Bearer {ADMIN}"}
    assert httpx.post(live["url"] + "/admin/rollback").status_code in (401, 403)
    resp = httpx.post(live["url"] + "/admin/rollback", headers=h)
    assert resp.status_code == 200, resp.text
    assert resp.json()["version"] == "v0"
    assert ops.wait_for_replicas(settings, "v0", timeout=30)
    assert _greedy(live) == v0_greedy
    versions = httpx.get(live["url"] + "/admin/versions", headers=h).json()["versions"]
    assert [(v["version"], v["current"]) for v in versions] == [("v0", True), ("v1", False)]
    assert httpx.post(live["url"] + "/admin/deploy", headers=h, json={"version": "v7"}).status_code == 404


def test_worker_killed_mid_training_leaves_no_partial_version_and_job_reruns(live):
    settings = live["settings"]
    registry = ModelRegistry(settings.models_dir)
    before = registry.versions()
    _give_feedback(live)
    run_id = ops.request_retrain(settings, reason="kill-test")
    r = ops.client(settings)
    deadline = time.time() + 180
    while time.time() < deadline:
        st = r.hgetall(KEYS.pipeline_status)
        if st.get("run_id") == run_id and st.get("step") in ("reward_model", "policy"):
            break
        time.sleep(0.05)
    else:
        pytest.fail(f"pipeline never reached training: {r.hgetall(KEYS.pipeline_status)}")
    worker_main = next(p for n, p in live["stack"].procs if n == "worker")
    children = psutil.Process(worker_main.pid).children(recursive=True)
    assert children, "no pool process to kill"
    for child in children:
        child.send_signal(signal.SIGKILL)        # the process doing the training dies hard
    assert registry.versions() == before          # nothing half-written became a version

    result = _wait_pipeline(live, run_id)         # acks_late + reject_on_worker_lost: runs again
    assert result["state"] == "succeeded", result
    after = registry.versions()
    assert len(after) == len(before) + 1
    assert not [p for p in registry.root.iterdir() if p.name.startswith(".tmp-")]
    assert registry.metadata(after[-1])["run_id"] == run_id


def test_gate_failure_leaves_served_version_unchanged(live, monkeypatch):
    from worker.pipeline import run_pipeline
    settings = live["settings"]
    served = ModelRegistry(settings.models_dir).current()
    _give_feedback(live)
    # An impossible KL bound: any trained policy must be refused, and the reason recorded.
    strict = settings.model_copy(update={"gate_max_kl": -1.0, "gate_min_rm_gain": -1e9,
                                         "gate_eval_prompts": 2, "gate_max_new_tokens": 8,
                                         "ppo_overrides": json.dumps({"steps": 1, "batch_size": 2,
                                                                      "mini_batch_size": 2, "max_new_tokens": 8,
                                                                      "show_progress_bar": False}),
                                         "rm_overrides": json.dumps({"epochs": 1, "show_progress_bar": False})})
    result = run_pipeline(strict, "gate-test", reason="test")
    assert result["state"] == "rejected" and "KL to served policy" in result["error"]
    reg = ModelRegistry(settings.models_dir)
    assert reg.current() == served and _served(live) == served
    assert reg.metadata(result["version"])["gate"]["passed"] is False
    assert httpx.post(live["url"] + "/admin/deploy", json={"version": result["version"]},
                      headers={"Authorization": f"Bearer {ADMIN}"}).status_code == 409
