"""vLLM's own OpenAI server (`python -m vllm.entrypoints.openai.api_server`, what `vllm serve`
runs) in its own process group, for side-by-side checks against `rlhf serve`: the parity test
(tests/serving/test_vllm_parity.py) and the serving bench (bench/bench_vs_vllm.py)."""
from __future__ import annotations

import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import httpx

from tests.helpers.server import REPO, free_port, stop_process_group


def vllm_command(model: str | Path, port: int, engine: dict) -> list[str]:
    """The flags that give vLLM's server our engine settings (serving/engine.py): fp32,
    enforce_eager, the same memory share, sequence cap, prefix caching and context length; and
    `--generation-config vllm`, because ours ignores the checkpoint's sampling defaults too."""
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model),
           "--host", "127.0.0.1", "--port", str(port), "--dtype", engine["dtype"],
           "--max-model-len", str(engine["max_model_len"]),
           "--gpu-memory-utilization", str(engine["gpu_memory_utilization"]),
           "--max-num-seqs", str(engine["max_num_seqs"]),
           "--served-model-name", engine["served_model_name"], "--generation-config", "vllm",
           "--disable-log-stats", "--disable-uvicorn-access-log", "--uvicorn-log-level", "warning"]
    if engine.get("enforce_eager", True):
        cmd.append("--enforce-eager")
    if engine.get("enable_prefix_caching", True):
        cmd.append("--enable-prefix-caching")
    return cmd


def _tail(path: Path, n: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


@contextmanager
def running_vllm_serve(model: str | Path, env: dict, log_dir: str | Path, engine: dict,
                       startup_timeout_s: float = 400):
    """Yields (base URL, Popen) once /health answers 200; the whole process group is stopped on
    exit (the engine core is a child process)."""
    port = free_port()
    cmd = vllm_command(model, port, engine)
    log_path = Path(log_dir) / f"vllm-{port}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + startup_timeout_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"vllm serve exited with {proc.returncode}:\n{_tail(log_path)}")
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"vllm serve not healthy after {startup_timeout_s}s:\n"
                                   f"{_tail(log_path)}")
            time.sleep(0.5)
        yield url, proc
    finally:
        stop_process_group(proc)
