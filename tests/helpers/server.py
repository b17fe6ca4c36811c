"""Start ``rlhf serve`` as a real subprocess for end-to-end tests, and always clean it up.

    with running_server(env, model_dir=tiny_model_dir) as srv:
        httpx.get(srv.url + "/health")

The server runs in its own process group (it spawns vLLM engine processes); on exit the whole
group gets SIGTERM, then SIGKILL if it lingers, so no test leaves an orphan behind.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from common.identity import parse_keys
from demo.stack import free_port, stop_process_group  # noqa: F401  (re-exported for tests)

REPO = Path(__file__).resolve().parents[2]


def rlhf_executable() -> str:
    exe = Path(sys.executable).parent / "rlhf"
    return str(exe) if exe.exists() else "rlhf"


@dataclass
class RunningServer:
    url: str
    port: int
    proc: subprocess.Popen
    log_path: Path
    api_key: str | None = None

    @property
    def v1(self) -> str:
        return self.url + "/v1"

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def log_tail(self, n: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def health(self) -> dict:
        return httpx.get(self.url + "/health", timeout=10).json()


def wait_healthy(srv: RunningServer, what: str, timeout_s: float, poll_s: float) -> None:
    """Until /health answers 200; raises with the log's tail if the process exits first or
    `timeout_s` passes."""
    deadline = time.monotonic() + timeout_s
    while True:
        if srv.proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {srv.proc.returncode}:\n{srv.log_tail()}")
        try:
            if httpx.get(srv.url + "/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not healthy after {timeout_s}s:\n{srv.log_tail()}")
        time.sleep(poll_s)


@contextmanager
def _running(what: str, cmd: list[str], env: dict[str, str], port: int, startup_timeout_s: float,
             poll_s: float, log_dir: str | Path | None):
    """Start `cmd` in its own process group, log to a file, yield a ``RunningServer`` once
    /health is OK; stop the whole group on exit. A clean run's own log folder is removed; a
    failed run's log is kept for whoever debugs it."""
    own_log_dir = log_dir is None
    name = what.split()[-1]
    log_dir = Path(log_dir or tempfile.mkdtemp(prefix=f"rlhf-{name}-"))
    log_path = log_dir / f"{name}-{port}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    keys = [k for k, _ in parse_keys(env.get("RLHF_API_KEYS", ""))]   # `key:account` -> key
    srv = RunningServer(f"http://127.0.0.1:{port}", port, proc, log_path,
                        keys[0] if keys else None)
    try:
        wait_healthy(srv, what, startup_timeout_s, poll_s)
        yield srv
    except BaseException:
        own_log_dir = False
        raise
    finally:
        stop_process_group(proc)
        if own_log_dir:
            shutil.rmtree(log_dir, ignore_errors=True)


@contextmanager
def running_server(env: dict[str, str], model_dir: str | Path | None = None,
                   port: int | None = None, extra_args: list[str] | None = None,
                   startup_timeout_s: float = 240.0, log_dir: str | Path | None = None):
    """Run ``rlhf serve`` until the block exits; yields a ``RunningServer`` once /health is OK.

    ``env`` is the full environment (e.g. the ``rlhf_env`` fixture). A small vLLM KV cache
    (VLLM_CPU_KVCACHE_SPACE=1 GiB) is set unless given: the test machine is shared.
    """
    port = port or free_port()
    env = dict(env)
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    env.setdefault("PYTHONUNBUFFERED", "1")
    cmd = [rlhf_executable(), "serve", "--host", "127.0.0.1", "--port", str(port),
           "--log-level", env.get("RLHF_TEST_LOG_LEVEL", "info")]
    if model_dir is not None:
        cmd += ["--model", str(model_dir)]
    cmd += list(extra_args or [])
    with _running("rlhf serve", cmd, env, port, startup_timeout_s, 0.5, log_dir) as srv:
        yield srv


@contextmanager
def running_ingest(env: dict[str, str], workers: int = 2, port: int | None = None,
                   startup_timeout_s: float = 60.0, log_dir: str | Path | None = None):
    """Run ``rlhf ingest --workers N`` until the block exits; yields a ``RunningServer`` once
    /health is OK. Stopped with its process group (the uvicorn supervisor and its workers)."""
    port = port or free_port()
    env = dict(env, PYTHONUNBUFFERED="1")
    # `python -m cli.main` from REPO, not the venv's `rlhf` script: the code of this checkout
    # even when the venv's editable install points at another one (a git worktree)
    env["PYTHONPATH"] = str(REPO) + (":" + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    cmd = [sys.executable, "-m", "cli.main", "ingest", "--host", "127.0.0.1",
           "--port", str(port), "--workers", str(workers),
           "--log-level", env.get("RLHF_TEST_LOG_LEVEL", "info")]
    with _running("rlhf ingest", cmd, env, port, startup_timeout_s, 0.2, log_dir) as srv:
        yield srv
