"""The demo report's helpers on a small real registry folder of fake versions (no model, no
engine): degenerate counts, the RM and gate columns from metadata, the learning curve, the
markdown and the plots."""
import json

from common.registry import ModelRegistry
from demo import evaluate, report

PROMPTS = ["Why should I learn about glaciers?", "What is cheese?", "Explain tides in simple terms."]
V0 = ["Glaciers store most of the fresh water on Earth and shape valleys over thousands of years.",
      "Cheese is a food made from milk curds, pressed and often aged, such as cheddar.",
      "Tides are the rise and fall of the sea caused by the pull of the Moon and the Sun."]
V1 = ["Laughing.", "Cheese is a food made from milk, for example cheddar from England.",
      "tides tides tides tides tides tides tides tides tides tides"]


def _publish(reg: ModelRegistry, tmp_path, name: str, meta: dict) -> str:
    src = tmp_path / f"src-{name}"
    src.mkdir()
    (src / "config.json").write_text("{}")
    return reg.publish(src, meta)


def _registries(tmp_path):
    rms = ModelRegistry(tmp_path / "reward_models", prefix="rm")
    rm = _publish(rms, tmp_path, "rm", {"metrics": {"length_correlation": 0.42, "heldout_accuracy": 0.7}})
    pol = ModelRegistry(tmp_path / "models")
    _publish(pol, tmp_path, "v0", {"parent": None})
    _publish(pol, tmp_path, "v1", {"parent": "v0", "algorithm": "ppo", "reward_model": rm, "kl_to_anchor": 1.5,
                                   "data": {"votes_used": 40},
                                   "metrics": {"reward_model": {"heldout_accuracy": 0.7, "length_correlation": 0.40}},
                                   "gate": {"passed": True, "reasons": []}})
    _publish(pol, tmp_path, "v2", {"parent": "v1", "algorithm": "dpo", "reward_model": None, "kl_to_anchor": 9.0,
                                   "data": {"votes_used": 80},
                                   "gate": {"passed": False, "reasons": ["KL to anchor 9.000 > budget 6"]}})
    return pol, rms


def test_degenerate_summary_counts_against_the_anchor_and_keeps_a_few_examples():
    count, examples = evaluate.degenerate_summary(PROMPTS, V1, V0, max_examples=1)
    assert count == 2 and len(examples) == 1
    assert examples[0]["answer"] == "Laughing." and examples[0]["reasons"]
    assert evaluate.degenerate_summary(PROMPTS, V0, V0) == (0, [])


def test_score_answers_win_rate_and_degenerate_columns():
    base = evaluate.score_answers(PROMPTS, V0, [True] * 3, None, None)
    assert base["win_rate_vs_v0"] == 0.5 and base["degenerate_count"] == 0
    new = evaluate.score_answers(PROMPTS, V1, [True] * 3, V0, base["scores"])
    assert new["degenerate_count"] == 2 and new["eval_prompts"] == 3
    assert new["win_rate_vs_v0"] < 0.5  # degenerate answers lose under every preference
    concise = evaluate.score_answers(PROMPTS, V1, [True] * 3, V0, base["scores"], preference="concise_warm")
    assert concise["hidden_score"] != new["hidden_score"]


def test_metadata_columns_read_rm_length_correlation_kl_algorithm_and_gate(tmp_path):
    pol, rms = _registries(tmp_path)
    v0, v1, v2 = (evaluate.metadata_columns(pol.metadata(v), rms) for v in ("v0", "v1", "v2"))
    assert v0["rm_length_correlation"] is None and v0["gate"] is None and v0["algorithm"] is None
    assert (v1["algorithm"], v1["kl_to_anchor"], v1["rm_length_correlation"]) == ("ppo", 1.5, 0.42)
    assert v1["gate"] == "pass" and v1["feedback_used"] == 40
    assert v2["rm_length_correlation"] is None and v2["gate"].startswith("fail: KL to anchor")
    assert v2["gate_reasons"] == ["KL to anchor 9.000 > budget 6"]
    # the RM registry answers (0.42), also when named by its folder; a garbage-collected RM
    # falls back to the copy of its metrics in the policy metadata (0.40), else unknown
    rm = pol.metadata("v1")["reward_model"]
    assert evaluate.rm_length_correlation({**pol.metadata("v1"), "reward_model": str(rms.path(rm))}, rms) == 0.42
    assert evaluate.rm_length_correlation({**pol.metadata("v1"), "reward_model": "rm99"}, rms) == 0.40
    assert evaluate.rm_length_correlation({"reward_model": "rm99"}, rms) is None


def _rows(tmp_path):
    pol, rms = _registries(tmp_path)
    base = evaluate.score_answers(PROMPTS, V0, [True] * 3, None, None)
    rows = []
    for v, answers in (("v0", V0), ("v1", V1), ("v2", V0)):
        scored = evaluate.score_answers(PROMPTS, answers, [True] * 3, None if v == "v0" else V0, base["scores"])
        scored.pop("scores")
        rows.append({"version": v, **scored, "kl_to_v0": 0.1, **evaluate.metadata_columns(pol.metadata(v), rms),
                     "examples": [{"prompt": p, "answer": a} for p, a in zip(PROMPTS, answers)]})
    return rows


