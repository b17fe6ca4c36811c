"""RAFT's repair of degenerate greedy answers (trainer/raft_repair.py): which tokens each kind of
degenerate answer unlearns; that a repair step lowers the probability of stopping after a fragment;
that the policy leaves with the weights of the fewest degenerate answers (a worse repair is given
back, a healthy one ends the repair). The greedy decoding is replaced where the tiny random model
cannot be made to write a fragment on purpose."""
import random

import torch

from trainer import preference_math as prm
from trainer import raft_repair
from trainer.config import RAFTConfig
from trainer.data import PromptItem
from trainer.online import OnlineRun
from trainer.policy_base import PolicyJob

EOS = 2


def test_a_fragment_unlearns_its_stop_token_only():
    assert raft_repair.repair_marks([11, 12, EOS], ["far too short (2 words; anchor 45)"], [EOS], 4) == [False, False, True]
    assert raft_repair.repair_marks([EOS], ["empty answer"], [EOS], 4) == [True]


def test_a_loop_unlearns_its_repeated_tokens():
    loop = [5, 6, 7, 8, 5, 6, 7, 8, 5, 6, 7, 8]
    marks = raft_repair.repair_marks(loop, ["repeated 3-grams (60% of the answer)"], [EOS], 4)
    assert marks == prm.repeated_ngram_mask(loop, 4) and marks[:4] == [False] * 4 and all(marks[4:])


def test_nothing_to_blame_for_an_answer_off_the_prompt_or_cut_off():
    off = ["does not address the prompt (no content word shared with it or the anchor's answer)"]
    assert not any(raft_repair.repair_marks([11, 12, 13, EOS], off, [EOS], 4))
    assert not any(raft_repair.repair_marks([11, 12], ["far too short (2 words)"], [EOS], 4))   # no stop: cut off


def _run(tiny_model_dir, trained_rm, tmp_path, **overrides):
    torch.set_num_threads(2)
    config = RAFTConfig(lr=1e-3, max_new_tokens=8, show_progress_bar=False, device="cpu", seed=0,
                        micro_batch_size=2, batch_size=2, **overrides)
    job = PolicyJob(tiny_model_dir, tiny_model_dir, tmp_path / "out",
                    prompts=[PromptItem([{"role": "user", "content": "hi"}])], reward_model_dir=trained_rm[0])
    return OnlineRun(job, config), config


def test_a_repair_step_lowers_stopping_after_the_fragment(tiny_model_dir, trained_rm, tmp_path):
    run, config = _run(tiny_model_dir, trained_rm, tmp_path, repair_weight=1.0)
    prompt = run.prompt_ids([{"role": "user", "content": "hi"}])
    fragment = run.tokenizer("The thunderstorms.", add_special_tokens=False).input_ids + [run.eos_ids[0]]
    kept = [(prompt, run.tokenizer("Thunderstorms form when warm air rises.", add_special_tokens=False).input_ids
             + [run.eos_ids[0]])]
    marks = raft_repair.repair_marks(fragment, ["far too short (2 words; anchor 45)"], run.eos_ids, 4)

    def stop_logp():
        with torch.no_grad():
            return run.token_logprobs(run.actor, [prompt], [fragment])[0][0, len(fragment) - 1].item()

    for _ in range(20):            # first the habit: the fragment learned as an answer, stop included
        raft_repair._repair_step(run, [], [(prompt, fragment)], config)
        if stop_logp() > -1.6:
            break
    before = stop_logp()
    assert before > -1.6, before          # π(stop) > 0.2
    for _ in range(5):
        raft_repair._repair_step(run, [(prompt, fragment, marks)], kept, config)
    assert stop_logp() < before - 0.5, (before, stop_logp())


def _fake_decoding(run, counts_by_call: list[int], calls: list):
    """degenerate_greedy_answers stand-in: the i-th call returns counts_by_call[i] fragments."""
    eos = run.eos_ids[0]

    def fake(run_, messages, usual, config):
        n = counts_by_call[len(calls)]
        calls.append(n)
        return [([1, 2], [7, eos], "The owls.", ["far too short (2 words; anchor 40)"])] * n
    return fake


def _mark(run) -> float:
    """A fingerprint of all the actor's weights."""
    return sum(float(v.double().sum()) for v in run.actor.state_dict().values())


def test_a_repair_that_makes_things_worse_is_given_back(tiny_model_dir, trained_rm, tmp_path, monkeypatch):
    run, config = _run(tiny_model_dir, trained_rm, tmp_path, repair_rounds=2, repair_steps=1)
    calls = []
    monkeypatch.setattr(raft_repair, "degenerate_greedy_answers", _fake_decoding(run, [1, 3, 2], calls))
    start = _mark(run)
    kept = [(run.prompt_ids([{"role": "user", "content": "hi"}]), [5, 6, run.eos_ids[0]])]
    out = raft_repair.repair_degenerate(run, [[{"role": "user", "content": "hi"}]], ["an answer"], kept,
                                        config, random.Random(0))
    assert calls == [1, 3, 2] and out["degenerate"] == [1, 3, 2] and out["kept_round"] == 0
    assert _mark(run) == start                      # the weights before the repair are back


def test_a_healthy_repair_ends_the_repair_and_is_kept(tiny_model_dir, trained_rm, tmp_path, monkeypatch):
    run, config = _run(tiny_model_dir, trained_rm, tmp_path, repair_rounds=3, repair_steps=1)
    calls = []
    monkeypatch.setattr(raft_repair, "degenerate_greedy_answers", _fake_decoding(run, [2, 0, 5], calls))
    start = _mark(run)
    kept = [(run.prompt_ids([{"role": "user", "content": "hi"}]), [5, 6, run.eos_ids[0]])]
    out = raft_repair.repair_degenerate(run, [[{"role": "user", "content": "hi"}]], ["an answer"], kept,
                                        config, random.Random(0))
    assert calls == [2, 0] and out["degenerate"] == [2, 0] and out["kept_round"] == 1
    assert _mark(run) != start                      # the repaired weights stay
