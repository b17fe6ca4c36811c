"""Faults of the loop (issue 12), against a real Redis: nothing lost, the loop goes on.

The pipeline runs in-process with the real snapshot, datasets, publish and deploy steps; only
the policy training and the gate are replaced by stand-ins (a copy of the served model and a
passing verdict), so these tests exercise orchestration in seconds. The OOM case starts a real
Celery worker and SIGKILLs its child (tests/worker/test_faults_oom.py).
"""
import json
import shutil
import threading
import time
from pathlib import Path

import pytest
import redis

from common import ops, privacy
from common.events import FeedbackEvent, StoredAnswer
from common.keys import FEEDBACK_GROUP, KEYS, check_run_id
from common.registry import ModelRegistry, PointerMoved
from common.settings import Settings
from worker import pipeline as pipeline_mod
from worker.lock import LockLost, RenewingLock
from worker.pipeline import run_pipeline
from worker.snapshot import load_snapshots, take_snapshot


def _answer(rid, user=None, version="v0", prompt="p1"):
    return StoredAnswer(response_id=rid, request_id="q", model_version=version, kind="chat",
                        messages=[{"role": "user", "content": f"question {prompt}"}],
                        prompt_key=prompt, text=f"answer {rid}", user=user)


def _comparison(r, i, rater="u1", user=None, version="v0"):
    a, b = f"a{i}", f"b{i}"
    for rid in (a, b):
        r.set(KEYS.answer(rid), _answer(rid, user, version, prompt=f"p{i}").model_dump_json())
    ev = FeedbackEvent(event_id=f"e{i}", kind="comparison", rater=rater, target=f"{a}|{b}",
                       response_ids=[a, b], choice="a")
    r.xadd(KEYS.feedback_stream, ev.to_stream_fields())
    r.set(KEYS.vote(rater, f"{a}|{b}"), json.dumps({"event_id": ev.event_id}))
    r.hincrby(KEYS.feedback_counts, "total", 1)
    return ev


POISON = [
    {"junk": "no event field"},
    {"event": "{not json"},
    {"event": json.dumps({"event_id": "x1", "kind": "comparison", "rater": "u9", "target": "a|b",
                          "choice": "a"})},                       # no response_ids
    {"event": json.dumps({"event_id": "x2", "kind": "thumb", "rater": "u9", "target": "r"})},  # no rating
]


# --- poison entries, dead letters, trimming ------------------------------------------------
def test_poison_entries_are_dead_lettered_acked_and_the_stream_is_trimmed(redis_url, tmp_path):
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    _comparison(r, 0)
    for fields in POISON:
        r.xadd(KEYS.feedback_stream, fields)
    _comparison(r, 1)

    snap = take_snapshot(r, tmp_path, "run1")
    assert snap.events == 2 and snap.dead_lettered == len(POISON)
    assert [x["event"]["event_id"] for x in load_snapshots(tmp_path)] == ["e0", "e1"]
    dead = r.xrange(KEYS.feedback_dead_letter)
    assert len(dead) == len(POISON)
    assert all(fields["error"] and fields["run_id"] == "run1" for _, fields in dead)
    errors = [fields["error"] for _, fields in dead]
    assert "no 'event' field" in errors[0] and "not a feedback event" in errors[1]
    assert "two distinct response_ids" in errors[2] and "thumb without" in errors[3]
    assert json.loads(dead[0][1]["fields"]) == {"junk": "no event field"}
    # acked: nothing pending; trimmed: everything the snapshot made durable left the stream
    assert r.xpending(KEYS.feedback_stream, FEEDBACK_GROUP)["pending"] == 0
    assert snap.trimmed == 6 and r.xlen(KEYS.feedback_stream) == 0

    # the next snapshot is not blocked by them, and only new entries are read
    _comparison(r, 2)
    again = take_snapshot(r, tmp_path, "run2")
    assert again.events == 1 and again.dead_lettered == 0 and r.xlen(KEYS.feedback_stream) == 0


