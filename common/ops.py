"""Operator actions shared by the `rlhf` CLI and the server's /admin routes.

Deploying = move the registry's CURRENT pointer (a file: the truth, survives Redis restarts)
and announce it on the deploy channel; every replica also polls CURRENT, so one that missed the
message converges anyway. Retrain requests go to the Celery training queue *by task name*, so
the server never imports the worker package.
"""
from __future__ import annotations

import json
import time
import uuid
from typing import Any

import redis

from common.keys import KEYS
from common.registry import ANY, ModelRegistry, PointerMoved, RegistryError  # noqa: F401
from common.settings import Settings

RETRAIN_TASK = "worker.tasks.retrain"


class GateRefused(RegistryError):
    pass


def registry(settings: Settings) -> ModelRegistry:
    return ModelRegistry(settings.models_dir)


def client(settings: Settings) -> redis.Redis:
    return redis.Redis.from_url(settings.redis_url, decode_responses=True,
                                socket_timeout=5, socket_connect_timeout=2)


def deploy(settings: Settings, version: str, reason: str = "deploy", actor: str = "operator",
           force: bool = False, expected_current: Any = ANY, guard=None) -> dict[str, Any]:
    """Serve `version`. `expected_current` makes it a compare-and-set (PointerMoved if the
    served version is no longer that one); `guard()` runs under the pointer lock just before
    the write (the pipeline passes its lock check)."""
    reg = registry(settings)
    meta = reg.metadata(version)  # raises UnknownVersion
    gate = meta.get("gate") or {}
    if gate and not gate.get("passed", True) and not force:
        raise GateRefused(f"{version} failed its gate ({'; '.join(gate.get('reasons', []))}); "
                          "use force to deploy anyway")
    entry = reg.set_current(version, reason=reason, actor=actor, expected=expected_current, guard=guard)
    entry["announced"] = announce(settings, version, str(reg.path(version)))
    return entry


def announce(settings: Settings, version: str, path: str) -> bool:
    try:
        r = client(settings)
        r.set(KEYS.current_version, version)
        r.publish(KEYS.deploy_channel, json.dumps({"version": version, "path": path}))
        return True
    except redis.RedisError:
        return False  # replicas poll CURRENT and converge without the message


def rollback(settings: Settings, actor: str = "operator") -> dict[str, Any]:
    target = registry(settings).rollback_target()
    return deploy(settings, target, reason="rollback", actor=actor, force=True)


def list_versions(settings: Settings) -> list[dict[str, Any]]:
    reg = registry(settings)
    current = reg.current()
    rows = []
    for v in reg.versions():
        meta = reg.metadata(v)
        gate = meta.get("gate") or {}
        rows.append({
            "version": v, "current": v == current, "parent": meta.get("parent"),
            "created": meta.get("created"), "gate_passed": gate.get("passed"),
            "gate_reasons": gate.get("reasons", []), "metrics": meta.get("metrics", {}),
            "snapshot": meta.get("snapshot"), "note": meta.get("note"),
            "algorithm": meta.get("algorithm"), "anchor": meta.get("anchor"),
            "kl_to_anchor": meta.get("kl_to_anchor"), "kl_to_parent": meta.get("kl_to_parent"),
            "reward_model": meta.get("reward_model"), "judge_reward_model": meta.get("judge_reward_model"),
            "critic": meta.get("critic"),
            "kl_coef": (meta.get("kl_state") or {}).get("value"),
        })
    return rows


def replicas(settings: Settings) -> list[dict[str, Any]]:
    r = client(settings)
    out = []
    for rid in sorted(r.smembers(KEYS.replicas)):
        info = r.hgetall(KEYS.replica(rid))
        if info:  # expired heartbeat = replica gone
            out.append({"replica": rid, **info})
    return out


def pipeline_status(settings: Settings) -> dict[str, Any]:
    r = client(settings)
    raw = r.hgetall(KEYS.pipeline_status)
    status = {k: _maybe_json(v) for k, v in raw.items()}
    status["history"] = [json.loads(x) for x in r.lrange(KEYS.pipeline_history, 0, 9)]
    status["lock_held"] = bool(r.exists(KEYS.pipeline_lock))
    return status


def status(settings: Settings) -> dict[str, Any]:
    r = client(settings)
    counts = {k: int(v) for k, v in r.hgetall(KEYS.feedback_counts).items()}
    try:
        groups = r.xinfo_groups(KEYS.feedback_stream)
    except redis.ResponseError:
        groups = []
    return {
        "current_version": registry(settings).current(),
        "replicas": replicas(settings),
        "pipeline": pipeline_status(settings),
        "queue_depth": {"training": r.llen(KEYS.training_queue)},
        "feedback": {"counts": counts, "stream_length": r.xlen(KEYS.feedback_stream),
                     "dead_letters": r.xlen(KEYS.feedback_dead_letter),
                     "not_yet_trained_on": sum(int(g.get("lag") or 0) + int(g.get("pending") or 0)
                                               for g in groups)},
    }


def request_retrain(settings: Settings, reason: str = "operator", force: bool = True) -> str:
    """Queue one pipeline run now; returns its run id."""
    from celery import Celery

    run_id = time.strftime("run-%Y%m%d-%H%M%S-", time.gmtime()) + uuid.uuid4().hex[:6]
    app = Celery("rlhf", broker=settings.redis_url, backend=settings.redis_url)
    app.send_task(RETRAIN_TASK, kwargs={"run_id": run_id, "reason": reason, "force": force},
                  queue=KEYS.training_queue, task_id=run_id)
    return run_id


def wait_for_replicas(settings: Settings, version: str, timeout: float = 60.0) -> bool:
    """True once every live replica reports serving `version`."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        reps = replicas(settings)
        if reps and all(x.get("version") == version and x.get("status") == "serving" for x in reps):
            return True
        time.sleep(0.25)
    return False


def confirm_swap(settings: Settings, version: str, timeout: float = 60.0) -> dict[str, Any]:
    """Wait until every live replica serves `version`. Returns {"confirmed", "replicas",
    "lagging"}: confirmed is True when all did; False when some replica never confirmed within
    `timeout` (or reported a failed swap to it); None when no replica is alive at all (nothing to
    swap: a replica that starts later loads CURRENT)."""
    deadline = time.time() + timeout
    reps: list[dict[str, Any]] = []
    while True:
        reps = replicas(settings)
        if reps and all(x.get("version") == version and x.get("status") == "serving" for x in reps):
            return {"confirmed": True, "replicas": len(reps), "lagging": []}
        failed = [x for x in reps if x.get("status") == "error" and version in (x.get("error") or "")]
        if failed or time.time() >= deadline:
            break
        time.sleep(0.25)
    lagging = [{"replica": x["replica"], "version": x.get("version"), "status": x.get("status"),
                "error": x.get("error", "")} for x in reps
               if not (x.get("version") == version and x.get("status") == "serving")]
    return {"confirmed": False if reps else None, "replicas": len(reps), "lagging": lagging}


def _maybe_json(v: str):
    try:
        return json.loads(v)
    except (TypeError, ValueError):
        return v
