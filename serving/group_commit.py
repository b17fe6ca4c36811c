"""Group commit: concurrent calls share Redis round trips.

A feedback request makes a few small Redis calls (answer lookup, vote write). Under load many
requests make the same call at the same moment, and each round trip costs the process far more
(socket write, read, parse, task wake-ups) than Redis spends on it. ``GroupCommit`` sends the
first call at once; calls that arrive while a round trip is in flight queue and all go together
in the next one (the group commit of database logs, "natural batching"). No timer: an idle
process adds no latency, a busy one batches as much as the load offers.

Each call keeps its own result and its own error: ``run_batch`` returns one result per call, in
order, and may put an exception in a call's place. A failure of the whole round trip (Redis
unreachable) is raised in every call of that batch, as each alone would have seen it.
"""
from __future__ import annotations

import asyncio
from typing import Awaitable, Callable, Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class GroupCommit(Generic[T, R]):
    def __init__(self, run_batch: Callable[[list[T]], Awaitable[list[R | BaseException]]],
                 max_batch: int = 128):
        self._run_batch = run_batch
        self.max_batch = max_batch
        self._queue: list[tuple[T, asyncio.Future]] = []
        self._busy = False
        self.batches = 0
        """Round trips made (for tests and metrics: calls / batches = the sharing achieved)."""

    async def __call__(self, item: T) -> R:
        future = asyncio.get_running_loop().create_future()
        self._queue.append((item, future))
        if not self._busy:
            self._busy = True
            asyncio.ensure_future(self._drain())
        return await future

    async def _drain(self) -> None:
        batch: list[tuple[T, asyncio.Future]] = []
        try:
            while self._queue:
                batch, self._queue = self._queue[: self.max_batch], self._queue[self.max_batch:]
                self.batches += 1
                try:
                    results = await self._run_batch([item for item, _ in batch])
                    if len(results) != len(batch):
                        raise RuntimeError(f"group commit: {len(results)} results for {len(batch)} calls")
                except Exception as exc:  # noqa: BLE001  the whole round trip failed: every call sees it
                    results = [exc] * len(batch)
                for (_, future), result in zip(batch, results):
                    if future.done():       # its caller went away (cancelled): nothing to tell
                        continue
                    if isinstance(result, BaseException):
                        future.set_exception(result)
                    else:
                        future.set_result(result)
        except BaseException as exc:  # cancelled (shutdown): no call may wait forever
            for _, future in batch + self._queue:
                if not future.done():
                    future.set_exception(RuntimeError(f"group commit stopped: {exc!r}"))
            self._queue = []
            raise
        finally:
            self._busy = False
