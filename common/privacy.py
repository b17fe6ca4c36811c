"""Erasing one end user's data ("right to be forgotten"), shared by `rlhf forget USER` and
`DELETE /admin/users/{user}`; plus the short lock that keeps an erasure and a snapshot apart.

Users are stored only under their pseudonym (`Settings.pseudonymise`, a keyed HMAC), so the
erasure works from the raw id the product knows. What goes:
- stored answers the user received (`answer:*` whose `user` is the pseudonym);
- feedback stream entries the user gave (rater) or given on the user's answers, also from the
  dead-letter stream;
- per-vote records of those votes;
- records in snapshot files (the training history) with the same rule, files rewritten
  atomically;
- work folders of runs that are not running (a failed run's training sets hold the texts).
Weights already trained on the data are not "untrained": versions published before the erasure
keep what they learned (documented in the README).
"""
from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

import redis

from common.keys import KEYS

_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('del', KEYS[1])
end
return 0
"""


class Busy(Exception):
    """The short lock stayed taken for the whole wait."""


@contextmanager
def short_lock(client: redis.Redis, key: str, ttl_s: float = 300, wait_s: float = 60):
    """A plain SET NX lock for short critical sections (seconds), waited for up to `wait_s`."""
    token = uuid.uuid4().hex
    deadline = time.monotonic() + wait_s
    while not client.set(key, token, nx=True, px=int(ttl_s * 1000)):
        if time.monotonic() > deadline:
            raise Busy(key)
        time.sleep(0.05)
    try:
        yield token
    finally:
        try:
            client.eval(_RELEASE, 1, key, token)
        except redis.RedisError:
            pass  # expires by itself


def _s(x):
    return x.decode() if isinstance(x, bytes) else x


def _scan_batches(client: redis.Redis, pattern: str, count: int = 1000):
    batch = []
    for key in client.scan_iter(match=pattern, count=count):
        batch.append(_s(key))
        if len(batch) >= count:
            yield batch
            batch = []
    if batch:
        yield batch


def _event_of(fields) -> dict | None:
    if not fields:
        return None
    raw = fields.get("event") if "event" in fields else fields.get(b"event")
    try:
        ev = json.loads(raw)
        return ev if isinstance(ev, dict) else None
    except (TypeError, ValueError):
        return None


def _refs(ev: dict) -> set[str]:
    ids = [ev.get("response_id")] + list(ev.get("response_ids") or [])
    return {str(x) for x in ids if x}


def _erase_stream(client: redis.Redis, stream: str, pseudonym: str, answer_ids: set[str],
                  raw_match: bool = False) -> int:
    doomed = []
    last = "-"
    while True:
        batch = client.xrange(stream, min=last, max="+", count=1000)
        if last != "-":
            batch = batch[1:]
        if not batch:
            break
        for sid, fields in batch:
            ev = _event_of(fields)
            hit = ev is not None and (ev.get("rater") == pseudonym or _refs(ev) & answer_ids)
            if not hit and raw_match:  # dead letters: the entry may not even parse
                hit = pseudonym in json.dumps({_s(k): _s(v) for k, v in (fields or {}).items()},
                                              default=str)
            if hit:
                doomed.append(_s(sid))
        last = _s(batch[-1][0])
    for i in range(0, len(doomed), 1000):
        client.xdel(stream, *doomed[i:i + 1000])
    return len(doomed)


def _erase_snapshot_files(snap_dir: Path, pseudonym: str, answer_ids: set[str]) -> tuple[int, int]:
    records = files = 0
    for path in sorted(Path(snap_dir).glob("*.jsonl")):
        kept, dropped = [], 0
        for line in path.read_text().splitlines():
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                ev = rec.get("event") or {}
                answers = rec.get("answers") or {}
            except (ValueError, AttributeError):
                kept.append(line)
                continue
            users = {a.get("user") for a in answers.values() if isinstance(a, dict)}
            if ev.get("rater") == pseudonym or pseudonym in users or _refs(ev) & answer_ids \
                    or set(answers) & answer_ids:
                dropped += 1
            else:
                kept.append(line)
        if dropped:
            st = path.stat()
            tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
            with open(tmp, "w") as f:
                f.write("".join(k + "\n" for k in kept))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
            os.utime(path, (st.st_atime, st.st_mtime))  # retention still counts from the snapshot
            records += dropped
            files += 1
    return records, files


def forget_pseudonym(settings, pseudonym: str) -> dict:
    """Erase everything stored about one pseudonymised user; returns what was removed."""
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True,
                                  socket_timeout=30, socket_connect_timeout=2)
    out = {"user": pseudonym, "answers": 0, "feedback_events": 0, "dead_letters": 0,
           "vote_records": 0, "snapshot_records": 0, "snapshot_files_rewritten": 0}
    with short_lock(client, KEYS.snapshot_lock, ttl_s=settings.snapshot_lock_ttl_s, wait_s=120):
        # 1. the user's answers (ids kept: votes on them and snapshot joins go too)
        answer_ids: set[str] = set()
        prefix = KEYS.answer("")
        for keys in _scan_batches(client, KEYS.answer("*")):
            for key, raw in zip(keys, client.mget(keys)):
                try:
                    user = json.loads(raw).get("user") if raw else None
                except (ValueError, AttributeError):
                    user = None
                if user == pseudonym:
                    answer_ids.add(key[len(prefix):])
        if answer_ids:
            ids = sorted(answer_ids)
            for i in range(0, len(ids), 1000):
                out["answers"] += client.delete(*[KEYS.answer(r) for r in ids[i:i + 1000]])
        # snapshot files hold joined copies of answers that may have expired from Redis
        for path in sorted(Path(settings.snapshots_dir).glob("*.jsonl")) \
                if Path(settings.snapshots_dir).exists() else []:
            for line in path.read_text().splitlines():
                try:
                    rec = json.loads(line)
                    for rid, a in (rec.get("answers") or {}).items():
                        if isinstance(a, dict) and a.get("user") == pseudonym:
                            answer_ids.add(rid)
                except (ValueError, AttributeError):
                    continue
        # 2. feedback stream + dead letters
        out["feedback_events"] = _erase_stream(client, KEYS.feedback_stream, pseudonym, answer_ids)
        out["dead_letters"] = _erase_stream(client, KEYS.feedback_dead_letter, pseudonym, answer_ids,
                                            raw_match=True)
        # 3. vote records: key vote:{rater}:{target}; target holds the response id(s)
        vote_prefix = KEYS.vote("", "")[:-1]  # "...:vote:"
        for keys in _scan_batches(client, KEYS.vote("*", "*")):
            doomed = []
            for key in keys:
                rater, _, target = key[len(vote_prefix):].partition(":")
                if rater == pseudonym or set(target.split("|")) & answer_ids:
                    doomed.append(key)
            if doomed:
                out["vote_records"] += client.delete(*doomed)
        # 4. snapshot files
        if Path(settings.snapshots_dir).exists():
            out["snapshot_records"], out["snapshot_files_rewritten"] = _erase_snapshot_files(
                settings.snapshots_dir, pseudonym, answer_ids)
        # 5. work folders (training sets written out by runs) of every run but a running one:
        # finished runs remove theirs; these are failed or killed runs' leftovers
        running = client.get(KEYS.pipeline_lock)
        work_root = Path(settings.data_dir) / "work"
        out["work_folders_removed"] = 0
        if work_root.exists():
            for p in work_root.iterdir():
                if p.is_dir() and p.name != running:
                    shutil.rmtree(p, ignore_errors=True)
                    out["work_folders_removed"] += 1
    out["answer_ids"] = len(answer_ids)
    return out


def forget_user(settings, user: str) -> dict:
    """Erase one end user, given the raw id the product passed as `user`."""
    if not user:
        raise ValueError("empty user id")
    return forget_pseudonym(settings, settings.pseudonymise(user))
