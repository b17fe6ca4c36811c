"""The physical limit of feedback ingest: raw XADD rate on the same kind of Redis our server
writes to (private redis-server, appendonly yes, appendfsync everysec), compared with our HTTP
API's events/s from bench/results/ingest.json (run bench/bench_ingest.py first).

    .venv/bin/python bench/bench_redis_raw.py [--requests 200000] [--concurrency 4,8,32]

Measures, each on a fresh private Redis:
  * `redis-benchmark -c C -P 1 XADD ...`  one event per round trip (what one HTTP request per
    event can at best approach), and `-P 16` (pipelined: the limit for batches);
  * redis-py (sync, one connection): XADD one per round trip, and pipelines of 10/20/100;
  * redis-benchmark and redis-py: our own per-event Lua script (serving/feedback_store.py: idempotency check, XADD,
    vote SET, 2 HINCRBY) one per round trip and batched N events per script call, i.e. the
    Redis work our API does per event without HTTP, FastAPI and validation.
The payload is a real FeedbackEvent JSON (same size as what our API appends).
Writes bench/results/redis_raw.json.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, machine_facts, private_redis, write_result  # noqa: E402


def event_json() -> str:
    from common.events import FeedbackEvent
    return FeedbackEvent(event_id=uuid.uuid4().hex, kind="thumb", rater="u_" + "a" * 24,
                         target="resp_" + uuid.uuid4().hex + "-0",
                         response_id="resp_" + uuid.uuid4().hex + "-0",
                         rating="up").to_stream_fields()["event"]


def redis_benchmark(port: int, n: int, conc: int, pipeline: int, payload: str) -> dict:
    cmd = ["redis-benchmark", "-h", "127.0.0.1", "-p", str(port), "-n", str(n), "-c", str(conc),
           "-P", str(pipeline), "--csv", "XADD", "bench:stream", "*", "event", payload]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    # the test-name column echoes the JSON payload unescaped: read the 7 numbers from the right
    header = next(csv.reader(io.StringIO(out.splitlines()[0])))[1:]
    values = [float(v.strip('"')) for v in out.strip().splitlines()[-1].rsplit(",", 7)[1:]]
    r = dict(zip(header, values))
    return {"tool": "redis-benchmark", "concurrency": conc, "pipeline": pipeline, "requests": n,
            "events_per_s": float(r["rps"]),
            "latency_ms": {"p50": float(r["p50_latency_ms"]), "p99": float(r["p99_latency_ms"]),
                           "max": float(r["max_latency_ms"])},
            "command": " ".join(cmd[:-1] + ["<%d-byte FeedbackEvent JSON>" % len(payload)])}


def redis_benchmark_our_script(url: str, port: int, n: int, conc: int, payload: str) -> dict:
    """Our FeedbackStore Lua script, one event per EVALSHA, driven by redis-benchmark
    (random idempotency + vote keys): the Redis work per event of POST /v1/feedback."""
    import redis

    from common.keys import FEEDBACK_GROUP, KEYS
    from serving.feedback_store import _LUA
    sha = redis.Redis.from_url(url).script_load(_LUA)
    cmd = ["redis-benchmark", "-h", "127.0.0.1", "-p", str(port), "-n", str(n), "-c", str(conc),
           "-P", "1", "-r", "100000000", "--csv", "EVALSHA", sha, "4", KEYS.feedback_stream,
           KEYS.feedback_counts, KEYS.idempotency("__rand_int__"),
           KEYS.vote("u__rand_int__", "resp___rand_int__"), FEEDBACK_GROUP, "86400", "2592000",
           payload, "h" * 32, "up", "e__rand_int__"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    header = next(csv.reader(io.StringIO(out.splitlines()[0])))[1:]
    values = [float(v.strip('"')) for v in out.strip().splitlines()[-1].rsplit(",", 7)[1:]]
    r = dict(zip(header, values))
    return {"tool": "redis-benchmark", "what": "our feedback Lua script (serving/feedback_store.py)",
            "concurrency": conc, "pipeline": 1, "events_per_call": 1, "requests": n,
            "events_per_s": r["rps"],
            "latency_ms": {"p50": r["p50_latency_ms"], "p99": r["p99_latency_ms"],
                           "max": r["max_latency_ms"]},
            "command": " ".join(cmd[:-4]) + " <payload> <hash> up e__rand_int__"}


def redis_py_xadd(url: str, n: int, batch: int, payload: str) -> dict:
    import redis
    r = redis.Redis.from_url(url)
    t0 = time.perf_counter()
    done = 0
    while done < n:
        if batch == 1:
            r.xadd("bench:py", {"event": payload})
        else:
            p = r.pipeline(transaction=False)
            for _ in range(batch):
                p.xadd("bench:py", {"event": payload})
            p.execute()
        done += batch
    el = time.perf_counter() - t0
    return {"tool": "redis-py", "what": "XADD", "connections": 1, "events_per_call": batch,
            "events": done, "seconds": round(el, 3), "events_per_s": round(done / el, 1)}


def redis_py_our_script(url: str, n: int, batch: int, payload: str) -> dict:
    """Our FeedbackStore Lua script, ``batch`` events per call, fresh vote + idempotency keys."""
    import redis

    from common.keys import FEEDBACK_GROUP, KEYS
    from serving.feedback_store import _LUA
    r = redis.Redis.from_url(url)
    script = r.register_script(_LUA)
    t0 = time.perf_counter()
    done = 0
    while done < n:
        keys = [KEYS.feedback_stream, KEYS.feedback_counts]
        args: list = [FEEDBACK_GROUP, 86400, 30 * 86400]
        for j in range(batch):
            i = done + j
            keys += [KEYS.idempotency(f"k{i}"), KEYS.vote(f"u{i % 10000}", f"resp_{i}")]
            args += [payload, "h" * 32, "up", f"e{i}"]
        script(keys=keys, args=args)
        done += batch
    el = time.perf_counter() - t0
    return {"tool": "redis-py", "what": "our feedback Lua script (serving/feedback_store.py)",
            "connections": 1, "events_per_call": batch, "events": done,
            "seconds": round(el, 3), "events_per_s": round(done / el, 1)}


def compare_with_ingest(runs: list[dict]) -> dict:
    path = RESULTS / "ingest.json"
    if not path.exists():
        return {"error": "bench/results/ingest.json missing: run bench/bench_ingest.py"}
    ingest = json.loads(path.read_text())
    single = [r for r in ingest["runs"] if r["events_per_request"] == 1]
    batch = [r for r in ingest["runs"] if r["events_per_request"] > 1]
    rb = [r for r in runs if r["tool"] == "redis-benchmark" and "what" not in r]
    rb1 = [r for r in rb if r["pipeline"] == 1]
    rbp = [r for r in rb if r["pipeline"] > 1]
    lua1 = [r for r in runs if "Lua" in r.get("what", "") and r["events_per_call"] == 1]
    luab = [r for r in runs if "Lua" in r.get("what", "") and r["events_per_call"] > 1]
    best = lambda rs: max(rs, key=lambda r: r["events_per_s"]) if rs else None  # noqa: E731
    out = {"ingest_file_command": ingest.get("command"),
           "ingest_loadavg_at_start": ingest.get("machine", {}).get("loadavg_at_start")}

    def pair(label, ours, anchor):
        if ours and anchor:
            out[label] = {"ours_events_per_s": ours["events_per_s"],
                          "ours_config": {k: ours.get(k) for k in ("route", "concurrency",
                                                                    "events_per_request")},
                          "ours_p99_ms": ours["latency_ms"]["p99"],
                          "anchor_events_per_s": anchor["events_per_s"],
                          "anchor_config": {k: anchor.get(k) for k in
                                            ("tool", "what", "concurrency", "pipeline",
                                             "events_per_call")},
                          "ratio": round(ours["events_per_s"] / anchor["events_per_s"], 4)}
    pair("single_event_requests_vs_raw_xadd", best(single), best(rb1))
    pair("batch_requests_vs_pipelined_xadd", best(batch), best(rbp))
    pair("single_event_requests_vs_our_lua_per_event", best(single), best(lua1))
    pair("batch_requests_vs_our_lua_batched", best(batch), best(luab))
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=200_000, help="per redis-benchmark run")
    ap.add_argument("--py-events", type=int, default=50_000, help="per redis-py run")
    ap.add_argument("--concurrency", default="4,8,32")
    ap.add_argument("--pipeline", type=int, default=16)
    args = ap.parse_args()
    if not shutil.which("redis-benchmark"):
        raise SystemExit("redis-benchmark not found: apt-get install -y redis-tools")
    payload = event_json()
    result = {"name": "redis_raw", "command": " ".join([sys.executable] + sys.argv),
              "machine": machine_facts(),
              "redis_benchmark": subprocess.run(["redis-benchmark", "--version"], capture_output=True,
                                                text=True).stdout.strip(),
              "redis": "private redis-server, appendonly yes, appendfsync everysec (fresh per run)",
              "payload_bytes": len(payload), "runs": []}
    plan = [("rb", c, 1) for c in map(int, args.concurrency.split(","))]
    plan += [("rb", c, args.pipeline) for c in map(int, args.concurrency.split(","))]
    plan += [("lua-rb", c, 1) for c in map(int, args.concurrency.split(","))]
    plan += [("py", 0, b) for b in (1, 10, 20, 100)] + [("lua", 0, b) for b in (1, 10, 20)]
    for kind, conc, n in plan:
        with private_redis() as url:
            port = int(url.rsplit(":", 1)[1].split("/")[0])
            if kind == "rb":
                run = redis_benchmark(port, args.requests, conc, n, payload)
            elif kind == "lua-rb":
                run = redis_benchmark_our_script(url, port, args.requests // 2, conc, payload)
            elif kind == "py":
                run = redis_py_xadd(url, args.py_events, n, payload)
            else:
                run = redis_py_our_script(url, args.py_events, n, payload)
        print(json.dumps(run), flush=True)
        result["runs"].append(run)
    result["vs_our_http_api"] = compare_with_ingest(result["runs"])
    print(json.dumps(result["vs_our_http_api"], indent=1))
    print("wrote", write_result("redis_raw", result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
