"""Serving overhead: our `rlhf serve` (answers stored in Redis) vs vLLM's own OpenAI server,
same model, same engine settings, same load generator, one after the other (never both at once).

    .venv/bin/python bench/bench_vs_vllm.py --model tiny      [--concurrency 1,8,32] [--seconds 20]
    .venv/bin/python bench/bench_vs_vllm.py --model smollm2   [--max-tokens 64] [--rounds 1]

Load: closed-loop keep-alive HTTP/1.1 clients (raw asyncio + uvloop, in a separate process, so a
Python HTTP library is not the bottleneck) POSTing /v1/chat/completions with fixed prompts,
fixed max_tokens, temperature 0 and seed 0, in two modes per concurrency level:
  * ``plain``  (stream false): requests/s, completion tokens/s, latency p50/p99;
  * ``stream`` (stream true + include_usage): the same plus time to first content token.
`ignore_eos` is not sent: our API does not implement it (unknown fields are ignored); greedy
decoding of the same weights makes both servers produce the same tokens, and the mean
completion tokens per request of both are recorded to show it.

Engine settings are those of serving/engine.py + common/settings.py: fp32, enforce_eager,
gpu_memory_utilization 0.3, max_num_seqs 64, prefix caching on, max_model_len 1024; both get
the same VLLM_CPU_KVCACHE_SPACE. vLLM's server gets `--generation-config vllm` because ours
ignores the checkpoint's generation_config defaults too. Writes bench/results/vs_vllm_<model>.json.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (CHAT_PROMPTS, REPO, cpu_seconds_by_process, group_pids,  # noqa: E402
                     machine_facts, percentile, private_redis, write_result)

PROMPTS = CHAT_PROMPTS
ENGINE = {"dtype": "float32", "enforce_eager": True, "gpu_memory_utilization": 0.3,
          "max_num_seqs": 64, "enable_prefix_caching": True, "max_model_len": 1024,
          "served_model_name": "policy"}


# ---------------------------------------------------------------- load generator (raw HTTP)
def chat_request(i: int, max_tokens: int, stream: bool) -> bytes:
    body = {"model": "policy", "messages": [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}],
            "max_tokens": max_tokens, "temperature": 0.0, "seed": 0, "stream": stream}
    if stream:
        body["stream_options"] = {"include_usage": True}
    data = json.dumps(body).encode()
    return (b"POST /v1/chat/completions HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
            b"Content-Length: " + str(len(data)).encode() + b"\r\n\r\n" + data)


async def _read_body(reader, head: bytes):
    """Yield body pieces as they arrive (chunked or Content-Length)."""
    low = head.lower()
    if b"transfer-encoding: chunked" in low:
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                return
            yield await reader.readexactly(size)
            await reader.readexactly(2)
    length = 0
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    if length:
        yield await reader.readexactly(length)


async def _one(reader, writer, req: bytes, stream: bool):
    """One request: returns (latency, ttft or None, completion_tokens, prompt_tokens, error)."""
    t0 = time.perf_counter()
    writer.write(req)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    ttft, usage, buf, err = None, None, b"", None
    async for piece in _read_body(reader, head):
        if not stream:
            buf += piece
            continue
        buf += piece
        while b"\n\n" in buf:
            event, buf = buf.split(b"\n\n", 1)
            for line in event.split(b"\n"):
                if not line.startswith(b"data: ") or line == b"data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if ttft is None and chunk.get("choices") and \
                        (chunk["choices"][0].get("delta") or {}).get("content"):
                    ttft = time.perf_counter() - t0
                if chunk.get("usage"):
                    usage = chunk["usage"]
    lat = time.perf_counter() - t0
    if status != 200:
        return lat, None, 0, 0, f"{status} {buf[:200]!r}"
    if not stream:
        usage = json.loads(buf).get("usage")
    if not usage:
        return lat, None, 0, 0, "no usage in answer"
    return lat, ttft, usage["completion_tokens"], usage["prompt_tokens"], err


async def _client(host, port, idx, conc, max_tokens, stream, stop_at, out):
    reader, writer = await asyncio.open_connection(host, port)
    reqs = [chat_request(i, max_tokens, stream) for i in range(len(PROMPTS))]
    i = idx  # each client starts at a different prompt, then walks through all of them
    try:
        while time.perf_counter() < stop_at:
            try:
                lat, ttft, ctoks, ptoks, err = await _one(reader, writer, reqs[i % len(reqs)], stream)
            except (ConnectionError, asyncio.IncompleteReadError) as exc:
                out["errors"].append(repr(exc))
                writer.close()
                reader, writer = await asyncio.open_connection(host, port)
                continue
            i += 1
            if err:
                out["errors"].append(err)
                continue
            out["latency"].append(lat)
            if ttft is not None:
                out["ttft"].append(ttft)
            out["completion_tokens"] += ctoks
            out["prompt_tokens"] += ptoks
    finally:
        writer.close()


def _load(q, host, port, conc, seconds, max_tokens, stream):
    import uvloop

    out = {"latency": [], "ttft": [], "completion_tokens": 0, "prompt_tokens": 0, "errors": []}

    async def main():
        t0 = time.perf_counter()
        await asyncio.gather(*[_client(host, port, i, conc, max_tokens, stream, t0 + seconds, out)
                               for i in range(conc)])
        return time.perf_counter() - t0

    out["elapsed"] = uvloop.run(main())
    q.put(out)


def measure(port, conc, seconds, max_tokens, stream, watch=()) -> dict:
    """Closed-loop load from a separate process; summary dict of the run."""
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    cpu0 = cpu_seconds_by_process(list(watch))
    p = ctx.Process(target=_load, args=(q, "127.0.0.1", port, conc, seconds, max_tokens, stream))
    p.start()
    out = q.get()
    p.join()
    cpu1 = cpu_seconds_by_process(list(watch))
    el, n = out["elapsed"], len(out["latency"])
    ms = lambda xs, p: round(percentile(xs, p) * 1e3, 1) if xs else None  # noqa: E731
    res = {"mode": "stream" if stream else "plain", "concurrency": conc, "max_tokens": max_tokens,
           "seconds": round(el, 2), "requests": n, "errors": len(out["errors"]),
           "error_samples": out["errors"][:3],
           "requests_per_s": round(n / el, 2),
           "completion_tokens_per_s": round(out["completion_tokens"] / el, 1),
           "mean_completion_tokens": round(out["completion_tokens"] / max(1, n), 2),
           "mean_prompt_tokens": round(out["prompt_tokens"] / max(1, n), 2),
           "latency_ms": {"p50": ms(out["latency"], 50), "p99": ms(out["latency"], 99)}}
    if stream:
        res["ttft_ms"] = {"p50": ms(out["ttft"], 50), "p99": ms(out["ttft"], 99)}
    if watch:
        # server-side CPU (1.0 = one core), summed over the server's process group
        res["server_cpu_cores"] = round(sum(cpu1[k] - cpu0.get(k, 0.0) for k in cpu1) / el, 2)
        by_name: dict[str, float] = {}
        for k in cpu1:
            name = k.split(":", 1)[1]
            by_name[name] = by_name.get(name, 0.0) + (cpu1[k] - cpu0.get(k, 0.0)) / el
        res["server_cpu_cores_by_process"] = {k: round(v, 2) for k, v in sorted(by_name.items())}
    return res


# ---------------------------------------------------------------- servers
def run_server_suite(port, pgid, args) -> list[dict]:
    watch = group_pids(pgid)
    # identical warm-up for both servers: a few seconds of both modes at moderate concurrency
    measure(port, 4, args.warmup, args.max_tokens, True)
    measure(port, 4, args.warmup, args.max_tokens, False)
    runs = []
    for conc in [int(x) for x in args.concurrency.split(",")]:
        for mode in args.modes.split(","):
            res = measure(port, conc, args.seconds, args.max_tokens, mode == "stream", watch)
            print(json.dumps(res), flush=True)
            runs.append(res)
    return runs


def run_ours(model, env, tmp, args) -> tuple[list[dict], dict]:
    import redis

    from tests.helpers.server import running_server
    with private_redis() as redis_url:
        e = dict(env, RLHF_REDIS_URL=redis_url, RLHF_DATA_DIR=str(tmp / "data"),
                 RLHF_MAX_MODEL_LEN=str(ENGINE["max_model_len"]), RLHF_TEST_LOG_LEVEL="warning",
                 RLHF_DTYPE=ENGINE["dtype"], RLHF_ENFORCE_EAGER="true",
                 RLHF_GPU_MEMORY_UTILIZATION=str(ENGINE["gpu_memory_utilization"]),
                 RLHF_MAX_NUM_SEQS=str(ENGINE["max_num_seqs"]))
        e.pop("RLHF_API_KEYS", None)
        with running_server(e, model_dir=model, log_dir=tmp, startup_timeout_s=400) as srv:
            runs = run_server_suite(srv.port, srv.proc.pid, args)
            time.sleep(1.5)  # let the answer store's flusher catch up before counting
            r = redis.Redis.from_url(redis_url)
            stored = sum(1 for _ in r.scan_iter(match="*:answer:*", count=1000))
        cmd = f"rlhf serve --model {model} (RLHF_MAX_MODEL_LEN={ENGINE['max_model_len']}, Redis AOF everysec)"
    return runs, {"command": cmd, "answers_stored_in_redis": stored}


def run_raw(model, env, tmp, args) -> tuple[list[dict], dict]:
    from tests.helpers.vllm_server import running_vllm_serve, vllm_command
    with running_vllm_serve(model, env, tmp, ENGINE) as (url, proc):
        port = int(url.rsplit(":", 1)[1])
        runs = run_server_suite(port, proc.pid, args)
    return runs, {"command": " ".join(vllm_command(model, port, ENGINE))}


def ratios(ours: list[dict], raw: list[dict]) -> list[dict]:
    out = []
    for a in ours:
        b = next((x for x in raw if x["mode"] == a["mode"] and x["concurrency"] == a["concurrency"]), None)
        if not b:
            continue
        div = lambda x, y: round(x / y, 3) if x is not None and y else None  # noqa: E731
        row = {"mode": a["mode"], "concurrency": a["concurrency"],
               "tokens_per_s": div(a["completion_tokens_per_s"], b["completion_tokens_per_s"]),
               "requests_per_s": div(a["requests_per_s"], b["requests_per_s"]),
               "latency_p50": div(a["latency_ms"]["p50"], b["latency_ms"]["p50"]),
               "latency_p99": div(a["latency_ms"]["p99"], b["latency_ms"]["p99"]),
               "same_mean_completion_tokens": abs(a["mean_completion_tokens"] - b["mean_completion_tokens"]) < 0.5,
               "same_mean_prompt_tokens": abs(a["mean_prompt_tokens"] - b["mean_prompt_tokens"]) < 0.5}
        if a["mode"] == "stream":
            row["ttft_p50"] = div(a["ttft_ms"]["p50"], b["ttft_ms"]["p50"])
            row["ttft_p99"] = div(a["ttft_ms"]["p99"], b["ttft_ms"]["p99"])
        row["throughput_goal_met"] = row["tokens_per_s"] is not None and row["tokens_per_s"] >= 0.95
        row["p99_goal_met"] = row["latency_p99"] is not None and row["latency_p99"] <= 1.10
        out.append(row)
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="tiny", help="'tiny', 'smollm2' or a model folder")
    ap.add_argument("--concurrency", default="1,8,32")
    ap.add_argument("--modes", default="plain,stream")
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--warmup", type=float, default=4.0)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=1,
                    help="raw, ours, raw, ours ... (alternating cancels slow drifts of a shared machine)")
    ap.add_argument("--kv-cache-gib", default="1", help="VLLM_CPU_KVCACHE_SPACE for both servers")
    ap.add_argument("--name", default=None)
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench-vs-vllm-"))
    try:
        if args.model == "tiny":
            from common.tiny_model import build_tiny_model
            model, label = str(build_tiny_model(tmp / "tiny")), "tiny"
            desc = "tiny random Llama (hidden 128, 2 layers, vocab 512)"
        elif args.model == "smollm2":
            from common.smollm2 import ensure_smollm2
            model, label = str(ensure_smollm2(REPO / ".rlhf-data")), "smollm2"
            desc = "SmolLM2-135M-Instruct (fp32)"
        else:
            model, label, desc = args.model, Path(args.model).name, args.model
        name = args.name or f"vs_vllm_{label}"
        env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE=args.kv_cache_gib, PYTHONUNBUFFERED="1")
        # the core reservation `rlhf serve` picks on this host (common/cpu_cores.py), given to both
        # servers so they compute on the same cores; set in env, ours keeps it as it is
        from common.cpu_cores import RESERVED_ENV, no_reserved_core
        from common.settings import Settings
        if no_reserved_core(env, os.sched_getaffinity(0), Settings().cpu_all_cores_max):
            env[RESERVED_ENV] = "0"
        result = {"name": name, "command": " ".join([sys.executable] + sys.argv),
                  "machine": machine_facts(), "model": desc, "model_dir": model,
                  "engine_settings": ENGINE, "env": {"VLLM_CPU_KVCACHE_SPACE": args.kv_cache_gib,
                                                     RESERVED_ENV: env.get(RESERVED_ENV, "unset (vLLM's default)")},
                  "load": {"client": "raw HTTP/1.1 keep-alive, asyncio+uvloop, separate process, closed loop",
                           "prompts": len(PROMPTS), "max_tokens": args.max_tokens,
                           "temperature": 0.0, "seed": 0, "ignore_eos": "not sent (unsupported by ours)",
                           "seconds_per_run": args.seconds, "warmup_s_per_mode": args.warmup},
                  "goal": {"throughput_ratio_min": 0.95, "p99_ratio_max": 1.10},
                  "rounds": []}
        for rnd in range(args.rounds):
            print(f"round {rnd + 1}: vLLM's own server", flush=True)
            raw, raw_info = run_raw(model, env, tmp, args)
            print(f"round {rnd + 1}: rlhf serve", flush=True)
            ours, ours_info = run_ours(model, env, tmp, args)
            result["rounds"].append({"raw_vllm": {**raw_info, "runs": raw},
                                     "ours": {**ours_info, "runs": ours}})
        # the summary uses the best round of each side per (mode, concurrency): noise only slows
        best = lambda side: [max((r[side]["runs"][i] for r in result["rounds"]),  # noqa: E731
                                 key=lambda x: x["completion_tokens_per_s"])
                             for i in range(len(result["rounds"][0][side]["runs"]))]
        result["ours"], result["raw_vllm"] = best("ours"), best("raw_vllm")
        result["ratios_ours_over_raw"] = ratios(result["ours"], result["raw_vllm"])
        result["machine"]["loadavg_at_end"] = os.getloadavg()
        for row in result["ratios_ours_over_raw"]:
            print(json.dumps(row))
        print("wrote", write_result(name, result))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally/cleanup paths
    sys.exit(main())
