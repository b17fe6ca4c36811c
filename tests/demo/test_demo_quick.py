"""`rlhf demo --quick` end to end on the tiny model: the machinery (processes, users, a real
pipeline round, hot-swap, evaluation, report), not the learning, which needs the real model."""
import json
import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import redis

pytestmark = pytest.mark.slow


def test_demo_quick_runs_the_loop_and_writes_the_report(redis_url, tiny_model_dir, tmp_path):
    out = tmp_path / "demo"
    env = {**os.environ, "RLHF_REDIS_URL": redis_url, "RLHF_DATA_DIR": str(tmp_path / "data"),
           "VLLM_CPU_KVCACHE_SPACE": "1"}
    exe = str(Path(sys.executable).with_name("rlhf"))
    proc = subprocess.run(
        [exe, "demo", "--quick", "--model", str(tiny_model_dir), "--out", str(out),
         "--interactions", "16", "--ppo", '{"steps": 2, "max_new_tokens": 12, "trainable_layers": null}',
         "--rm", '{"trainable_layers": null}', "--decoding", '{"presence_penalty": 0.5}',
         "--repetition-penalty", "1.1"],
        env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    rows = json.loads((out / "versions.json").read_text())
    assert [r["version"] for r in rows][:2] == ["v0", "v1"]
    assert rows[1]["parent"] == "v0" and rows[1]["feedback_used"] > 0
    assert 0.0 <= rows[1]["win_rate_vs_v0"] <= 1.0
    rounds = json.loads((out / "rounds.json").read_text())
    assert rounds[0]["feedback_events"] >= 16 and rounds[0]["errors"] == 0
    assert rounds[0]["pipeline"]["state"] in ("succeeded", "rejected")
    report = (out / "report.md").read_text()
    assert "| v1 |" in report and "versions.png" in report
    # the decoding default travels with the model: the served base, and the version trained from it
    # (published or refused), carry it in generation_config.json, and the report says so
    for version in ("v0", "v1"):
        config = json.loads((out / "data" / "models" / version / "generation_config.json").read_text())
        assert config["repetition_penalty"] == 1.1 and config["presence_penalty"] == 0.5, version
    assert "presence penalty 0.5" in report and "repetition penalty 1.1" in report
    assert "repetition_penalty" not in (tiny_model_dir / "generation_config.json").read_text()
    for png in ("versions.png", "ppo_steps.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    # no process of the demo survives it, and its Redis namespace is gone
    assert _processes_with_env_value(str(out)) == []
    assert not list(redis.Redis.from_url(redis_url).scan_iter(match="*demo1*"))
    # ... and nothing outside it either (Celery's fanout bindings used to leave
    # `_kombu.binding_deadlines` behind): this Redis was empty before the demo
    assert list(redis.Redis.from_url(redis_url).scan_iter()) == []


def _processes_with_env_value(fragment: str) -> list[int]:
    """Pids whose environment mentions `fragment` (the demo gives its children RLHF_DATA_DIR=out/data)."""
    found = []
    for p in psutil.process_iter():
        try:
            if any(fragment in v for v in p.environ().values()):
                found.append(p.pid)
        except (psutil.Error, OSError):
            pass
    return found


def test_demo_stopped_by_sigterm_leaves_no_process_behind(redis_url, tiny_model_dir, tmp_path):
    import signal
    import time

    out = tmp_path / "demo"
    env = {**os.environ, "RLHF_REDIS_URL": redis_url, "RLHF_DATA_DIR": str(tmp_path / "data"),
           "VLLM_CPU_KVCACHE_SPACE": "1"}
    log = open(tmp_path / "demo.log", "w")
    proc = subprocess.Popen([str(Path(sys.executable).with_name("rlhf")), "demo", "--quick",
                             "--model", str(tiny_model_dir), "--out", str(out)],
                            env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 600
        while "server up" not in (tmp_path / "demo.log").read_text() and time.time() < deadline:
            assert proc.poll() is None, (tmp_path / "demo.log").read_text()[-2000:]
            time.sleep(0.5)
        assert _processes_with_env_value(str(out)), "the demo's children should be running now"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(120) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
    time.sleep(1)
    assert _processes_with_env_value(str(out)) == []
