"""Start the real parts (redis if needed, API server, Celery worker, beat) as separate
processes, and stop every one of them — including their children — on exit or Ctrl-C.

Each process gets its own session (process group), so stopping it signals the whole group:
vLLM's engine-core process and Celery's pool children go with their parent.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import redis


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def redis_reachable(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1).ping())
    except redis.RedisError:
        return False


class Stack:
    def __init__(self, log_dir: Path, env: dict[str, str]):
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.env = dict(env)
        self.procs: list[tuple[str, subprocess.Popen]] = []

    def start(self, name: str, argv: list[str]) -> subprocess.Popen:
        log = open(self.log_dir / f"{name}.log", "ab")
        proc = subprocess.Popen(argv, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        self.procs.append((name, proc))
        return proc

    def rlhf(self, name: str, *args: str) -> subprocess.Popen:
        exe = str(Path(sys.executable).with_name("rlhf"))
        return self.start(name, [exe, *args])

    def ensure_redis(self, url: str) -> str:
        """`url` if a Redis answers there, else a private redis-server (AOF on) started here."""
        if redis_reachable(url):
            return url
        if not shutil.which("redis-server"):
            raise RuntimeError(f"no Redis at {url} and no redis-server binary to start one")
        port = free_port()
        data = self.log_dir / "redis"
        data.mkdir(exist_ok=True)
        self.start("redis", ["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                             "--dir", str(data), "--appendonly", "yes", "--save", ""])
        url = f"redis://127.0.0.1:{port}/0"
        for _ in range(100):
            if redis_reachable(url):
                return url
            time.sleep(0.1)
        raise RuntimeError("private redis-server did not start")

    def check_alive(self) -> None:
        for name, proc in self.procs:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with code {proc.returncode}; "
                                   f"see {self.log_dir / (name + '.log')}")

    def wait_http(self, url: str, timeout: float, what: str) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            self.check_alive()
            try:
                if httpx.get(url, timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"{what} not ready after {timeout:.0f}s")

    def stop(self, name: str | None = None, timeout: float = 20.0) -> None:
        """Stop one process (by name) or all, newest first: SIGTERM to the group, then SIGKILL."""
        targets = [(n, p) for n, p in reversed(self.procs) if name in (None, n)]
        for _, proc in targets:  # all groups get SIGTERM first, so they shut down in parallel
            signal_group(proc, signal.SIGTERM)
        deadline = time.time() + timeout
        for _, proc in targets:
            stop_process_group(proc, grace_s=max(0.1, deadline - time.time()))
        self.procs = [(n, p) for n, p in self.procs if (n, p) not in targets]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def group_pids(pgid: int) -> list[int]:
    """The running pids of process group `pgid`, from /proc (a zombie, exited but not yet reaped,
    does not run). Without /proc (not Linux): [pgid] while anything of the group exists."""
    if not Path("/proc").is_dir():
        try:
            os.killpg(pgid, 0)
            return [pgid]
        except (ProcessLookupError, PermissionError):
            return []
    pids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            state, _ppid, group = stat[stat.rindex(")") + 2:].split()[:3]
        except (OSError, ValueError):
            continue
        if int(group) == pgid and state != "Z":
            pids.append(int(d.name))
    return pids


def _wait_group_gone(proc: subprocess.Popen, until: float) -> bool:
    """Poll until nothing of `proc`'s group runs (reaping the leader on the way), or `until`."""
    while proc.poll() is None or group_pids(proc.pid):
        if time.monotonic() >= until:
            return False
        time.sleep(0.05)
    return True


def stop_process_group(proc: subprocess.Popen, grace_s: float = 20.0) -> None:
    """SIGTERM the process's group, wait up to `grace_s` for the leader *and* the rest of its
    group (children outlive a leader that exits first), SIGKILL whatever is left, and return
    only once nothing of the group runs any more: a caller that checks for orphans right after
    must not see a SIGKILLed worker that the kernel has not finished yet."""
    signal_group(proc, signal.SIGTERM)
    if not _wait_group_gone(proc, time.monotonic() + grace_s):
        signal_group(proc, signal.SIGKILL)
        _wait_group_gone(proc, time.monotonic() + 5)
