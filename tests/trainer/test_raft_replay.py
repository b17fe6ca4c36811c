"""RAFT's replay of earlier rounds' answers (trainer/rejection.py): the plan mixes one pass over
the replayed answers into the first of the round's epochs, and a version's raft_kept.jsonl
round-trips; with start_from_anchor a run fine-tunes the anchor, not the served version that
sampled. (Three consecutive tiny-model RAFT runs replaying their parents' answers:
tests/trainer/test_algorithms_learning.py.)"""
import random

import torch

from tests.helpers.models import shifted_copy
from trainer.config import RAFTConfig
from trainer.data import PromptItem
from trainer.modeling import load_causal_lm
from trainer.policy_base import PolicyJob
from trainer.rejection import KEPT_FILE, fewest_loops, read_kept, replay_plan, run_raft, write_kept


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


def _raft_at_lr_zero(tiny_model_dir, rm_dir, served, out, start_from_anchor: bool, **extra):
    """One RAFT run that cannot move its weights (lr 0): it publishes the weights it started from."""
    config = RAFTConfig(k=2, max_new_tokens=4, lr=0.0, epochs=1, loop_check=False, drop_degenerate=False,
                        require_eos=False, close_cut_answers=False, min_advantage=-100.0, top_p=1.0,
                        show_progress_bar=False, device="cpu", start_from_anchor=start_from_anchor, **extra)
    job = PolicyJob(served, tiny_model_dir, out, prompts=[PromptItem([{"role": "user", "content": "hi"}])],
                    reward_model_dir=rm_dir)
    return run_raft(job, config)


def test_raft_samples_from_the_served_version_and_fine_tunes_the_anchor(tiny_model_dir, trained_rm, tmp_path):
    """start_from_anchor (ReST-EM): the published weights descend from the anchor, not from the served
    version that sampled, and every answer the served version carries is trained on; with it off, the
    run continues from the served version."""
    served = shifted_copy(tiny_model_dir, tmp_path / "served")
    write_kept(served, [{"prompt_ids": [1, 2], "response_ids": [5, 6], "prompt": "a", "answer": "b"}] * 3)
    anchor_state = load_causal_lm(tiny_model_dir).state_dict()
    served_state = load_causal_lm(served).state_dict()

    result = _raft_at_lr_zero(tiny_model_dir, trained_rm[0], served, tmp_path / "from-anchor", True)
    out = load_causal_lm(tmp_path / "from-anchor").state_dict()
    assert result["started_from"] == "anchor" and result["replayed"] == 3
    assert all(torch.equal(out[k], anchor_state[k]) for k in anchor_state)

    # (and the early-stop and opening-stop unlikelihoods' loss paths run: at lr 0 they cannot move the
    # weights either)
    result = _raft_at_lr_zero(tiny_model_dir, trained_rm[0], served, tmp_path / "from-served", False,
                              early_stop_weight=1.0, opening_stop_weight=1.0)
    out = load_causal_lm(tmp_path / "from-served").state_dict()
    assert result["started_from"] == "served"
    assert all(torch.equal(out[k], served_state[k]) for k in served_state)
    assert not all(torch.equal(served_state[k], anchor_state[k]) for k in anchor_state)
