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
    own_log_dir = log_dir is None  # ours to remove after a clean run
    log_dir = Path(log_dir or tempfile.mkdtemp(prefix="rlhf-serve-"))
    log_path = log_dir / f"serve-{port}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    keys = [k for k, _ in parse_keys(env.get("RLHF_API_KEYS", ""))]   # `key:account` -> key
    srv = RunningServer(f"http://127.0.0.1:{port}", port, proc, log_path,
                        keys[0] if keys else None)
    try:
        deadline = time.monotonic() + startup_timeout_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"rlhf serve exited with {proc.returncode}:\n"
                                   f"{srv.log_tail()}")
            try:
                if httpx.get(srv.url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"rlhf serve not healthy after {startup_timeout_s}s:\n"
                                   f"{srv.log_tail()}")
            time.sleep(0.5)
        yield srv
    except BaseException:
        own_log_dir = False  # keep the log of a failed run for whoever debugs it
        raise
    finally:
        stop_process_group(proc)
        if own_log_dir:
            shutil.rmtree(log_dir, ignore_errors=True)
