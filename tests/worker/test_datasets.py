from worker.datasets import build_training_sets, hold_out_texts

MSG = lambda p: [{"role": "user", "content": p}]  # noqa: E731


def answer(rid, prompt, text, version="v0"):
    return {"response_id": rid, "prompt_key": "k_" + prompt, "messages": MSG(prompt),
            "text": text, "model_version": version}


def rec(i, kind, rater, answers, created=None, **ev):
    ids = [a["response_id"] for a in answers]
    target = ids[0] if kind == "thumb" else "|".join(ids)
    event = {"event_id": f"e{i}", "kind": kind, "rater": rater, "target": target,
             "created": created if created is not None else float(i), **ev}
    if kind == "thumb":
        event["response_id"] = ids[0]
    else:
        event["response_ids"] = ids
    return {"stream_id": f"{i}-0", "event": event, "answers": {a["response_id"]: a for a in answers}}


def test_comparisons_thumbs_ties_both_bad_and_latest_vote_wins():
    a, b = answer("a", "p1", "good"), answer("b", "p1", "bad")
    c, d = answer("c", "p2", "nice"), answer("d", "p2", "meh")
    e = answer("e", "p3", "lonely up")
    records = [
        rec(0, "comparison", "u1", [a, b], choice="b"),      # superseded below
        rec(1, "comparison", "u1", [a, b], choice="a"),
        rec(2, "comparison", "u2", [a, b], choice="tie"),
        rec(3, "comparison", "u3", [c, d], choice="both_bad"),
        rec(4, "thumb", "u4", [c], rating="up"),
        rec(5, "thumb", "u4", [d], rating="down"),
        rec(6, "thumb", "u5", [e], rating="up"),
    ]
    sets = build_training_sets(records, {"v0"}, heldout_fraction=0.0)
    texts = sorted((p.chosen, p.rejected) for p in sets.pairs)
    assert ("good", "bad") in texts and ("bad", "good") not in texts
    assert sets.stats["superseded_votes"] == 1
    assert sets.stats["ties_skipped"] == 1
    # both_bad gave c and d a down each; u4's thumbs make c split (1 up / 1 down) and d down
    assert sets.stats["thumbs_split_dropped"] == 1
    assert [(r.answer, r.label) for r in sets.rated] == [("meh", "down"), ("lonely up", "up")] or \
        sorted((r.answer, r.label) for r in sets.rated) == [("lonely up", "up"), ("meh", "down")]
    assert len(sets.train_prompts) == 3 and not sets.heldout_prompts


def test_thumbs_on_same_prompt_become_pairs_and_unknown_versions_drop():
    a, b = answer("a", "p1", "up-ans"), answer("b", "p1", "down-ans")
    x = answer("x", "p1", "from a forged version", version="v99")
    records = [rec(0, "thumb", "u1", [a], rating="up"), rec(1, "thumb", "u2", [b], rating="down"),
               rec(2, "thumb", "u3", [x], rating="up")]
    sets = build_training_sets(records, {"v0"}, heldout_fraction=0.0)
    assert [(p.chosen, p.rejected) for p in sets.pairs] == [("up-ans", "down-ans")]
    assert sets.stats["pairs_from_thumbs"] == 1
    assert sets.stats["dropped_unknown_version"] == 1
    assert sets.rated == []


def test_rater_share_cap_keeps_most_recent_votes():
    answers = [answer(f"r{i}", f"p{i}", f"t{i}") for i in range(40)]
    records = [rec(i, "thumb", "spammer", [answers[i]], rating="up") for i in range(30)]
    records += [rec(30 + i, "thumb", f"u{i}", [answers[30 + i]], rating="down") for i in range(10)]
    sets = build_training_sets(records, {"v0"}, max_rater_share=0.25, heldout_fraction=0.0)
    assert sets.stats["dropped_rater_cap"] == 20     # cap = max(10, 0.25 * 40) = 10
    ups = [r for r in sets.rated if r.label == "up"]
    assert sorted(r.answer for r in ups) == sorted(f"t{i}" for i in range(20, 30))


