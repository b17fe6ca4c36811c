"""A pipeline that fails must say so at once (status + history) and change nothing served."""
import json

import pytest
import redis

from common import ops
from common.events import FeedbackEvent, StoredAnswer
from common.keys import KEYS
from common.registry import ModelRegistry
from common.settings import Settings
from worker.pipeline import run_pipeline


def _answer(rid: str, text: str) -> StoredAnswer:
    return StoredAnswer(response_id=rid, request_id="req", model_version="v0", kind="chat",
                        messages=[{"role": "user", "content": "hi"}], prompt_key="k1", text=text)


def test_training_error_is_recorded_as_failed_and_nothing_is_published(redis_url, tmp_path):
    settings = Settings(redis_url=redis_url, data_dir=tmp_path / "data")
    reg = ModelRegistry(settings.models_dir)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{}")            # not a loadable model
    reg.set_current(reg.publish(broken, {"parent": None}))
    r = redis.Redis.from_url(redis_url)
    for rid, text in [("a", "short"), ("b", "a much longer answer")]:
        r.set(KEYS.answer(rid), _answer(rid, text).model_dump_json())
    ev = FeedbackEvent(event_id="e1", kind="comparison", rater="u1", target="a|b",
                       response_ids=["a", "b"], choice="a")
    r.xadd(KEYS.feedback_stream, ev.to_stream_fields())

    with pytest.raises(Exception):
        run_pipeline(settings, "run-broken", reason="test")
    last = json.loads(r.lindex(KEYS.pipeline_history, 0))
    assert last["run_id"] == "run-broken" and last["state"] == "failed"
    # dpo, the default, trains against no RM, but the gate's judge RM is trained first
    assert last["step"] == "reward_model" and last["error"]
    assert ops.pipeline_status(settings)["state"] == "failed"
    assert reg.versions() == ["v0"] and reg.current() == "v0"
    assert not [p for p in reg.root.iterdir() if p.name.startswith(".tmp-")]


def test_no_new_feedback_is_skipped_not_trained(redis_url, tmp_path, tiny_model_dir):
    settings = Settings(redis_url=redis_url, data_dir=tmp_path / "data")
    reg = ModelRegistry(settings.models_dir)
    reg.set_current(reg.publish(tiny_model_dir, {"parent": None}))
    result = run_pipeline(settings, "run-empty", reason="test")
    assert result["state"] == "skipped" and "no new feedback" in result["error"]
    assert reg.versions() == ["v0"]
