"""What to serve, and keeping it current.

At start-up the registry decides: its CURRENT version if any, else the ``--model`` folder is
published as v0 ("base policy") and made current. While running, the registry's CURRENT file is
the truth: a message on the deploy channel only wakes the replica up early, and a poll every
``POLL_S`` makes a replica that missed a message (Redis down, restart) converge anyway.
Each replica reports its state in ``KEYS.replica(id)`` (heartbeat TTL) and in ``GET /health``.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from pathlib import Path

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from common.keys import KEYS
from common.registry import ModelRegistry, RegistryError
from common.settings import Settings
from serving.engine import Engine, SwapError
from serving.metrics import Metrics

log = logging.getLogger("rlhf.hotswap")
POLL_S = 2.0
HEARTBEAT_S = 2.0
HEARTBEAT_TTL_S = 10
RETRY_FAILED_S = 60.0


def resolve_startup(settings: Settings, model: str | None = None) -> tuple[str, str]:
    """(version, folder) to load at start-up; bootstraps v0 from ``model`` if needed."""
    registry = ModelRegistry(settings.models_dir)
    current = registry.current()
    if current:
        return current, str(registry.path(current))
    model = model or settings.model
    if not model:
        raise RegistryError(f"nothing to serve: no current version in {registry.root} and no "
                            "--model / RLHF_MODEL given")
    src = Path(model).resolve()
    version = registry.publish(src, {"parent": None, "source": str(src), "note": "base policy"})
    registry.set_current(version, reason="bootstrap")
    return version, str(registry.path(version))


class HotSwapper:
    def __init__(self, settings: Settings, engine: Engine, redis: aioredis.Redis,
                 metrics: Metrics, replica_id: str):
        self.settings, self.engine, self.redis = settings, engine, redis
        self.metrics, self.replica_id = metrics, replica_id
        self.registry = ModelRegistry(settings.models_dir)
        self.status = "serving"
        self.error = ""
        self.last_message: dict | None = None
        self._failed: tuple[str, float] | None = None  # (version, when) of the last failure
        self._wake = asyncio.Event()

    def state(self) -> dict:
        e = self.engine
        last = e.last_swap
        return {"replica_id": self.replica_id, "version": e.version,
                "status": "swapping" if e.swapping else self.status, "error": self.error,
                "probe": e.last_probe, "updated": time.time(),
                "last_swap": None if last is None else {
                    "version": last.version, "ok": last.ok, "seconds": round(last.seconds, 4),
                    "checked_tensors": last.checked_tensors, "error": last.error,
                    "prepared_s": last.extra.get("prepared_s"), "drained_s": last.extra.get("drained_s"),
                    "digests_ready_s": last.extra.get("digests_ready_s"),
                    "reloaded_s": last.extra.get("reloaded_s"), "paused_s": last.extra.get("paused_s"),
                    "kept_requests": last.extra.get("kept_requests")}}

    async def run(self) -> None:
        await asyncio.gather(self._listen(), self._converge_loop(), self._heartbeat())

    async def converge(self) -> None:
        """Swap to the registry's CURRENT version if it differs from the served one."""
        try:
            target = await asyncio.to_thread(self.registry.current)
            if not target or target == self.engine.version:
                if target == self.engine.version and self.status == "error":
                    self.status, self.error = "serving", ""  # operator rolled back
                return
            if self._failed and self._failed[0] == target and \
                    time.monotonic() - self._failed[1] < RETRY_FAILED_S:
                return  # do not hammer a broken version; retry later or on a new target
            path = str(self.registry.path(target))
        except RegistryError as exc:
            self.status, self.error = "error", f"registry: {exc}"
            return
        self.status = "swapping"
        await self._report()
        t0 = time.perf_counter()
        try:
            await self.engine.swap(target, path)
            self.status, self.error, self._failed = "serving", "", None
            self.metrics.swaps.labels("ok").inc()
        except SwapError as exc:
            self.status, self.error = "error", f"swap to {target} failed: {exc}"
            self._failed = (target, time.monotonic())
            self.metrics.swaps.labels("failed").inc()
        self.metrics.swap_seconds.observe(time.perf_counter() - t0)
        await self._report()

    async def _converge_loop(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=POLL_S)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()
            try:
                await self.converge()
            except Exception:  # keep the loop alive whatever happens; state says why
                log.exception("converge failed")

    async def _listen(self) -> None:
        while True:
            pubsub = self.redis.pubsub()
            try:
                await pubsub.subscribe(KEYS.deploy_channel)
                while True:
                    msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if msg and msg.get("type") == "message":
                        try:
                            self.last_message = json.loads(msg["data"])
                        except (ValueError, TypeError):
                            log.warning("ignoring malformed deploy message %r", msg["data"])
                            continue
                        self._wake.set()
            except (RedisError, OSError) as exc:
                log.debug("deploy channel unavailable: %s", exc)
                await asyncio.sleep(1.0)
            finally:
                try:
                    await pubsub.aclose()
                except Exception:
                    pass

    async def _report(self) -> None:
        state = self.state()
        fields = {k: json.dumps(v) if isinstance(v, (dict, type(None))) else str(v)
                  for k, v in state.items()}
        fields["pid"] = str(os.getpid())
        try:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.hset(KEYS.replica(self.replica_id), mapping=fields)
                pipe.expire(KEYS.replica(self.replica_id), HEARTBEAT_TTL_S)
                pipe.sadd(KEYS.replicas, self.replica_id)
                await pipe.execute()
        except RedisError:
            pass  # the heartbeat resumes when Redis is back

    async def _heartbeat(self) -> None:
        while True:
            await self._report()
            await asyncio.sleep(HEARTBEAT_S)

    async def withdraw(self) -> None:
        """On shutdown: leave the replica set so dashboards do not show a ghost."""
        try:
            await self.redis.delete(KEYS.replica(self.replica_id))
            await self.redis.srem(KEYS.replicas, self.replica_id)
        except RedisError:
            pass
