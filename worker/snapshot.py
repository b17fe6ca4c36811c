"""Step 1 of the pipeline: feedback stream -> persisted snapshot file -> acknowledge.

Events are read through the consumer group, so several pipelines over time each see every
event once. Each event is joined with the stored answers it refers to *now* (answers expire
after the retention period; the snapshot keeps them for good). Only after the snapshot file is
durably on disk are the events acknowledged: a crash before that leaves them pending, and the
next run reads the pending ones first.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import redis

from common.events import FeedbackEvent
from common.keys import FEEDBACK_GROUP, KEYS

CONSUMER = "pipeline"
BATCH = 1000


@dataclass
class Snapshot:
    path: Path | None
    events: int
    missing_answers: int


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
    return [(_s(i), f) for i, f in entries]


def _s(x) -> str:
    return x.decode() if isinstance(x, bytes) else x


def _count_lines(paths) -> int:
    return sum(sum(1 for line in p.read_text().splitlines() if line.strip()) for p in paths)


def take_snapshot(client: redis.Redis, out_dir: Path, name: str) -> Snapshot:
    """Persist every unacknowledged event into `out_dir/name-K.jsonl`, then ack them.

    A run redelivered after its process died may find its own earlier files (events already
    acknowledged): they count as this run's events, so the re-run trains on them.
    """
    ensure_group(client)
    out_dir.mkdir(parents=True, exist_ok=True)
    earlier = sorted(out_dir.glob(f"{name}-*.jsonl"))
    entries = _read_all(client)
    if not entries:
        return Snapshot(earlier[-1] if earlier else None, _count_lines(earlier), 0)
    events = [(sid, FeedbackEvent.from_stream_fields(fields)) for sid, fields in entries]
    ids = sorted({rid for _, e in events for rid in ([e.response_id] if e.response_id else e.response_ids or [])})
    raw = client.mget([KEYS.answer(r) for r in ids]) if ids else []
    answers = {r: json.loads(v) for r, v in zip(ids, raw) if v is not None}

    path = out_dir / f"{name}-{len(earlier)}.jsonl"
    tmp = path.with_suffix(".jsonl.tmp")
    missing = 0
    with open(tmp, "w") as f:
        for sid, e in events:
            refs = [e.response_id] if e.response_id else (e.response_ids or [])
            joined = {r: answers.get(r) for r in refs}
            missing += sum(v is None for v in joined.values())
            f.write(json.dumps({"stream_id": sid, "event": e.model_dump(), "answers": joined}) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    client.xack(KEYS.feedback_stream, FEEDBACK_GROUP, *[sid for sid, _ in events])
    return Snapshot(path, len(events) + _count_lines(earlier), missing)


def load_snapshots(snap_dir: Path) -> list[dict]:
    """All snapshot records ever taken, each event once (a re-run may have re-read some).

    Each record carries `snapshot_run`, the run that took it (files are named
    `{run_id}-{k}.jsonl` by take_snapshot), so a run can tell its own feedback from older rounds'.
    """
    seen: set[str] = set()
    records = []
    for path in sorted(Path(snap_dir).glob("*.jsonl")):
        for line in path.read_text().splitlines():
            if not line.strip():
                continue
            rec = json.loads(line)
            eid = rec["event"]["event_id"]
            if eid not in seen:
                seen.add(eid)
                rec["snapshot_run"] = path.stem.rsplit("-", 1)[0]
                records.append(rec)
    return records
