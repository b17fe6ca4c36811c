"""Preference data out of the service, and live feedback statistics per model version.

Shared by ``rlhf export`` and ``GET /admin/export`` (the server never imports worker/ or
trainer/, so the joining rules live here, mirroring worker/datasets.py):

- sources: every snapshot file the pipeline wrote (``<data_dir>/snapshots/*.jsonl``: events
  joined with their answers, kept for good) plus the live vote records in Redis
  (``KEYS.vote(rater, target)``: the latest vote of each rater on each target, joined with the
  answers still stored), so feedback not yet snapshotted is exported too; each event once;
- one vote per (rater, target): the latest wins;
- comparisons ``a``/``b`` give a (chosen, rejected) pair; ``tie`` gives none; ``both_bad`` marks
  both answers "down";
- thumbs: per answer the majority label; within one prompt every up-answer x down-answer is a
  pair (as the training side does);
- raters appear only as their pseudonyms (the stream never holds raw user ids); answers are
  written without the end user / key pseudonyms they were stored with.

Formats (one JSON object per line):
- ``openai-dpo``: OpenAI preference fine-tuning, ``{"input": {"messages": [...]},
  "preferred_output": [{"role": "assistant", "content": ...}], "non_preferred_output": [...]}``;
- ``trl``: TRL's conversational preference format, ``{"prompt": [...messages],
  "chosen": [{"role": "assistant", ...}], "rejected": [...]}`` (DPOTrainer, RewardTrainer);
- ``jsonl``: every vote as recorded (kind, rating/choice, comment, rater pseudonym, time,
  prompt, the answers with their model_version), ties and thumbs included.

``version_stats`` computes, from the live vote records in Redis, each version's thumbs-up rate
and its pairwise win-rate against other versions (comparisons whose two answers came from
different versions; two answers of one ``n: 2`` request share a version and only count towards
``same_version_pairs`` / ``both_bad``).
"""
from __future__ import annotations

import json
import logging
import re
import time
from collections import Counter, defaultdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator

from common.keys import KEYS

log = logging.getLogger(__name__)

FORMATS = ("openai-dpo", "trl", "jsonl")
SCAN_COUNT = 1000


class ExportError(ValueError):
    pass


# --- reading -------------------------------------------------------------------------------

def snapshot_records(snap_dir: str | Path) -> list[dict]:
    """Every record of every snapshot file (each event once; unreadable lines skipped)."""
    seen: set[str] = set()
    out = []
    for path in sorted(Path(snap_dir).glob("*.jsonl")):
        try:
            lines = path.read_text().splitlines()
        except OSError as exc:
            log.warning("cannot read %s: %s", path, exc)
            continue
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                eid = rec["event"]["event_id"]
            except (ValueError, KeyError, TypeError):
                log.warning("skipping unreadable record %s:%d", path, n)
                continue
            if eid not in seen:
                seen.add(eid)
                out.append(rec)
    return out


def _s(x) -> str:
    return x.decode() if isinstance(x, bytes) else x


def _scan_votes(client) -> list[dict]:
    """The latest event of every (rater, target) vote record in Redis."""
    events = []
    keys: list[str] = []
    for key in client.scan_iter(match=f"{KEYS.prefix}:vote:*", count=SCAN_COUNT):
        keys.append(_s(key))
    for i in range(0, len(keys), SCAN_COUNT):
        for raw in client.mget(keys[i:i + SCAN_COUNT]):
            if raw is None:
                continue
            try:
                rec = json.loads(_s(raw))
                ev = rec["event"]
                ev = json.loads(ev) if isinstance(ev, str) else ev
                if isinstance(ev, dict) and ev.get("event_id"):
                    events.append({"stream_id": rec.get("stream_id", ""), "event": ev})
            except (ValueError, KeyError, TypeError):
                continue
    return events


def _refs(ev: dict) -> list[str]:
    return [ev["response_id"]] if ev.get("response_id") else list(ev.get("response_ids") or [])


def _join_answers(client, recs: list[dict]) -> list[dict]:
    ids = sorted({r for rec in recs for r in _refs(rec["event"])})
    answers: dict[str, dict] = {}
    for i in range(0, len(ids), SCAN_COUNT):
        chunk = ids[i:i + SCAN_COUNT]
        for rid, raw in zip(chunk, client.mget([KEYS.answer(r) for r in chunk])):
            if raw is None:
                continue
            try:
                a = json.loads(_s(raw))
            except ValueError:
                continue
            if isinstance(a, dict):
                answers[rid] = a
    for rec in recs:
        rec["answers"] = {r: answers.get(r) for r in _refs(rec["event"])}
    return recs


def live_records(client) -> list[dict]:
    """Vote records in Redis joined with the answers stored now (None where expired)."""
    return _join_answers(client, _scan_votes(client))


