"""Group commit (serving/group_commit.py): a lone call goes at once; calls that arrive while a
round trip is in flight share the next one; each call keeps its own result and its own error."""
import asyncio

import pytest

from serving.group_commit import GroupCommit


def _recorder(delay: float = 0.01, fail_on=None, fail_all: bool = False):
    seen: list[list[int]] = []

    async def run_batch(items):
        seen.append(list(items))
        await asyncio.sleep(delay)
        if fail_all:
            raise ConnectionError("redis gone")
        return [ValueError(f"bad {i}") if i == fail_on else i * 10 for i in items]
    return run_batch, seen


def test_a_lone_call_goes_at_once_and_calls_made_meanwhile_share_the_next_round_trip():
    async def scenario():
        run_batch, seen = _recorder()
        commit = GroupCommit(run_batch)
        assert await commit(1) == 10 and seen == [[1]]
        first = asyncio.ensure_future(commit(2))
        await asyncio.sleep(0.001)                     # its round trip is in flight now
        results = await asyncio.gather(*[commit(i) for i in range(3, 12)])
        return await first, results, seen, commit.batches
    first, results, seen, batches = asyncio.run(scenario())
    assert first == 20 and results == [i * 10 for i in range(3, 12)]   # each its own result, in order
    assert seen == [[1], [2], list(range(3, 12))] and batches == 3


def test_max_batch_splits_a_long_queue():
    async def scenario():
        run_batch, seen = _recorder()
        commit = GroupCommit(run_batch, max_batch=4)
        await asyncio.gather(*[commit(i) for i in range(10)])
        return seen
    assert [len(b) for b in asyncio.run(scenario())] == [4, 4, 2]


def test_one_calls_error_stays_with_it_and_a_failed_round_trip_reaches_every_call():
    async def scenario():
        run_batch, _ = _recorder(fail_on=5)
        commit = GroupCommit(run_batch)
        mixed = await asyncio.gather(*[commit(i) for i in range(4, 8)], return_exceptions=True)
        broken_batch, _ = _recorder(fail_all=True)
        broken = GroupCommit(broken_batch)
        failed = await asyncio.gather(*[broken(i) for i in range(3)], return_exceptions=True)
        return mixed, failed
    mixed, failed = asyncio.run(scenario())
    assert mixed[0] == 40 and mixed[2:] == [60, 70]
    assert isinstance(mixed[1], ValueError) and str(mixed[1]) == "bad 5"
    assert all(isinstance(f, ConnectionError) for f in failed) and len(failed) == 3


def test_a_cancelled_caller_does_not_disturb_the_others():
    async def scenario():
        run_batch, seen = _recorder(delay=0.05)
        commit = GroupCommit(run_batch)
        first = asyncio.ensure_future(commit(1))
        await asyncio.sleep(0)
        queued = [asyncio.ensure_future(commit(i)) for i in (2, 3)]
        await asyncio.sleep(0)
        queued[0].cancel()                                   # its client went away
        with pytest.raises(asyncio.CancelledError):
            await queued[0]
        return await first, await queued[1], seen
    first, third, seen = asyncio.run(scenario())
    assert first == 10 and third == 30 and seen == [[1], [2, 3]]   # the write still happened
