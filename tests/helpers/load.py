"""Chat clients that send requests non-stop while something else happens (a hot-swap).

Records every request as (start, end, version or "error", status), so tests can assert zero
failures and benches can measure time-to-first-answer from a new version.
"""
from __future__ import annotations

import json
import threading
import time

import httpx


class ChatLoad:
    def __init__(self, base_url: str, clients: int = 3, max_tokens: int = 4,
                 temperature: float | None = None, headers: dict | None = None,
                 stream_clients: int = 0):
        """`stream_clients` more clients stream their answers (SSE, read as fast as they come);
        their version is the one on the choice that carries the finish reason."""
        self.base_url, self.max_tokens, self.temperature = base_url.rstrip("/"), max_tokens, temperature
        self.headers = headers or {}
        self.records: list[tuple[float, float, str, int]] = []
        # streamed answers: (start, first content chunk, version): when the new version's first
        # token reached a client (the version is known at the finish, so a mixed "v1+v2" is not it)
        self.first_tokens: list[tuple[float, float, str]] = []
        self.failures: list[str] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(clients)]
        self.threads += [threading.Thread(target=self._run_stream, args=(clients + i,), daemon=True)
                         for i in range(stream_clients)]

    @property
    def ok(self) -> int:
        return sum(1 for r in self.records if r[3] == 200)

    @property
    def versions(self) -> set[str]:
        return {r[2] for r in self.records if r[3] == 200}

    def _body(self, i: int) -> dict:
        body = {"model": "policy", "max_tokens": self.max_tokens,
                "messages": [{"role": "user", "content": f"Say something about the number {i}."}]}
        if self.temperature is not None:
            body["temperature"] = self.temperature
        return body

    def _run_stream(self, i: int) -> None:
        body = {**self._body(i), "stream": True}
        with httpx.Client(timeout=120, headers=self.headers) as h:
            while not self.stop.is_set():
                t0, version, status, t_first = time.perf_counter(), "error", 0, None
                try:
                    with h.stream("POST", self.base_url + "/v1/chat/completions", json=body) as r:
                        status = r.status_code
                        done = False
                        for line in r.iter_lines():
                            if line == "data: [DONE]":
                                done = True
                            elif line.startswith("data: ") and status == 200:
                                for c in json.loads(line[6:]).get("choices", []):
                                    if t_first is None and (c.get("delta") or {}).get("content"):
                                        t_first = time.perf_counter()
                                    if c.get("finish_reason"):
                                        version = c.get("model_version", "?")
                        if status != 200 or not done:
                            self.failures.append(f"{status} stream {'without [DONE]' if status == 200 else ''}")
                            status = status if status != 200 else 0
                except httpx.HTTPError as exc:
                    self.failures.append(repr(exc))
                    status = 0
                self.records.append((t0, time.perf_counter(), version if status == 200 else "error", status))
                if status == 200 and t_first is not None:
                    self.first_tokens.append((t0, t_first, version))

    def _run(self, i: int) -> None:
        body = self._body(i)
        with httpx.Client(timeout=120, headers=self.headers) as h:
            while not self.stop.is_set():
                t0 = time.perf_counter()
                try:
                    r = h.post(self.base_url + "/v1/chat/completions", json=body)
                    version = r.json().get("model_version", "?") if r.status_code == 200 else "error"
                    if r.status_code != 200:
                        self.failures.append(f"{r.status_code} {r.text[:200]}")
                    self.records.append((t0, time.perf_counter(), version, r.status_code))
                except httpx.HTTPError as exc:
                    self.failures.append(repr(exc))
                    self.records.append((t0, time.perf_counter(), "error", 0))

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join(120)
