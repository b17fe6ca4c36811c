"""Step 1 of the pipeline: feedback stream -> persisted snapshot file -> acknowledge.

Events are read through the consumer group, so several pipelines over time each see every
event once. Each event is joined with the stored answers it refers to *now* (answers expire
after the retention period; the snapshot keeps them for good). Only after the snapshot file is
durably on disk are the events acknowledged: a crash before that leaves them pending, and the
next run reads the pending ones first.

Faults (issue 12): an entry that cannot be read as a feedback event goes to the dead-letter
stream (`KEYS.feedback_dead_letter`, with the error and the raw fields) and is acknowledged, so
it is counted once and never blocks a later run. An entry erased while pending (`rlhf forget`)
comes back without fields and is acknowledged as erased. After the snapshot is durable and
acknowledged, the stream is trimmed (XTRIM MINID) below the oldest entry any consumer group
has not yet acknowledged: the snapshot files are the history, the stream only a buffer.
"""
from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import redis

from common.events import FeedbackEvent
from common.keys import FEEDBACK_GROUP, KEYS
from common.privacy import short_lock
from common.registry import fsync_dir

log = logging.getLogger(__name__)

CONSUMER = "pipeline"
BATCH = 1000


@dataclass
class Snapshot:
    path: Path | None
    events: int
    missing_answers: int
    dead_lettered: int = 0
    """Malformed entries moved to the dead-letter stream by this snapshot."""
    erased: int = 0
    """Pending entries erased (XDEL by `forget`) before this snapshot read them."""
    trimmed: int = 0
    """Stream entries removed by XTRIM after the snapshot was durable."""


class BadEntry(ValueError):
    pass


def parse_entry(fields) -> FeedbackEvent:
    """A stream entry as a FeedbackEvent the datasets step can use, or BadEntry saying why not."""
    if not isinstance(fields, dict) or not ("event" in fields or b"event" in fields):
        raise BadEntry("entry has no 'event' field")
    try:
        ev = FeedbackEvent.from_stream_fields(fields)
    except ValueError as exc:  # pydantic ValidationError (bad JSON, bad types) is a ValueError
        raise BadEntry(f"not a feedback event: {exc}") from None
    if not ev.rater:
        raise BadEntry("empty rater")
    if ev.kind == "thumb" and not (ev.response_id and ev.rating):
        raise BadEntry("thumb without response_id or rating")
    if ev.kind == "comparison":
        ids = ev.response_ids or []
        if len(ids) != 2 or not all(ids) or ids[0] == ids[1] or ev.choice is None:
            raise BadEntry("comparison needs two distinct response_ids and a choice")
    return ev


def _dead_letter(client: redis.Redis, sid: str, fields, error: str, run: str, maxlen: int) -> None:
    raw = {_s(k): _s(v) for k, v in fields.items()} if isinstance(fields, dict) else fields
    client.xadd(KEYS.feedback_dead_letter,
                {"stream_id": sid, "error": error[:2000], "run_id": run, "time": f"{time.time():.3f}",
                 "fields": json.dumps(raw, default=str)[:100_000]},
                maxlen=maxlen, approximate=True)


def ensure_group(client: redis.Redis) -> None:
    try:
        client.xgroup_create(KEYS.feedback_stream, FEEDBACK_GROUP, id="0", mkstream=True)
    except redis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


def _read_all(client: redis.Redis) -> list[tuple[str, dict]]:
    entries: list[tuple[str, dict]] = []
    # Pending first (read by a run that died before acknowledging), then never-delivered.
    last = "0"
    while True:
        resp = client.xreadgroup(FEEDBACK_GROUP, CONSUMER, {KEYS.feedback_stream: last}, count=BATCH)
        batch = resp[0][1] if resp else []
        if not batch:
            break
        entries += batch
        last = batch[-1][0]
    while True:
        resp = client.xreadgroup(FEEDBACK_GROUP, CONSUMER, {KEYS.feedback_stream: ">"}, count=BATCH)
        batch = resp[0][1] if resp else []
        if not batch:
            break
        entries += batch
    return [(_s(i), {_s(k): _s(v) for k, v in f.items()} if f else None) for i, f in entries]


def _s(x) -> str:
    return x.decode() if isinstance(x, bytes) else x


def _count_lines(paths) -> int:
    return sum(sum(1 for line in p.read_text().splitlines() if line.strip()) for p in paths)


