"""RAFT's replay of earlier rounds' answers (trainer/rejection.py): the plan mixes one pass over
the replayed answers into the first of the round's epochs, and a version's raft_kept.jsonl
round-trips. (Three consecutive tiny-model RAFT runs replaying their parents' answers:
tests/trainer/test_algorithms_learning.py.)"""
import random

from trainer.rejection import KEPT_FILE, fewest_loops, read_kept, replay_plan, write_kept


def test_replay_plan_rehearses_earlier_answers_once():
    epochs = replay_plan([0, 1, 2], [10, 11], size=2, epochs=2, rng=random.Random(0))
    plan = [b for epoch in epochs for b in epoch]
    flat = [x for b in plan for x in b]
    # epoch 1: 3 new + 2 replayed = 5 items in batches 2, 2, 1; epoch 2: the 3 new ones in 2, 1
    assert [len(b) for b in plan] == [2, 2, 1, 2, 1]
    assert sorted(flat[:5]) == [0, 1, 2, 10, 11] and sorted(flat[5:]) == [0, 1, 2]
    assert flat.count(10) == 1 and flat.count(0) == 2


def test_replay_plan_without_replay_is_plain_epochs():
    plan = replay_plan([0, 1, 2, 3], [], size=4, epochs=3, rng=random.Random(1))
    assert [[sorted(b) for b in epoch] for epoch in plan] == [[[0, 1, 2, 3]]] * 3


def test_kept_answers_round_trip(tmp_path):
    assert read_kept(tmp_path) == []          # a folder RAFT did not write: nothing to replay
    records = [{"prompt_ids": [1, 2], "response_ids": [5, 6, 0], "prompt": "hi", "answer": "a b"},
               {"prompt_ids": [3], "response_ids": [7, 0], "prompt": "yo", "answer": "c"}]
    write_kept(tmp_path, records)
    assert (tmp_path / KEPT_FILE).exists() and read_kept(tmp_path) == records


def test_fewest_loops_keeps_the_healthiest_epoch_and_the_later_on_a_tie():
    assert fewest_loops({1: 2, 0: 0}) == 0          # the last epoch looped, the first did not
    assert fewest_loops({1: 0}) == 1                # the last epoch is healthy: nothing else decoded
    assert fewest_loops({2: 1, 1: 3, 0: 1}) == 2    # none healthy: fewest, then the latest