def test_trim_keeps_entries_not_yet_durable(redis_url, tmp_path):
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    for i in range(3):
        _comparison(r, i)
    # another consumer group that has read only the first entry holds the trim back
    first = r.xrange(KEYS.feedback_stream, count=1)[0][0]
    r.xgroup_create(KEYS.feedback_stream, "other", id=first)
    take_snapshot(r, tmp_path, "run1")
    remaining = [sid for sid, _ in r.xrange(KEYS.feedback_stream)]
    assert len(remaining) == 2 and first not in remaining


# --- a pipeline run with stand-ins for training and gate -----------------------------------
FAST = dict(gate_train_rm=False, deploy_confirm_timeout_s=0.5, retry_after_failure_s=0)


@pytest.fixture
def served(redis_url, tmp_path, tiny_model_dir, monkeypatch):
    """v0 served; policy training = copy of the served model; the gate passes."""
    settings = Settings(redis_url=redis_url, data_dir=tmp_path / "data", **FAST)
    reg = ModelRegistry(settings.models_dir)
    reg.set_current(reg.publish(tiny_model_dir, {"parent": None}))
    hooks = {"during_training": None}

    def fake_policy(settings, sets, run_id, served, anchor, rm_dir, work, stats, progress):
        out = Path(work) / "policy"
        shutil.copytree(reg.path(served), out)
        (out / "rlhf_version.json").unlink()
        if hooks["during_training"]:
            hooks["during_training"]()
        return out, {"loss": 0.1}, {"algorithm": settings.algorithm, "anchor": anchor}

    def fake_gate(*args, **kwargs):
        return {"passed": True, "reasons": [], "metrics": {"kl_to_anchor": 0.0, "kl_to_served": 0.0}}

    monkeypatch.setattr("worker.training.train_policy_step", fake_policy)
    monkeypatch.setattr("worker.gate.run_gate", fake_gate)
    return settings, reg, redis.Redis.from_url(redis_url, decode_responses=True), hooks


def test_pipeline_with_poison_entries_succeeds_and_counts_them(served):
    settings, reg, r, _ = served
    for i in range(4):
        _comparison(r, i, rater=f"u{i}")
    for fields in POISON:
        r.xadd(KEYS.feedback_stream, fields)
    result = run_pipeline(settings, "run-poison")
    assert result["state"] == "succeeded", result
    assert result["data"]["dead_lettered"] == len(POISON)
    assert reg.metadata(result["version"])["data"]["dead_lettered"] == len(POISON)
    assert result["snapshot"]["dead_lettered"] == len(POISON)
    assert r.xlen(KEYS.feedback_dead_letter) == len(POISON) and r.xlen(KEYS.feedback_stream) == 0
    # the next run goes on (before the fix every later run failed on the same bad entry)
    for i in range(4, 8):
        _comparison(r, i, rater=f"u{i}")
    r.xadd(KEYS.feedback_stream, POISON[1])
    second = run_pipeline(settings, "run-next")
    assert second["state"] == "succeeded" and second["data"]["dead_lettered"] == 1
    assert reg.current() == second["version"]


def test_operator_rollback_during_a_run_supersedes_it(served, tiny_model_dir):
    settings, reg, r, hooks = served
    for i in range(4):
        _comparison(r, i, rater=f"u{i}")
    first = run_pipeline(settings, "run-1")
    assert first["state"] == "succeeded" and reg.current() == "v1"
    for i in range(4, 8):
        _comparison(r, i, rater=f"u{i}", version="v1")
    # while run-2 trains from v1, the operator rolls back to v0
    hooks["during_training"] = lambda: ops.rollback(settings, actor="operator")
    second = run_pipeline(settings, "run-2")
    assert second["state"] == "superseded", second
    assert "v0, not v1" in second["error"]
    assert reg.current() == "v0"                               # the operator's choice stands
    assert second["version"] == "v2" and reg.exists("v2")     # published, deployable by hand
    assert [e["version"] for e in reg.deploy_history()][-1] == "v0"
    assert json.loads(r.lindex(KEYS.pipeline_history, 0))["state"] == "superseded"
    assert r.hget(KEYS.pipeline_status, "state") == "superseded"