def take_snapshot(client: redis.Redis, out_dir: Path, name: str, dead_letter_maxlen: int = 10_000,
                  lock_ttl_s: float = 300) -> Snapshot:
    """Persist every unacknowledged event into `out_dir/name-K.jsonl`, then ack them.

    A run redelivered after its process died may find its own earlier files (events already
    acknowledged): they count as this run's events, so the re-run trains on them.
    Held under the short snapshot lock, so a user erasure never interleaves with the copy.
    """
    ensure_group(client)
    out_dir.mkdir(parents=True, exist_ok=True)
    with short_lock(client, KEYS.snapshot_lock, ttl_s=lock_ttl_s, wait_s=120):
        snap = _take(client, out_dir, name, dead_letter_maxlen)
    snap.trimmed = trim_stream(client)
    return snap


def _take(client: redis.Redis, out_dir: Path, name: str, dead_letter_maxlen: int) -> Snapshot:
    earlier = sorted(out_dir.glob(f"{name}-*.jsonl"))
    entries = _read_all(client)
    if not entries:
        return Snapshot(earlier[-1] if earlier else None, _count_lines(earlier), 0)
    events, bad, erased = [], [], []
    for sid, fields in entries:
        if not fields:              # XDEL'd while pending (erasure): nothing left to keep
            erased.append(sid)
            continue
        try:
            events.append((sid, parse_entry(fields)))
        except BadEntry as exc:
            bad.append((sid, fields, str(exc)))
    ids = sorted({rid for _, e in events for rid in ([e.response_id] if e.response_id else e.response_ids or [])})
    raw = client.mget([KEYS.answer(r) for r in ids]) if ids else []
    answers = {}
    for r, v in zip(ids, raw):
        try:
            a = json.loads(v) if v is not None else None
        except ValueError:
            a = None  # an unreadable stored answer counts as missing
        if isinstance(a, dict):
            answers[r] = a

    path = None
    missing = 0
    if events:
        path = out_dir / f"{name}-{len(earlier)}.jsonl"
        tmp = path.with_suffix(".jsonl.tmp")
        with open(tmp, "w") as f:
            for sid, e in events:
                refs = [e.response_id] if e.response_id else (e.response_ids or [])
                joined = {r: answers.get(r) for r in refs}
                missing += sum(v is None for v in joined.values())
                f.write(json.dumps({"stream_id": sid, "event": e.model_dump(), "answers": joined}) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(out_dir)
    elif earlier:
        path = earlier[-1]
    # Dead letters are written before the ack: a crash in between re-reads (and re-files) them.
    for sid, fields, error in bad:
        _dead_letter(client, sid, fields, error, name, dead_letter_maxlen)
    done = [sid for sid, _ in events] + [sid for sid, _, _ in bad] + erased
    for i in range(0, len(done), 1000):
        client.xack(KEYS.feedback_stream, FEEDBACK_GROUP, *done[i:i + 1000])
    return Snapshot(path, len(events) + _count_lines(earlier), missing,
                    dead_lettered=len(bad), erased=len(erased))


def _id(sid: str) -> tuple[int, int]:
    ms, _, seq = sid.partition("-")
    return int(ms), int(seq or 0)


def trim_stream(client: redis.Redis) -> int:
    """XTRIM MINID below the oldest entry some consumer group still needs (pending, or not yet
    delivered). Every group acknowledges only what it made durable, so nothing unsaved goes."""
    try:
        groups = client.xinfo_groups(KEYS.feedback_stream)
    except redis.ResponseError:
        return 0
    if not groups:
        return 0  # nobody reads it yet: keep everything
    bound = None
    for g in groups:
        name, last = _s(g["name"]), _s(g["last-delivered-id"])
        ms, seq = _id(last)
        candidate = (ms, seq + 1)
        pending = client.xpending(KEYS.feedback_stream, name)
        if pending and pending.get("pending"):
            candidate = min(candidate, _id(_s(pending["min"])))
        bound = candidate if bound is None else min(bound, candidate)
    if bound is None or bound <= (0, 1):
        return 0
    return int(client.xtrim(KEYS.feedback_stream, minid=f"{bound[0]}-{bound[1]}", approximate=False))




def load_snapshots(snap_dir: Path) -> list[dict]:
    """All snapshot records ever taken, each event once (a re-run may have re-read some).

    Each record carries `snapshot_run`, the run that took it (files are named
    `{run_id}-{k}.jsonl` by take_snapshot), so a run can tell its own feedback from older rounds'.
    """
    seen: set[str] = set()
    records = []
    for path in sorted(Path(snap_dir).glob("*.jsonl")):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                eid = rec["event"]["event_id"]
            except (ValueError, KeyError, TypeError) as exc:
                # one damaged line must not fail every later run (the stream's entries were
                # checked before writing; this is a file edited or damaged on disk)
                log.warning("skipping unreadable record %s:%d: %r", path, n, exc)
                continue
            if eid not in seen:
                seen.add(eid)
                rec["snapshot_run"] = path.stem.rsplit("-", 1)[0]
                records.append(rec)
    return records
