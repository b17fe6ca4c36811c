"""common/export.py: snapshot files + live vote records -> OpenAI DPO / TRL / raw JSONL, and the
per-version live stats; `rlhf export` end to end (private Redis, no engine)."""
from __future__ import annotations

import json
import subprocess
import time

import pytest
import redis

from common import export
from common.keys import KEYS
from common.settings import Settings
from tests.helpers.server import rlhf_executable

MSGS = [{"role": "user", "content": "Name a colour."}]


def _answer(rid, version, text, prompt_key="pk1", user="u_alice"):
    return {"response_id": rid, "request_id": rid.split("_1")[0], "model_version": version,
            "kind": "chat", "messages": MSGS, "prompt_key": prompt_key, "text": text,
            "finish_reason": "stop", "user": user, "principal": "k_secret", "created": time.time()}


def _event(eid, kind, rater, created, **kw):
    ev = {"event_id": eid, "kind": kind, "rater": rater, "created": created, "comment": None,
          "response_id": None, "rating": None, "response_ids": None, "choice": None}
    ev.update(kw)
    ev["target"] = kw.get("response_id") or "|".join(kw["response_ids"])
    return ev


def _live_vote(r, ev, answers):
    for a in answers:
        r.set(KEYS.answer(a["response_id"]), json.dumps(a))
    r.set(KEYS.vote(ev["rater"], ev["target"]),
          json.dumps({"event_id": ev["event_id"], "stream_id": "1-0", "event": json.dumps(ev)}))


@pytest.fixture
def setup(redis_url, data_dir):
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    settings = Settings(redis_url=redis_url, data_dir=data_dir)
    now = time.time()
    a0, a1 = _answer("resp_a", "v0", "Blue."), _answer("resp_a_1", "v0", "Colour colour colour")
    b0 = _answer("resp_b", "v1", "Red.", prompt_key="pk2")
    b1 = _answer("resp_c", "v0", "Green green", prompt_key="pk2")
    # history (already snapshotted, answers maybe expired from Redis): a comparison a > a_1
    settings.snapshots_dir.mkdir(parents=True)
    old = _event("fb_old", "comparison", "u_bob", now - 86400 * 3,
                 response_ids=["resp_a", "resp_a_1"], choice="a")
    (settings.snapshots_dir / "run-1-0.jsonl").write_text(json.dumps(
        {"stream_id": "1-0", "event": old, "answers": {"resp_a": a0, "resp_a_1": a1}}) + "\n")
    # live: cross-version comparison v1 (b) beats v0 (c); thumbs; a tie; a both_bad
    _live_vote(r, _event("fb_1", "comparison", "u_carol", now - 60,
                         response_ids=["resp_c", "resp_b"], choice="b"), [b0, b1])
    _live_vote(r, _event("fb_2", "thumb", "u_carol", now - 50, response_id="resp_b", rating="up"), [b0])
    _live_vote(r, _event("fb_3", "thumb", "u_dave", now - 40, response_id="resp_c", rating="down"), [b1])
    _live_vote(r, _event("fb_4", "comparison", "u_dave", now - 30,
                         response_ids=["resp_a", "resp_a_1"], choice="tie"), [a0, a1])
    return settings, r


def test_formats_and_filters(setup):
    settings, r = setup
    recs = export.collect(settings, r)
    assert {x["event"]["event_id"] for x in recs} == {"fb_old", "fb_1", "fb_2", "fb_3", "fb_4"}

    dpo = [json.loads(x) for x in export.export_lines(settings, "openai-dpo", client=r)]
    got = {(d["preferred_output"][0]["content"], d["non_preferred_output"][0]["content"]) for d in dpo}
    # comparisons a/b, and the thumbs up (Red.) x down (Green green) of prompt pk2 (same pair: deduped)
    assert got == {("Blue.", "Colour colour colour"), ("Red.", "Green green")}
    assert all(d["input"]["messages"] == MSGS for d in dpo)
    assert set(dpo[0]) == {"input", "preferred_output", "non_preferred_output"}

    trl = [json.loads(x) for x in export.export_lines(settings, "trl", client=r)]
    assert {(t["chosen"][0]["content"], t["rejected"][0]["content"]) for t in trl} == got
    assert trl[0]["prompt"] == MSGS and set(trl[0]) == {"prompt", "chosen", "rejected"}

    raw = [json.loads(x) for x in export.export_lines(settings, "jsonl", client=r)]
    assert {x["choice"] for x in raw if x["kind"] == "comparison"} == {"a", "b", "tie"}
    text = json.dumps(raw)
    assert "k_secret" not in text and "u_alice" not in text   # only rater pseudonyms
    assert {x["rater"] for x in raw} == {"u_bob", "u_carol", "u_dave"}

    recent = [json.loads(x) for x in export.export_lines(settings, "jsonl", since="1d", client=r)]
    assert "fb_old" not in {x["event_id"] for x in recent} and len(recent) == 4
    v1 = [json.loads(x) for x in export.export_lines(settings, "jsonl", version="v1", client=r)]
    assert [x["event_id"] for x in v1] == ["fb_2"]
    with pytest.raises(export.ExportError):
        list(export.export_lines(settings, "csv", client=r))
    with pytest.raises(export.ExportError):
        export.parse_since("yesterday-ish")
    assert export.parse_since("2026-01-01") == 1767225600.0


def test_latest_vote_wins(setup):
    settings, r = setup
    ev = _event("fb_5", "comparison", "u_dave", time.time(), response_ids=["resp_a", "resp_a_1"],
                choice="b")
    _live_vote(r, ev, [])  # same rater and target as the tie: replaces it
    raw = [json.loads(x) for x in export.export_lines(settings, "jsonl", client=r)]
    assert {x["event_id"] for x in raw} == {"fb_old", "fb_1", "fb_2", "fb_3", "fb_5"}


def test_version_stats(setup):
    _, r = setup
    st = export.version_stats(r)["versions"]
    assert st["v1"]["up"] == 1 and st["v1"]["up_rate"] == 1.0
    assert st["v0"]["down"] == 1 and st["v0"]["up_rate"] == 0.0
    assert st["v1"]["wins"] == 1 and st["v1"]["win_rate"] == 1.0 and st["v1"]["vs"] == {"v0": {"wins": 1}}
    assert st["v0"]["losses"] == 1 and st["v0"]["win_rate"] == 0.0
    assert st["v0"]["same_version_pairs"] == 1  # the tie between two v0 answers


def test_cli_export(setup, tmp_path):
    settings, _ = setup
    out = tmp_path / "trl.jsonl"
    env = {"RLHF_REDIS_URL": settings.redis_url, "RLHF_DATA_DIR": str(settings.data_dir),
           "PATH": "/usr/bin:/bin"}
    res = subprocess.run([rlhf_executable(), "export", "--format", "trl", "--since", "7d", "-o",
                          str(out)], env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert len(out.read_text().splitlines()) == 2 and "2 lines" in res.stderr
    res = subprocess.run([rlhf_executable(), "export", "--format", "openai-dpo", "--version", "v1"],
                         env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and res.stdout == ""  # v1 has a thumb only: no pair
    bad = subprocess.run([rlhf_executable(), "export", "--format", "trl", "--since", "soon"],
                         env=env, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "--since" in bad.stderr