def latest_votes(records: Iterable[dict]) -> list[dict]:
    """Each event once, then the latest vote per (rater, target)."""
    by_event: dict[str, dict] = {}
    for rec in records:
        eid = rec["event"]["event_id"]
        prev = by_event.get(eid)
        # a live record may lack answers that a snapshot kept: prefer the complete one
        if prev is None or (any(a is None for a in prev.get("answers", {}).values())
                            and not any(a is None for a in rec.get("answers", {}).values())):
            by_event[eid] = rec
    latest: dict[tuple[str, str], dict] = {}
    for rec in sorted(by_event.values(),
                      key=lambda r: (r["event"].get("created") or 0, r.get("stream_id") or "")):
        ev = rec["event"]
        latest[(ev["rater"], ev["target"])] = rec
    return list(latest.values())


def collect(settings, client=None, since: float | None = None,
            version: str | None = None) -> list[dict]:
    """Snapshot history + live Redis votes, latest per (rater, target), with complete answers;
    `since` (unix time) keeps votes cast at or after it, `version` those whose answers all come
    from that model version."""
    records = snapshot_records(settings.snapshots_dir)
    if client is not None:
        records += live_records(client)
    out = []
    for rec in latest_votes(records):
        answers = rec.get("answers") or {}
        if not answers or any(not isinstance(a, dict) for a in answers.values()):
            continue  # an answer expired before any snapshot kept it
        if since is not None and (rec["event"].get("created") or 0) < since:
            continue
        if version is not None and any(a.get("model_version") != version for a in answers.values()):
            continue
        out.append(rec)
    return out


# --- turning votes into pairs -----------------------------------------------------------------

def _messages(answer: dict) -> list[dict]:
    msgs = answer.get("messages")
    if not msgs:
        msgs = [{"role": "user", "content": answer.get("prompt") or ""}]
    return [{"role": m.get("role", "user"), "content": m.get("content") or ""} for m in msgs]


def preference_pairs(records: list[dict]) -> list[dict]:
    """(prompt messages, chosen answer, rejected answer) triples, deduplicated."""
    pairs: list[tuple[dict, dict]] = []
    thumbs: dict[str, Counter] = defaultdict(Counter)
    answer_by_id: dict[str, dict] = {}
    for rec in records:
        ev = rec["event"]
        answer_by_id.update(rec["answers"])
        if ev["kind"] == "thumb":
            thumbs[ev["response_id"]][ev["rating"]] += 1
            continue
        a, b = (rec["answers"][r] for r in ev["response_ids"])
        if ev.get("choice") == "a":
            pairs.append((a, b))
        elif ev.get("choice") == "b":
            pairs.append((b, a))
        elif ev.get("choice") == "both_bad":
            thumbs[a["response_id"]]["down"] += 1
            thumbs[b["response_id"]]["down"] += 1
    by_prompt: dict[str, dict[str, list[dict]]] = defaultdict(lambda: {"up": [], "down": []})
    for rid, counts in thumbs.items():
        if counts["up"] == counts["down"]:
            continue
        ans = answer_by_id[rid]
        by_prompt[ans["prompt_key"]]["up" if counts["up"] > counts["down"] else "down"].append(ans)
    for groups in by_prompt.values():
        pairs += [(u, d) for u in groups["up"] for d in groups["down"]]
    out, seen = [], set()
    for chosen, rejected in pairs:
        sig = (chosen["prompt_key"], chosen["text"], rejected["text"])
        if sig in seen or chosen["text"] == rejected["text"]:
            continue
        seen.add(sig)
        out.append({"messages": _messages(chosen), "chosen": chosen, "rejected": rejected})
    return out


