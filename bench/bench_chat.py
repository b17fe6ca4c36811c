"""Chat throughput through our OpenAI-compatible API: tokens/s, requests/s, latency, TTFT.

    .venv/bin/python bench/bench_chat.py [--model DIR] [--concurrency 1,8,32] [--seconds 15]
                                         [--max-tokens 64] [--name chat]

Starts a private Redis and a real ``rlhf serve`` (default: the tiny random model; pass e.g. a
SmolLM2 safetensors folder with --model), then runs closed-loop streaming clients
(``stream: true`` + ``include_usage``). TTFT = time to the first content chunk. Writes
bench/results/<name>.json.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (CHAT_PROMPTS, cpu_seconds_by_process, group_pids, machine_facts,  # noqa: E402
                     percentile, private_redis, write_result)

PROMPTS = CHAT_PROMPTS


async def _client(url, headers, max_tokens, stop_at, out):
    import httpx
    i = 0
    async with httpx.AsyncClient(timeout=300, headers=headers) as c:
        while time.perf_counter() < stop_at:
            body = {"model": "policy", "stream": True, "max_tokens": max_tokens,
                    "temperature": 0.8, "stream_options": {"include_usage": True},
                    "messages": [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}]}
            i += 1
            t0 = time.perf_counter()
            ttft, tokens, ok = None, 0, False
            try:
                async with c.stream("POST", url, json=body) as res:
                    async for line in res.aiter_lines():
                        if not line.startswith("data: ") or line == "data: [DONE]":
                            continue
                        chunk = json.loads(line[6:])
                        if ttft is None and chunk.get("choices") and \
                                chunk["choices"][0].get("delta", {}).get("content"):
                            ttft = time.perf_counter() - t0
                        if chunk.get("usage"):
                            tokens = chunk["usage"]["completion_tokens"]
                            ok = True
            except Exception as exc:  # counted, not hidden
                out["errors"].append(repr(exc))
                continue
            if not ok:
                out["errors"].append("stream ended without usage")
                continue
            out["latency"].append(time.perf_counter() - t0)
            out["ttft"].append(ttft if ttft is not None else time.perf_counter() - t0)
            out["tokens"] += tokens


async def run(url, headers, concurrency, seconds, max_tokens):
    out = {"latency": [], "ttft": [], "tokens": 0, "errors": []}
    t0 = time.perf_counter()
    await asyncio.gather(*[_client(url, headers, max_tokens, t0 + seconds, out)
                           for _ in range(concurrency)])
    elapsed = time.perf_counter() - t0
    ms = lambda xs, p: round(percentile(xs, p) * 1e3, 1)  # noqa: E731
    return {"concurrency": concurrency, "max_tokens": max_tokens, "seconds": round(elapsed, 2),
            "requests": len(out["latency"]), "errors": len(out["errors"]),
            "error_samples": out["errors"][:3],
            "requests_per_s": round(len(out["latency"]) / elapsed, 2),
            "completion_tokens_per_s": round(out["tokens"] / elapsed, 1),
            "mean_completion_tokens": round(out["tokens"] / max(1, len(out["latency"])), 1),
            "latency_ms": {"p50": ms(out["latency"], 50), "p99": ms(out["latency"], 99)},
            "ttft_ms": {"p50": ms(out["ttft"], 50), "p99": ms(out["ttft"], 99)}}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", help="model folder (default: a tiny random model)")
    ap.add_argument("--concurrency", default="1,8,32")
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--name", default=None, help="result file name (default chat[_<model>])")
    args = ap.parse_args()

    from tests.helpers.server import running_server

    tmp = Path(tempfile.mkdtemp(prefix="bench-chat-"))
    try:
        model = args.model
        if not model:
            from common.tiny_model import build_tiny_model
            model = str(build_tiny_model(tmp / "tiny"))
        name = args.name or ("chat" if not args.model else f"chat_{Path(model).name}")
        result = {"name": name, "command": " ".join([sys.executable] + sys.argv),
                  "machine": machine_facts(),
                  "model": "tiny random Llama (hidden 128, 2 layers, vocab 512)"
                  if not args.model else model,
                  "engine": "vllm AsyncLLM, fp32, enforce_eager, max_num_seqs 64",
                  "client": "httpx async, streaming with include_usage, closed loop",
                  "runs": []}
        with private_redis() as redis_url:
            env = dict(os.environ, RLHF_REDIS_URL=redis_url, RLHF_DATA_DIR=str(tmp / "data"),
                       RLHF_TEST_LOG_LEVEL="warning")
            with running_server(env, model_dir=model, log_dir=tmp) as srv:
                url = srv.v1 + "/chat/completions"
                watch = group_pids(srv.proc.pid)
                asyncio.run(run(url, {}, 2, 3.0, args.max_tokens))  # warm-up
                for conc in [int(x) for x in args.concurrency.split(",")]:
                    cpu0 = cpu_seconds_by_process(watch)
                    res = asyncio.run(run(url, {}, conc, args.seconds, args.max_tokens))
                    cpu1 = cpu_seconds_by_process(watch)
                    res["cpu_cores_used"] = {k: round((cpu1[k] - cpu0.get(k, 0)) /
                                                      res["seconds"], 2) for k in cpu1}
                    result["runs"].append(res)
                    print(json.dumps(res))
        print("wrote", write_result(name, result))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