def test_compare_and_set_on_the_pointer(tmp_path, tiny_model_dir):
    reg = ModelRegistry(tmp_path / "models")
    v0 = reg.publish(tiny_model_dir, {"parent": None})
    v1 = reg.publish(tiny_model_dir, {"parent": v0})
    reg.set_current(v0)
    with pytest.raises(PointerMoved):
        reg.set_current(v1, expected=v1)
    reg.set_current(v1, expected=v0)
    assert reg.current() == v1
    # the guard runs under the pointer lock, before the write: its failure changes nothing
    with pytest.raises(LockLost):
        reg.set_current(v0, expected=v1, guard=lambda: (_ for _ in ()).throw(LockLost("gone")))
    assert reg.current() == v1


# --- fencing -------------------------------------------------------------------------------
def test_lock_check_detects_loss(redis_url):
    r = redis.Redis.from_url(redis_url)
    lock = RenewingLock(r, KEYS.pipeline_lock, ttl_s=30, token="run-a")
    lock.acquire()
    lock.check()
    r.set(KEYS.pipeline_lock, "run-b")         # expired and taken by another run
    with pytest.raises(LockLost):
        lock.check()
    lock.release()
    assert r.get(KEYS.pipeline_lock) == b"run-b"  # never released someone else's lock


@pytest.mark.parametrize("lose_at", ["publish", "deploy"])
def test_a_run_that_lost_its_lock_stops_before_publish_and_deploy(served, lose_at):
    settings, reg, r, hooks = served
    for i in range(4):
        _comparison(r, i, rater=f"u{i}")
    lock = RenewingLock(r, KEYS.pipeline_lock, ttl_s=60, token="run-lost")
    lock.acquire()
    try:
        if lose_at == "publish":   # lost during training: nothing is published
            hooks["during_training"] = lambda: r.set(KEYS.pipeline_lock, "run-other")
            result = run_pipeline(settings, "run-lost", fence=lock.check)
            assert reg.versions() == ["v0"]
        else:                      # lost after publish: published, never deployed
            checks = {"n": 0}

            def fence():
                checks["n"] += 1
                if checks["n"] >= 2:          # 1st check: publish; 2nd: deploy
                    r.set(KEYS.pipeline_lock, "run-other")
                lock.check()
            result = run_pipeline(settings, "run-lost", fence=fence)
            assert reg.versions() == ["v0", "v1"]
    finally:
        lock.release()
    assert result["state"] == "lost_lock" and "run-other" in result["error"]
    assert reg.current() == "v0"
    assert "run-lost" not in r.smembers(KEYS.consumed_runs) or lose_at == "deploy"
    assert json.loads(r.lindex(KEYS.pipeline_history, 0))["state"] == "lost_lock"
    assert r.get(KEYS.pipeline_lock) == "run-other"


# --- unconfirmed swap ----------------------------------------------------------------------
def test_a_swap_no_replica_confirms_is_a_failed_deploy_and_the_parent_is_served(served):
    settings, reg, r, _ = served
    for i in range(4):
        _comparison(r, i, rater=f"u{i}")
    # one live replica that stays on v0 (its swap never happens)
    r.sadd(KEYS.replicas, "rep-1")
    r.hset(KEYS.replica("rep-1"), mapping={"version": "v0", "status": "serving", "error": ""})
    announced = []
    sub = r.pubsub()
    sub.subscribe(KEYS.deploy_channel)
    result = run_pipeline(settings, "run-swap")
    assert result["state"] == "failed", result
    assert result["reverted_to"] == "v0" and result["replicas_confirmed"] is False
    assert "did not confirm v1" in result["error"]
    assert reg.current() == "v0"
    assert [(e["version"], e["previous"]) for e in reg.deploy_history()][-2:] == [("v1", "v0"), ("v0", "v1")]
    for _ in range(20):
        m = sub.get_message(timeout=0.1)
        if m and m["type"] == "message":
            announced.append(json.loads(m["data"])["version"])
    assert announced == ["v1", "v0"]                              # replicas told to go back
    assert r.get(KEYS.current_version) == "v0"

    # a replica that does confirm: the deploy stands
    for i in range(4, 8):
        _comparison(r, i, rater=f"u{i}")

    def confirm():
        deadline = time.time() + 10
        while time.time() < deadline:
            if reg.current() not in (None, "v0"):
                r.hset(KEYS.replica("rep-1"), mapping={"version": reg.current(), "status": "serving"})
                return
            time.sleep(0.05)
    t = threading.Thread(target=confirm)
    t.start()
    ok = run_pipeline(settings.model_copy(update={"deploy_confirm_timeout_s": 10}), "run-swap-ok")
    t.join()
    assert ok["state"] == "succeeded" and ok["replicas_confirmed"] is True and ok["replicas"] == 1
    assert reg.current() == ok["version"]