def _assistant(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


def _public_answer(a: dict) -> dict:
    return {"response_id": a["response_id"], "model_version": a.get("model_version"),
            "text": a.get("text", ""), "finish_reason": a.get("finish_reason")}


def format_lines(records: list[dict], fmt: str) -> Iterator[str]:
    if fmt not in FORMATS:
        raise ExportError(f"unknown format {fmt!r}: one of {', '.join(FORMATS)}")
    if fmt == "jsonl":
        for rec in records:
            ev = rec["event"]
            first = rec["answers"][_refs(ev)[0]]
            line = {"event_id": ev["event_id"], "kind": ev["kind"], "rater": ev["rater"],
                    "created": ev.get("created"), "rating": ev.get("rating"),
                    "choice": ev.get("choice"), "comment": ev.get("comment"),
                    "messages": _messages(first),
                    "answers": [_public_answer(rec["answers"][r]) for r in _refs(ev)]}
            yield json.dumps(line, ensure_ascii=False) + "\n"
        return
    for p in preference_pairs(records):
        if fmt == "openai-dpo":
            line = {"input": {"messages": p["messages"]},
                    "preferred_output": _assistant(p["chosen"]["text"]),
                    "non_preferred_output": _assistant(p["rejected"]["text"])}
        else:  # trl
            line = {"prompt": p["messages"], "chosen": _assistant(p["chosen"]["text"]),
                    "rejected": _assistant(p["rejected"]["text"])}
        yield json.dumps(line, ensure_ascii=False) + "\n"


# What the HTTP API accepts as `since` (GET /admin/export): empty (no filter), unix seconds, an
# age (30m, 12h, 7d, 2w) or a calendar-valid ISO date / date-time (`T` or space; seconds,
# fraction and offset optional; UTC without an offset). Every string it matches parses; the
# route answers 422 for any other (the `rlhf export --since` CLI stays lenient).
_Y = "[1-9][0-9]{3}"
_LEAP = "([1-9][0-9](0[48]|[2468][048]|[13579][26])|([13579][26]|[2468][048])00)"
_DATE = (f"({_Y}-((0[1-9]|1[0-2])-(0[1-9]|1[0-9]|2[0-8])|(0[13-9]|1[0-2])-(29|30)"
         f"|(0[13578]|1[02])-31)|{_LEAP}-02-29)")
_TIME = ("[T ]([01][0-9]|2[0-3]):[0-5][0-9](:[0-5][0-9](\\.[0-9]{1,6})?)?"
         "(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9])?")
SINCE_PATTERN = (f"^(|[0-9]{{1,12}}(\\.[0-9]{{1,6}})?|[0-9]{{1,9}}(\\.[0-9]{{1,6}})?[smhdw]"
                 f"|{_DATE}({_TIME})?)$")


def check_since(text: str | None) -> None:
    """The HTTP API's `since`: raises ExportError unless it matches SINCE_PATTERN (searched as
    JSON Schema validators in Python do)."""
    if text is not None and not re.search(SINCE_PATTERN, text):
        raise ExportError(f"since {text!r}: expected unix seconds, an age like 7d / 12h / 30m "
                          "or an ISO date/time like 2026-01-31 or 2026-01-31T12:00:00Z")


def parse_since(text: str | None, now: float | None = None) -> float | None:
    """Unix seconds, an ISO date/time (UTC unless it says otherwise) or an age: 30m, 12h, 7d."""
    if text is None or str(text).strip() == "":
        return None
    text = str(text).strip()
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([smhdw])", text)
    if m:
        unit = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[m.group(2)]
        return (now if now is not None else time.time()) - float(m.group(1)) * unit
    try:
        return float(text)
    except ValueError:
        pass
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ExportError(f"--since {text!r}: expected unix seconds, an ISO date/time or an "
                          "age like 7d / 12h / 30m") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp()


def export_lines(settings, fmt: str, since: str | float | None = None,
                 version: str | None = None, client=None) -> Iterator[str]:
    """Validate, collect and format (raises ExportError before anything is produced)."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown format {fmt!r}: one of {', '.join(FORMATS)}")
    t = since if isinstance(since, (int, float)) else parse_since(since)
    return format_lines(collect(settings, client, since=t, version=version), fmt)


# --- live statistics per version ------------------------------------------------------------

def _rate(num: int, den: int) -> float | None:
    return round(num / den, 4) if den else None


def version_stats(client) -> dict[str, Any]:
    """Per model version, from the live vote records: thumbs (up, down, up_rate) and pairwise
    results against other versions (wins, losses, ties, both_bad, win_rate = (wins + ties/2) /
    decided-or-tied cross-version comparisons, per opponent in `vs`)."""
    recs = [r for r in live_records(client)
            if r["answers"] and all(isinstance(a, dict) for a in r["answers"].values())]
    rows: dict[str, dict[str, Any]] = defaultdict(lambda: {
        "up": 0, "down": 0, "comparisons": 0, "same_version_pairs": 0, "wins": 0, "losses": 0,
        "ties": 0, "both_bad": 0, "vs": defaultdict(Counter)})
    for rec in recs:
        ev = rec["event"]
        if ev["kind"] == "thumb":
            a = rec["answers"][ev["response_id"]]
            rows[a.get("model_version") or "?"][ev["rating"]] += 1
            continue
        a, b = (rec["answers"][r] for r in ev["response_ids"])
        va, vb = a.get("model_version") or "?", b.get("model_version") or "?"
        choice = ev.get("choice")
        for v in {va, vb}:
            rows[v]["comparisons"] += 1
            if choice == "both_bad":
                rows[v]["both_bad"] += 1
        if va == vb:
            rows[va]["same_version_pairs"] += 1
            continue
        if choice in ("a", "b"):
            win, lose = (va, vb) if choice == "a" else (vb, va)
            rows[win]["wins"] += 1
            rows[lose]["losses"] += 1
            rows[win]["vs"][lose]["wins"] += 1
            rows[lose]["vs"][win]["losses"] += 1
        elif choice == "tie":
            for v, o in ((va, vb), (vb, va)):
                rows[v]["ties"] += 1
                rows[v]["vs"][o]["ties"] += 1
    out = {}
    for v, row in sorted(rows.items()):
        played = row["wins"] + row["losses"] + row["ties"]
        row["up_rate"] = _rate(row["up"], row["up"] + row["down"])
        row["win_rate"] = _rate(2 * row["wins"] + row["ties"], 2 * played)
        row["vs"] = {o: dict(c) for o, c in row["vs"].items()}
        out[v] = dict(row)
    return {"versions": out, "votes": len(recs), "computed": time.time()}