ROUNDS = [{"round": 1, "interactions": 32, "feedback_events": 45, "errors": 0, "served_before": "v0",
           "pipeline": {"state": "succeeded", "version": "v1"}, "served_after": "v1"},
          {"round": 2, "interactions": 32, "feedback_events": 44, "errors": 0, "served_before": "v1",
           "pipeline": {"state": "rejected", "version": "v2", "error": "KL"}, "served_after": "v1"},
          {"round": 3, "interactions": 32, "feedback_events": 40, "errors": 0, "served_before": "v1",
           "pipeline": {"state": "failed", "error": "boom"}, "served_after": "v1"}]


def test_learning_curve_points_use_cumulative_feedback_events(tmp_path):
    points = report.learning_curve_points(_rows(tmp_path), ROUNDS)
    assert [(p["version"], p["events"], p["served"]) for p in points] == \
        [("v0", 0, True), ("v1", 45, True), ("v2", 89, False)]
    assert points[0]["win_rate"] == 0.5 and points[2]["win_rate"] == 0.5  # v2 answers like v0
    assert report.learning_curve_points([], ROUNDS) == []


def test_markdown_names_the_preference_and_lists_degenerate_answers_and_gate_reasons(tmp_path):
    rows = _rows(tmp_path)
    steps = [{"version": "v1", "reward": 0.1, "kl": 0.0}, {"version": "v1", "reward": 0.2, "kl": 0.1}]
    images = report.plots(rows, steps, tmp_path, rounds=ROUNDS)
    assert {p.name for p in images} == {"versions.png", "learning_curve.png", "ppo_steps.png"}
    for p in images:
        assert p.read_bytes()[:4] == b"\x89PNG"
    md = report.write_markdown(rows, ROUNDS, "settings", images, tmp_path, preference="balanced",
                               preference_text="what users want").read_text()
    assert md.splitlines()[0] == "# Live RLHF demo report — preference `balanced`"
    assert "| v1 | ppo |" in md and "| 2/3 |" in md and "+0.42" in md and "| 1.500 |" in md
    assert "'Laughing.'" in md and "far too short" in md
    assert "**v2** refused: KL to anchor 9.000 > budget 6" in md
    assert "learning_curve.png" in md and "versions.png" in md
    evaluate.save(rows, tmp_path / "versions.json")
    saved = json.loads((tmp_path / "versions.json").read_text())
    assert saved[1]["degenerate_count"] == 2 and saved[1]["rm_length_correlation"] == 0.42
    assert {"win_rate_vs_v0", "feedback_used", "parent", "kl_to_anchor", "algorithm", "gate_reasons"} <= set(saved[1])


def test_evaluate_versions_end_to_end_on_the_tiny_model(tmp_path, tiny_model_dir):
    """The glue of evaluate_versions (generation, finished flags, KL, metadata) on real weights."""
    pol = ModelRegistry(tmp_path / "models")
    rms = ModelRegistry(tmp_path / "reward_models", prefix="rm")
    pol.publish(tiny_model_dir, {"parent": None})
    pol.publish(tiny_model_dir, {"parent": "v0", "algorithm": "ppo", "reward_model": "rm0", "kl_to_anchor": 0.0,
                                 "gate": {"passed": True, "reasons": []}})
    rows = evaluate.evaluate_versions(pol, PROMPTS[:2], 8, reward_models=rms)
    assert [r["version"] for r in rows] == ["v0", "v1"]
    assert rows[1]["win_rate_vs_v0"] == 0.5  # same weights, greedy: the same answers
    answers = [[e["answer"] for e in r["examples"]] for r in rows]
    assert rows[1]["eval_prompts"] == 2
    assert rows[1]["degenerate_count"] == evaluate.degenerate_summary(PROMPTS[:2], answers[1], answers[0])[0]
    assert rows[0]["degenerate_count"] == evaluate.degenerate_summary(PROMPTS[:2], answers[0])[0]
    assert rows[1]["rm_length_correlation"] is None and rows[1]["algorithm"] == "ppo"
    json.dumps(rows)  # versions.json must be able to hold every row
    # a re-score (bench/rescore_demo.py) skips KL and gives the same scores
    quick = evaluate.evaluate_versions(pol, PROMPTS[:2], 8, with_kl=False)
    assert [r["kl_to_v0"] for r in quick] == [None, None]
    assert [r["win_rate_vs_v0"] for r in quick] == [r["win_rate_vs_v0"] for r in rows]


def test_rm_accuracy_cell_shows_held_out_then_pooled_with_its_count():
    assert report._rm_accuracy({"rm_accuracy": 7 / 13, "rm_pooled_accuracy": 0.727, "rm_pooled_pairs": 55}) == \
        "54% / 73% of 55"
    assert report._rm_accuracy({"rm_accuracy": 0.6}) == "60%"          # a transformer RM: no pooled estimate
    assert report._rm_accuracy({"rm_accuracy": None}) == "-"