# --- run id validation ---------------------------------------------------------------------
@pytest.mark.parametrize("bad", ["../../etc", "a/b", "", ".hidden", "run\n", "x" * 200, "a..b",
                                 "run id", None, 5])
def test_run_ids_from_the_broker_are_validated_before_naming_anything(bad, redis_url, tmp_path, monkeypatch):
    with pytest.raises(ValueError):
        check_run_id(bad)
    settings = Settings(redis_url=redis_url, data_dir=tmp_path / "data")
    with pytest.raises(ValueError):
        run_pipeline(settings, bad)
    # the Celery task refuses it too, before any lock, key or folder
    monkeypatch.setenv("RLHF_REDIS_URL", redis_url)
    monkeypatch.setenv("RLHF_DATA_DIR", str(tmp_path / "data"))
    from worker.tasks import retrain
    out = retrain.run(run_id=bad) if bad else {"state": "refused"}
    assert out["state"] == "refused"
    assert not (tmp_path / "data").exists()
    assert redis.Redis.from_url(redis_url).keys("*") == []


def test_good_run_ids_pass():
    for ok in ["run-20261125-101500-abc123", "3f2b8c1e-1111-4e5e-9a6b-0c7d8e9f0a1b", "round-1", "a.b_c"]:
        assert check_run_id(ok) == ok


# --- retention -----------------------------------------------------------------------------
def test_retention_prunes_old_snapshots_work_folders_and_versions(served, tiny_model_dir):
    import os
    from worker.retention import prune_files, prune_versions
    settings, reg, r, _ = served
    snaps = settings.snapshots_dir
    snaps.mkdir(parents=True)
    old, new = snaps / "run-old-0.jsonl", snaps / "run-new-0.jsonl"
    old.write_text("")
    new.write_text("")
    work = Path(settings.data_dir) / "work"
    (work / "run-old").mkdir(parents=True)
    (work / "run-now").mkdir()
    ancient = time.time() - 400 * 86400
    os.utime(old, (ancient, ancient))
    os.utime(work / "run-old", (ancient, ancient))
    os.utime(work / "run-now", (ancient, ancient))
    out = prune_files(settings, keep_run="run-now")
    assert out == {"snapshots": ["run-old-0.jsonl"], "work": ["run-old"]}
    assert new.exists() and (work / "run-now").exists()

    for _ in range(4):
        reg.publish(tiny_model_dir, {"parent": "v0"})
    ops.deploy(settings, "v3")
    ops.deploy(settings, "v4")
    assert prune_versions(settings) == []                     # default: keep every version
    kept = settings.model_copy(update={"versions_keep": 1})
    assert prune_versions(kept) == ["v1", "v2"]               # v0 anchor, v3 rollback target, v4 served
    assert reg.versions() == ["v0", "v3", "v4"]


