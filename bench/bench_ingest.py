"""Feedback ingest: events/s and latency with N concurrent clients through our HTTP API.

    .venv/bin/python bench/bench_ingest.py [--seconds 10] [--concurrency 4,8,32] [--batch 10,20]
                                           [--ingest-workers N]

Starts a private redis-server (AOF on, appendfsync everysec) and a real ``rlhf serve`` on the
tiny model, creates answers, then drives POST /v1/feedback (one event per request) and
POST /v1/feedback/batch (``--batch`` events per request) with a raw keep-alive HTTP client in
a separate process. Writes bench/results/ingest.json. ``--group-commit 1,128`` measures the
ingest processes without and with shared Redis round trips (RLHF_REDIS_GROUP_COMMIT) in one run;
``--direct-routes 0,1`` the feedback POSTs through FastAPI and on serving/direct_routes.py's path.

``--ingest-workers N`` (N > 0) also starts ``rlhf ingest --workers N`` on another port against
the same Redis and drives the feedback load at it instead (the answers are still created
through ``rlhf serve``, which stays up, idle, as in a deployment); 0 (default) = the feedback
routes of ``rlhf serve`` itself. The result's ``path`` says which.

Trust settings (issue 12): the bench posts votes with a `user` field, as a product's back end
would, so its key is a trusted back-end key (RLHF_TRUSTED_API_KEYS; others get 403 for `user`),
and the per-key feedback quota is off (RLHF_RATE_LIMIT_FEEDBACK_KEY="": one key sends far more
than 6000 events/minute here). The per-rater quota stays on (100,000 raters, below it even over
several --group-commit values: at 10,000 the second value's batch runs met 429s), so
its Redis check is part of what is measured.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import random
import shutil
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (cpu_seconds_by_process, group_pids, machine_facts,  # noqa: E402
                     percentile, private_redis, raw_post, run_load, write_result)

API_KEY = "bench-key"
RATERS = 100_000


def _load_proc(q, host, port, reqs, conc, seconds):
    cpu0 = time.process_time()
    lat, errors, elapsed = run_load(host, port, reqs, conc, seconds)
    # the load generator shares the machine's cores with the servers: its share is reported too
    q.put((lat, errors, elapsed, time.process_time() - cpu0))


def measure(port, reqs, conc, seconds, events_per_request, watch_pids=()):
    cpu0 = cpu_seconds_by_process(list(watch_pids))
    q = mp.get_context("spawn").Queue()
    p = mp.get_context("spawn").Process(target=_load_proc,
                                        args=(q, "127.0.0.1", port, reqs, conc, seconds))
    p.start()
    lat, errors, elapsed, client_cpu = q.get()
    p.join()
    cpu1 = cpu_seconds_by_process(list(watch_pids))
    n = len(lat)
    # CPU share of each server-side process during the run (1.0 = one full core)
    cpu = {k: round((cpu1[k] - cpu0.get(k, 0.0)) / elapsed, 2) for k in cpu1}
    cpu["load client"] = round(client_cpu / elapsed, 2)
    return {"concurrency": conc, "events_per_request": events_per_request,
            "requests": n, "errors": len(errors), "error_samples": errors[:3],
            "seconds": round(elapsed, 3),
            "requests_per_s": round(n / elapsed, 1),
            "events_per_s": round(n * events_per_request / elapsed, 1),
            "latency_ms": {"p50": round(percentile(lat, 50) * 1e3, 2),
                           "p90": round(percentile(lat, 90) * 1e3, 2),
                           "p99": round(percentile(lat, 99) * 1e3, 2),
                           "max": round(max(lat) * 1e3, 2) if lat else None},
            "cpu_cores_used": cpu}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", help="model folder (default: a tiny random model)")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--concurrency", default="4,8,32")
    ap.add_argument("--batch", default="10,20", help="events per batch request (list; \"\" = single events only)")
    ap.add_argument("--answers", type=int, default=256)
    ap.add_argument("--ingest-workers", type=int, default=0,
                    help="N > 0: post feedback to `rlhf ingest --workers N` (own port, same "
                         "Redis) instead of to `rlhf serve`")
    ap.add_argument("--group-commit", default="128",
                    help="RLHF_REDIS_GROUP_COMMIT values to measure in turn (list; 1 = each request "
                         "its own Redis round trips, needs --ingest-workers to restart per value)")
    ap.add_argument("--direct-routes", default="1",
                    help="RLHF_DIRECT_ROUTES values to measure in turn (list of 0/1: feedback POSTs "
                         "through FastAPI, or on serving/direct_routes.py's path; several need "
                         "--ingest-workers)")
    args = ap.parse_args()
    for name in ("group_commit", "direct_routes"):
        if "," in getattr(args, name) and not args.ingest_workers:
            ap.error(f"--{name.replace('_', '-')} with several values needs --ingest-workers "
                     "(rlhf serve is started once)")

    import httpx
    import redis

    from common.keys import KEYS
    from tests.helpers.server import running_ingest, running_server

    tmp = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    model = args.model
    if not model:
        from common.tiny_model import build_tiny_model
        model = str(build_tiny_model(tmp / "tiny"))
    results = {"name": "ingest", "command": " ".join([sys.executable] + sys.argv),
               "machine": machine_facts(), "model": model,
               "redis": "private redis-server, appendonly yes, appendfsync everysec",
               "server": "one `rlhf serve` process (uvicorn, uvloop, httptools)",
               "path": (f"rlhf ingest --workers {args.ingest_workers}" if args.ingest_workers
                        else "rlhf serve"),
               "ingest_workers": args.ingest_workers,
               "client": "raw HTTP/1.1 keep-alive, asyncio+uvloop, separate process",
               "trust": "one trusted back-end key naming the rater with `user`; per-key "
                        "feedback quota off, per-rater quota on",
               "runs": []}
    with private_redis() as redis_url:
        env = dict(os.environ, RLHF_REDIS_URL=redis_url, RLHF_DATA_DIR=str(tmp / "data"),
                   RLHF_API_KEYS=API_KEY, RLHF_TRUSTED_API_KEYS=API_KEY,
                   RLHF_RATE_LIMIT_FEEDBACK_KEY="", RLHF_MAX_MODEL_LEN="256",
                   RLHF_TEST_LOG_LEVEL="warning",
                   RLHF_REDIS_GROUP_COMMIT=args.group_commit.split(",")[0],
                   RLHF_DIRECT_ROUTES=args.direct_routes.split(",")[0])
        with running_server(env, model_dir=model, log_dir=tmp) as srv, ExitStack() as stack:
            ids: list[str] = []
            with httpx.Client(timeout=120, headers=srv.headers()) as c:
                while len(ids) < args.answers:
                    res = c.post(srv.v1 + "/chat/completions", json={
                        "messages": [{"role": "user", "content": f"q{len(ids)}"}],
                        "max_tokens": 1, "n": 8})
                    ids += [ch["response_id"] for ch in res.json()["choices"]]
            auth = {"Authorization": f"Bearer {API_KEY}"}
            rng = random.Random(0)
            single = [raw_post("/v1/feedback", json.dumps({
                "response_id": rng.choice(ids), "rating": rng.choice(["up", "down"]),
                "user": f"user{rng.randrange(RATERS)}"}).encode(), auth) for _ in range(4096)]
            batches = {b: [raw_post("/v1/feedback/batch", json.dumps({"items": [{
                "response_id": rng.choice(ids), "rating": rng.choice(["up", "down"]),
                "user": f"user{rng.randrange(RATERS)}"} for _ in range(b)]}).encode(),
                auth) for _ in range(2048)] for b in [int(x) for x in args.batch.split(",") if x]}
            if args.ingest_workers:
                results["server"] += (f"; feedback to `rlhf ingest --workers "
                                      f"{args.ingest_workers}` (uvicorn workers, own port)")
            variants = [(int(g), int(d)) for g in args.group_commit.split(",")
                        for d in args.direct_routes.split(",")]
            for group_commit, direct in variants:
                with ExitStack() as per_value:
                    run_env = dict(env, RLHF_REDIS_GROUP_COMMIT=str(group_commit),
                                   RLHF_DIRECT_ROUTES=str(direct))
                    target = srv  # where the feedback load goes
                    if args.ingest_workers:
                        target = per_value.enter_context(running_ingest(
                            run_env, workers=args.ingest_workers, log_dir=tmp))
                    # both server groups: the idle `rlhf serve`'s share shows it is out of the path
                    watch = group_pids(srv.proc.pid) + [private_redis.pid]
                    if target is not srv:
                        watch += group_pids(target.proc.pid)
                    warmup = measure(target.port, single, 8, 2.0, 1)
                    results["warmup_events"] = results.get("warmup_events", 0) + warmup["requests"]
                    for conc in [int(x) for x in args.concurrency.split(",")]:
                        run = measure(target.port, single, conc, args.seconds, 1, watch)
                        run.update(route="/v1/feedback", group_commit=group_commit,
                                   direct_routes=bool(direct))
                        results["runs"].append(run)
                        print(json.dumps(run))
                    for b, reqs in batches.items():
                        for conc in [int(x) for x in args.concurrency.split(",")]:
                            run = measure(target.port, reqs, conc, args.seconds, b, watch)
                            run.update(route="/v1/feedback/batch", group_commit=group_commit,
                                       direct_routes=bool(direct))
                            results["runs"].append(run)
                            print(json.dumps(run))
            r = redis.Redis.from_url(redis_url)
            results["stream_length"] = r.xlen(KEYS.feedback_stream)
            results["counts_total"] = int(r.hget(KEYS.feedback_counts, "total") or 0)
            # every answered request is an accepted event: the stream must hold them all
            results["accepted_by_server"] = results["warmup_events"] + sum(
                x["requests"] * x["events_per_request"] for x in results["runs"])
    results["target"] = {"events_per_s": 5000, "p99_ms": 20}
    shutil.rmtree(tmp, ignore_errors=True)
    # one file per path, so a run through `rlhf serve` and one through `rlhf ingest` sit side by side
    print("wrote", write_result("ingest" if not args.ingest_workers else f"ingest-{args.ingest_workers}w",
                                results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
