import pytest

from trainer.data import (PreferencePair, PromptItem, RatedAnswer, read_pairs, read_prompts,
                          read_rated, write_jsonl)

MSG = [{"role": "user", "content": "Hi ✓"}]


def test_jsonl_round_trip(tmp_path):
    pairs = [PreferencePair(MSG, "good", "bad", weight=2.0, margin=0.5), PreferencePair(MSG, "a", "b")]
    rated = [RatedAnswer(MSG, "ok", "up"), RatedAnswer(MSG, "no", "down", weight=0.5)]
    prompts = [PromptItem(MSG)]
    assert read_pairs(write_jsonl(tmp_path / "p.jsonl", pairs)) == pairs
    assert read_rated(write_jsonl(tmp_path / "r.jsonl", rated)) == rated
    assert read_prompts(write_jsonl(tmp_path / "q.jsonl", prompts)) == prompts


def test_wrong_record_type_and_label_fail_loudly(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [PreferencePair(MSG, "a", "b")])
    with pytest.raises((ValueError, TypeError)):
        read_rated(path)
    with pytest.raises(ValueError):
        RatedAnswer(MSG, "x", "sideways")