def test_heldout_split_is_by_prompt_and_deterministic():
    answers = [answer(f"a{i}", f"prompt {i}", "x") for i in range(200)]
    records = [rec(i, "thumb", f"u{i}", [answers[i]], rating="up") for i in range(200)]
    s1 = build_training_sets(records, {"v0"}, heldout_fraction=0.2)
    s2 = build_training_sets(records, {"v0"}, heldout_fraction=0.2)
    assert 20 <= len(s1.heldout_prompts) <= 60
    assert [p.messages for p in s1.heldout_prompts] == [p.messages for p in s2.heldout_prompts]
    train = {p.messages[0]["content"] for p in s1.train_prompts}
    assert not train & {p.messages[0]["content"] for p in s1.heldout_prompts}


def test_new_feedback_is_marked_and_rm_replays_a_sample_of_the_old():
    from worker.training import rm_training_data
    old = [rec(i, "comparison", f"u{i}", [answer(f"o{i}a", f"p{i}", f"long old {i}"),
                                          answer(f"o{i}b", f"p{i}", f"old {i}")], choice="b")
           for i in range(6)]
    new = [rec(10 + i, "comparison", f"n{i}", [answer(f"n{i}a", f"q{i}", f"new {i}"),
                                               answer(f"n{i}b", f"q{i}", f"long new {i}")], choice="a")
           for i in range(2)]
    for r in old:
        r["snapshot_run"] = "run1"
    for r in new:
        r["snapshot_run"] = "run2"
    sets = build_training_sets(old + new, {"v0"}, heldout_fraction=0.0, max_rater_share=1.0,
                               is_new=lambda r: r["snapshot_run"] == "run2")
    assert sorted(p.chosen for p in sets.new_pairs) == ["new 0", "new 1"]
    assert len(sets.pairs) == 8 and sets.stats["new_pairs"] == 2
    # warm start: the 2 new pairs + 1.0 x 2 old ones; a fresh RM (no warm start) sees everything
    pairs, _ = rm_training_data(sets, warm_start=True, replay_ratio=1.0, seed="run2")
    assert len(pairs) == 4 and {p.chosen for p in pairs[:2]} == {"new 0", "new 1"}
    assert all(p.chosen.startswith("old") for p in pairs[2:])
    assert rm_training_data(sets, warm_start=False, replay_ratio=1.0, seed="run2")[0] == sets.pairs
    assert rm_training_data(sets, warm_start=True, replay_ratio=-1, seed="run2")[0] == sets.pairs


def test_operator_gate_set_is_held_out_of_training():
    a1, b1 = answer("a1", "gate q", "yes"), answer("b1", "gate q", "no")
    a2, b2 = answer("a2", "train q", "yes"), answer("b2", "train q", "no")
    t3 = answer("t3", "gate q", "maybe")
    records = [rec(1, "comparison", "u1", [a1, b1], choice="a"), rec(2, "comparison", "u2", [a2, b2], choice="a"),
               rec(3, "thumb", "u3", [t3], rating="up")]
    sets = build_training_sets(records, {"v0"}, heldout_fraction=0.0, is_new=lambda r: True)
    assert len(sets.pairs) == 2 and len(sets.rated) == 1 and not sets.eval_pairs
    moved = hold_out_texts(sets, {"gate q"})
    assert moved == 3   # its prompt, its pair and its thumb
    assert [p.messages[0]["content"] for p in sets.pairs] == ["train q"] == [
        p.messages[0]["content"] for p in sets.new_pairs]
    assert [p.messages[0]["content"] for p in sets.eval_pairs] == ["gate q"]
    assert [p.messages[0]["content"] for p in sets.train_prompts] == ["train q"]
    assert [p.messages[0]["content"] for p in sets.heldout_prompts] == ["gate q"]
    assert sets.rated == [] and sets.new_rated == []
    assert sets.stats["pairs"] == 1 and sets.stats["eval_pairs"] == 1 and sets.stats["held_out_for_gate_set"] == 3
    assert hold_out_texts(sets, set()) == 0


def test_served_kl_to_anchor_is_the_gate_record_against_todays_anchor():
    from worker.training import served_kl_to_anchor
    assert served_kl_to_anchor({}, "v0", "v0") == 0.0                      # the anchor itself
    assert served_kl_to_anchor({"anchor": "v0", "kl_to_anchor": 3.5}, "v2", "v0") == 3.5
    assert served_kl_to_anchor({"anchor": "v1", "kl_to_anchor": 3.5}, "v2", "v0") is None   # another anchor
    assert served_kl_to_anchor({"anchor": "v0", "kl_to_anchor": float("nan")}, "v2", "v0") is None
    assert served_kl_to_anchor({"anchor": "v0"}, "v2", "v0") is None       # no record (e.g. published by hand)
