"""Thumbs, comparisons and batches over plain HTTP: stream + vote record + counters in Redis,
idempotency, one vote per rater and target, and every bad-input case."""
from __future__ import annotations

import json
import uuid

import httpx
import pytest

from common.events import FeedbackEvent
from common.keys import FEEDBACK_GROUP, KEYS
from common.settings import Settings
from tests.serving.conftest import API_KEY, OTHER_KEY
from serving.auth import key_pseudonym

SETTINGS = Settings(user_hmac_key="test-hmac")
PSEUDO = SETTINGS.pseudonymise


def chat(server, content="Tell me a joke", n=1, user=None) -> list[str]:
    body = {"model": "policy", "messages": [{"role": "user", "content": content}],
            "max_tokens": 4, "n": n}
    if user:
        body["user"] = user
    res = httpx.post(server.v1 + "/chat/completions", json=body, headers=server.headers(),
                     timeout=60)
    assert res.status_code == 200, res.text
    return [c["response_id"] for c in res.json()["choices"]]


def post(server, path, body, headers=None, key=API_KEY):
    return httpx.post(server.v1 + path, json=body, timeout=30,
                      headers={"Authorization": f"Bearer {key}"} | (headers or {}))


def stream_events(r) -> dict[str, FeedbackEvent]:
    return {eid: FeedbackEvent.from_stream_fields(f)
            for eid, f in r.xrange(KEYS.feedback_stream)}


def counts(r) -> dict[str, int]:
    return {k: int(v) for k, v in r.hgetall(KEYS.feedback_counts).items()}


def test_thumb_goes_to_stream_vote_record_and_counters(server, r):
    (rid,) = chat(server, user="bob")
    before = counts(r)
    res = post(server, "/feedback", {"response_id": rid, "rating": "up", "comment": "nice"})
    assert res.status_code == 200, res.text
    body = res.json()
    assert body["duplicate"] is False and body["rater"] == PSEUDO("bob")  # answer's user
    ev = stream_events(r)[body["stream_id"]]
    assert (ev.kind, ev.rating, ev.response_id, ev.comment) == ("thumb", "up", rid, "nice")
    assert ev.event_id == body["event_id"] and ev.rater == PSEUDO("bob")
    vote = json.loads(r.get(KEYS.vote(PSEUDO("bob"), rid)))
    assert vote["event_id"] == body["event_id"]
    after = counts(r)
    assert after["up"] == before.get("up", 0) + 1
    assert after["total"] == before.get("total", 0) + 1
    groups = {g["name"]: g for g in r.xinfo_groups(KEYS.feedback_stream)}
    assert FEEDBACK_GROUP in groups


def test_latest_vote_of_a_rater_wins(server, r):
    (rid,) = chat(server)
    post(server, "/feedback", {"response_id": rid, "rating": "up", "user": "carol"})
    last = post(server, "/feedback", {"response_id": rid, "rating": "down", "user": "carol"})
    vote = json.loads(r.get(KEYS.vote(PSEUDO("carol"), rid)))
    assert vote["event_id"] == last.json()["event_id"]
    assert json.loads(vote["event"])["rating"] == "down"


def test_rater_falls_back_to_api_key_pseudonym(server, r):
    (rid,) = chat(server)  # no user on the answer, none in the feedback
    a = post(server, "/feedback", {"response_id": rid, "rating": "up"}).json()
    assert a["rater"] == key_pseudonym(API_KEY, SETTINGS) and API_KEY not in a["rater"]
    # another key may not rate this key's answer (tests/serving/test_trust.py has the rest)
    b = post(server, "/feedback", {"response_id": rid, "rating": "up"}, key=OTHER_KEY)
    assert b.status_code == 403 and "answers it produced" in b.json()["error"]["message"]


def test_real_answers_carry_a_feedback_token_that_rates_without_a_key(server, r):
    body = {"model": "policy", "messages": [{"role": "user", "content": "Rate me"}],
            "max_tokens": 3, "n": 2, "user": "erin"}
    res = httpx.post(server.v1 + "/chat/completions", json=body, headers=server.headers(),
                     timeout=60)
    a, b = res.json()["choices"]
    vote = httpx.post(server.v1 + "/comparisons", timeout=30, json={
        "response_ids": [a["response_id"], b["response_id"]], "choice": "b",
        "feedback_token": b["feedback_token"]})
    assert vote.status_code == 200, vote.text
    assert vote.json()["rater"] == PSEUDO("erin")


