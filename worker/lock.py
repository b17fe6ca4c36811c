"""A Redis lock that a background thread keeps renewing while the holder is alive.

If the holding process dies (even SIGKILL), renewals stop and the key expires after `ttl`
seconds, so the next pipeline can run. Release and renew only touch the lock if it still holds
our token (Lua compare-and-act), so an expired-then-retaken lock is never stolen back.
"""
from __future__ import annotations

import threading
import uuid

import redis

_RENEW = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('del', KEYS[1])
end
return 0
"""


class LockHeld(Exception):
    pass


class LockLost(Exception):
    """Fencing: the run no longer holds the pipeline lock (it expired and maybe another run took
    it), so it must not publish or deploy."""


class RenewingLock:
    def __init__(self, client: redis.Redis, key: str, ttl_s: float, token: str | None = None):
        self.client, self.key, self.ttl_ms = client, key, int(ttl_s * 1000)
        self.token = token or uuid.uuid4().hex
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lost = False

    def acquire(self) -> None:
        if not self.client.set(self.key, self.token, nx=True, px=self.ttl_ms):
            # Re-entry by the same token (a redelivered task that kept its lock) is fine.
            if self.client.get(self.key) not in (self.token, self.token.encode()):
                raise LockHeld(self.key)
        self._thread = threading.Thread(target=self._renew_loop, daemon=True)
        self._thread.start()

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.ttl_ms / 3000):
            try:
                if not self.client.eval(_RENEW, 1, self.key, self.token, self.ttl_ms):
                    self.lost = True
                    return
            except redis.RedisError:
                continue  # Redis blip: try again; the TTL covers a few missed renewals

    def check(self, attempts: int = 3) -> None:
        """Fencing check before an irreversible step: read the lock *now* (not the renewal
        thread's last result) and raise LockLost unless it still holds our token. A Redis that
        does not answer after a few tries counts as lost: better redo a run than deploy twice."""
        if self.lost:
            raise LockLost(f"{self.key}: a renewal found the lock taken over")
        for i in range(attempts):
            try:
                held = self.client.get(self.key)
                break
            except redis.RedisError:
                if i == attempts - 1:
                    raise LockLost(f"{self.key}: cannot verify the lock (Redis unreachable)")
                threading.Event().wait(0.5)
        if held not in (self.token, self.token.encode()):
            self.lost = True
            raise LockLost(f"{self.key}: held by {held!r}, not by this run")

    def release(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)
        try:
            self.client.eval(_RELEASE, 1, self.key, self.token)
        except redis.RedisError:
            pass  # it expires by itself

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()
