"""The live loop: simulated users chat and click; the real pipeline retrains and hot-swaps.

Users work in rounds: each round they send enough feedback to trip the worker's
"M new events" trigger, then wait (showing the pipeline's steps) until the run is decided and,
if promoted, the server answers with the new version.
"""
from __future__ import annotations

import json
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import httpx
from openai import OpenAI

from common import ops
from common.keys import KEYS
from common.settings import Settings
from demo.personas import SimUser


@dataclass
class RoundResult:
    round: int
    interactions: int = 0
    feedback_events: int = 0
    errors: int = 0
    served_before: str = ""
    pipeline: dict = field(default_factory=dict)
    served_after: str = ""


class Users:
    """Drives the simulated population against the running server."""

    def __init__(self, base_url: str, api_key: str, users: list[SimUser], prompts: list[str],
                 max_tokens: int, seed: int):
        self.base_url, self.api_key = base_url, api_key
        self.client = OpenAI(base_url=f"{base_url}/v1", api_key=api_key, max_retries=3, timeout=120)
        self.http = httpx.Client(base_url=base_url, timeout=30,
                                 headers={"Authorization": f"Bearer {api_key}"})
        self.users, self.prompts, self.max_tokens = users, prompts, max_tokens
        self.rng = random.Random(seed)
        self.lock = threading.Lock()

    def served_version(self) -> str:
        models = self.client.models.list().data
        m = models[0]
        extra = m.model_extra or {}
        return extra.get("version") or extra.get("root") or m.id

    def interact(self) -> tuple[int, int]:
        """One chat with n=2, a comparison, sometimes a thumb. Returns (events sent, errors)."""
        with self.lock:
            user = self.rng.choice(self.users)
            prompt = self.rng.choice(self.prompts)
            seed = self.rng.randrange(1 << 30)
        resp = self.client.chat.completions.create(
            model="policy", messages=[{"role": "user", "content": prompt}], n=2,
            temperature=1.0, max_tokens=self.max_tokens, user=user.user_id, seed=seed)
        a, b = resp.choices[0], resp.choices[1]
        ids = [_response_id(resp, c) for c in (a, b)]
        # The answer's signed feedback_token names the rater (this user, from `user=` above):
        # the server takes no rater from a feedback body unless the key is a trusted back end.
        token = (a.model_extra or {}).get("feedback_token")
        ans = [(c.message.content or "", c.finish_reason == "stop") for c in (a, b)]
        sent = errors = 0
        r = self.http.post("/v1/comparisons", json={"response_ids": ids, "feedback_token": token,
                                                     "choice": user.choose(*ans, prompt=prompt)})
        sent, errors = sent + (r.status_code < 300), errors + (r.status_code >= 300)
        if user.rng.random() < 0.4:
            k = user.rng.randrange(2)
            r = self.http.post("/v1/feedback", json={"response_id": ids[k], "feedback_token": token,
                                                      "rating": user.thumb(ans[k], prompt=prompt)})
            sent, errors = sent + (r.status_code < 300), errors + (r.status_code >= 300)
        return sent, errors

    def run_round(self, n: int, concurrency: int, on_progress) -> tuple[int, int]:
        sent = errors = 0
        with ThreadPoolExecutor(concurrency) as pool:
            for s, e in pool.map(lambda _: self._safe_interact(), range(n)):
                sent, errors = sent + s, errors + e
                on_progress(s)
        return sent, errors

    def _safe_interact(self) -> tuple[int, int]:
        try:
            return self.interact()
        except Exception:  # counted and reported: the demo shows failed requests, never hides them
            return 0, 1


def _response_id(resp, choice) -> str:
    extra = choice.model_extra or {}
    if extra.get("response_id"):
        return extra["response_id"]
    return f"{resp.id}-{choice.index}"


def wait_for_pipeline(settings: Settings, runs_before: int, timeout: float, on_status) -> dict:
    """Block until a pipeline run finishes after `runs_before` runs; returns its record."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        on_status(ops.pipeline_status(settings))
        n = history_len(settings)
        if n > runs_before:
            newest = json.loads(ops.client(settings).lindex(KEYS.pipeline_history, 0))
            if newest.get("state") != "skipped":  # a run that found nothing new: keep waiting
                return newest
            runs_before = n
        time.sleep(1.0)
    raise TimeoutError(f"no pipeline run finished within {timeout:.0f}s")


def history_len(settings: Settings) -> int:
    return ops.client(settings).llen(KEYS.pipeline_history)


def dump(obj, path) -> None:
    path.write_text(json.dumps(obj, indent=2, default=str))