@pytest.mark.parametrize("where", ["header", "body"])
def test_idempotent_retries_do_not_double_count(server, r, where):
    (rid,) = chat(server)
    key = uuid.uuid4().hex
    body = {"response_id": rid, "rating": "down"}
    headers = {}
    if where == "header":
        headers = {"Idempotency-Key": key}
    else:
        body["idempotency_key"] = key
    before = counts(r).get("down", 0)
    n_events = r.xlen(KEYS.feedback_stream)
    first = post(server, "/feedback", body, headers)
    retry = post(server, "/feedback", body, headers)
    assert first.status_code == retry.status_code == 200
    assert retry.json()["duplicate"] is True
    assert retry.json()["event_id"] == first.json()["event_id"]
    assert counts(r)["down"] == before + 1
    assert r.xlen(KEYS.feedback_stream) == n_events + 1


def test_idempotency_key_reused_with_another_body_is_422(server):
    (rid,) = chat(server)
    h = {"Idempotency-Key": uuid.uuid4().hex}
    assert post(server, "/feedback", {"response_id": rid, "rating": "up"}, h).status_code == 200
    res = post(server, "/feedback", {"response_id": rid, "rating": "down"}, h)
    assert res.status_code == 422 and "idempotency key" in res.json()["error"]["message"]


def test_unknown_response_id_is_404(server):
    res = post(server, "/feedback", {"response_id": "resp_doesnotexist", "rating": "up"})
    assert res.status_code == 404 and "resp_doesnotexist" in res.json()["error"]["message"]
    (rid,) = chat(server)
    res = post(server, "/comparisons", {"response_ids": [rid, "resp_nope"], "choice": "a"})
    assert res.status_code == 404 and "resp_nope" in res.json()["error"]["message"]


@pytest.mark.parametrize("body,needle", [
    ({"response_id": "x", "rating": "meh"}, "rating"),
    ({"response_id": "x"}, "rating"),
    ({"rating": "up"}, "response_id"),
    ({"response_id": "x", "rating": "up", "ratting": 1}, "ratting"),
    ([1, 2], "body"),
])
def test_malformed_feedback_is_422(server, body, needle):
    res = post(server, "/feedback", body)
    assert res.status_code == 422
    assert needle in res.json()["error"]["message"]


def test_feedback_body_not_json_is_422(server):
    res = httpx.post(server.v1 + "/feedback", content=b"rating=up",
                     headers=server.headers() | {"content-type": "application/json"})
    assert res.status_code == 422


@pytest.mark.parametrize("choice", ["a", "b", "tie", "both_bad"])
def test_comparison_of_two_answers_to_one_prompt(server, r, choice):
    a, b = chat(server, n=2, user="dave")
    before = counts(r).get("comparison", 0)
    res = post(server, "/comparisons", {"response_ids": [a, b], "choice": choice})
    assert res.status_code == 200, res.text
    ev = stream_events(r)[res.json()["stream_id"]]
    assert ev.kind == "comparison" and ev.choice == choice and ev.response_ids == [a, b]
    assert ev.target == f"{a}|{b}" and ev.rater == PSEUDO("dave")
    assert r.exists(KEYS.vote(PSEUDO("dave"), f"{a}|{b}"))
    assert counts(r)["comparison"] == before + 1


def test_comparison_errors(server):
    a, b = chat(server, n=2)
    (c,) = chat(server, content="A different prompt")
    cases = [
        ({"response_ids": [a, c], "choice": "a"}, 422, "same prompt"),
        ({"response_ids": [a, a], "choice": "a"}, 422, "two different"),
        ({"response_ids": [a, b], "choice": "c"}, 422, "choice"),
        ({"response_ids": [a], "choice": "a"}, 422, "response_ids"),
        ({"response_ids": [a, b, c], "choice": "a"}, 422, "response_ids"),
    ]
    for body, status, needle in cases:
        res = post(server, "/comparisons", body)
        assert res.status_code == status, (body, res.text)
        assert needle in res.json()["error"]["message"], (body, res.text)


def test_batch_of_thumbs_is_all_or_nothing(server, r):
    ids = chat(server, n=3)
    n_events = r.xlen(KEYS.feedback_stream)
    items = [{"response_id": i, "rating": "up", "user": f"u{k}"} for k, i in enumerate(ids)]
    res = post(server, "/feedback/batch", {"items": items})
    assert res.status_code == 200, res.text
    assert [d["duplicate"] for d in res.json()["data"]] == [False] * 3
    assert r.xlen(KEYS.feedback_stream) == n_events + 3
    bad = post(server, "/feedback/batch",
               {"items": items + [{"response_id": "resp_missing", "rating": "up"}]})
    assert bad.status_code == 404
    assert r.xlen(KEYS.feedback_stream) == n_events + 3
    assert post(server, "/feedback/batch", {"items": []}).status_code == 422