# --- forget a user -------------------------------------------------------------------------
def test_forget_user_erases_answers_feedback_votes_and_snapshot_records(redis_url, tmp_path):
    settings = Settings(redis_url=redis_url, data_dir=tmp_path / "data")
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    alice, bob = settings.pseudonymise("alice"), settings.pseudonymise("bob")
    _comparison(r, 0, rater=alice, user=alice)        # alice's answers, alice votes
    _comparison(r, 1, rater=bob, user=bob)            # bob only
    take_snapshot(r, settings.snapshots_dir, "run1")  # both now in a snapshot file, stream trimmed
    _comparison(r, 2, rater=bob, user=alice)          # bob votes on alice's answers (pending)
    _comparison(r, 3, rater=alice, user=bob)          # alice votes on bob's answers
    _comparison(r, 4, rater=bob, user=bob)
    r.xadd(KEYS.feedback_dead_letter, {"error": "x", "fields": json.dumps({"rater": alice})})
    # one of alice's entries was already delivered to a run that died before acking it
    from worker.snapshot import CONSUMER
    r.xreadgroup(FEEDBACK_GROUP, CONSUMER, {KEYS.feedback_stream: ">"}, count=1)

    (settings.data_dir / "work" / "run-failed").mkdir(parents=True)
    (settings.data_dir / "work" / "run-running").mkdir()
    r.set(KEYS.pipeline_lock, "run-running")
    out = privacy.forget_user(settings, "alice")
    assert out["work_folders_removed"] == 1 and (settings.data_dir / "work" / "run-running").exists()
    assert out["answers"] == 4 and out["feedback_events"] == 2 and out["dead_letters"] == 1
    assert out["snapshot_records"] == 1 and out["vote_records"] == 3
    assert not r.exists(KEYS.answer("a0"), KEYS.answer("b2"))
    assert r.exists(KEYS.answer("a1")) and r.exists(KEYS.answer("a4"))
    assert not [k for k in r.scan_iter(KEYS.vote(alice, "*"))]
    dump = json.dumps([r.xrange(KEYS.feedback_stream), r.xrange(KEYS.feedback_dead_letter)])
    dump += "".join(p.read_text() for p in settings.snapshots_dir.glob("*.jsonl"))
    assert alice not in dump and "question p0" not in dump and "question p2" not in dump
    assert "e1" in dump and "e4" in dump

    # the pending entry that was erased is acked as erased; bob's survive into the next snapshot
    snap = take_snapshot(r, settings.snapshots_dir, "run2")
    assert snap.erased == 1 and snap.events == 1 and snap.dead_lettered == 0
    ids = [x["event"]["event_id"] for x in load_snapshots(settings.snapshots_dir)]
    assert sorted(ids) == ["e1", "e4"]


def test_forget_cli_and_admin_route(redis_url, tmp_path, rlhf_env):
    import subprocess
    import sys
    settings = Settings()
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    carol = settings.pseudonymise("carol")
    _comparison(r, 0, rater=carol, user=carol)
    _comparison(r, 1, rater="u_other", user="u_other")
    cli = Path(sys.executable).parent / "rlhf"
    proc = subprocess.run([str(cli), "forget", "carol"], capture_output=True, text=True, timeout=60,
                          env=rlhf_env)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["answers"] == 2 and not r.exists(KEYS.answer("a0"))

    from fastapi import FastAPI
    from fastapi.testclient import TestClient
    from serving.admin_routes import router
    app = FastAPI()
    app.state.settings = Settings(admin_token="secret")
    app.include_router(router)
    client = TestClient(app)
    _comparison(r, 2, rater=carol, user=carol)
    assert client.delete("/admin/users/carol").status_code == 401
    assert client.delete("/admin/users/carol", headers={"Authorization": "Bearer nope"}).status_code == 401
    resp = client.delete("/admin/users/carol", headers={"Authorization": "Bearer secret"})
    assert resp.status_code == 200 and resp.json()["answers"] == 2 and resp.json()["feedback_events"] == 1
    assert r.exists(KEYS.answer("a1")) and not r.exists(KEYS.answer("a2"))


def test_a_damaged_snapshot_line_is_skipped_not_fatal(redis_url, tmp_path):
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    _comparison(r, 0)
    take_snapshot(r, tmp_path, "run1")
    with open(tmp_path / "run1-0.jsonl", "a") as f:
        f.write('{"truncated": \n{"event": {}}\n')
    assert [x["event"]["event_id"] for x in load_snapshots(tmp_path)] == ["e0"]
