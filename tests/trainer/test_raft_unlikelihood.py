"""RAFT's loop unlearning (trainer/rejection.py): the unlikelihood step lowers the probability of
the repeated tokens of a looping answer, and leaves its first occurrence's tokens alone."""
import torch

from trainer import preference_math as prm
from trainer.config import RAFTConfig
from trainer.data import PromptItem
from trainer.online import OnlineRun
from trainer.policy_base import PolicyJob
from trainer.rejection import _unlikelihood_step, find_loops


def test_unlikelihood_step_unlearns_a_loop(tiny_model_dir, trained_rm, tmp_path):
    torch.set_num_threads(2)
    config = RAFTConfig(lr=1e-3, max_new_tokens=16, unlikelihood_weight=1.0, unlikelihood_batch=1, micro_batch_size=1,
                        unlikelihood_greedy=False, show_progress_bar=False, device="cpu", seed=0)
    job = PolicyJob(tiny_model_dir, tiny_model_dir, tmp_path / "out", prompts=[PromptItem([{"role": "user", "content": "hi"}])],
                    reward_model_dir=trained_rm[0])
    run = OnlineRun(job, config)
    prompt = run.prompt_ids([{"role": "user", "content": "hi"}])
    loop = run.tokenizer("one two three one two three one two three", add_special_tokens=False).input_ids
    fine = run.tokenizer("one two three four five", add_special_tokens=False).input_ids
    # found among the samples by the gate's word-level repetition measure; the fine one is not
    loops = find_loops(run, [], [(prompt, loop, "one two three one two three one two three"),
                                 (prompt, fine, "one two three four five")], config)
    assert len(loops) == 1 and loops[0][1] == loop
    mask = torch.tensor(loops[0][2])
    assert mask.tolist() == prm.repeated_ngram_mask(loop, config.unlikelihood_ngram) and mask.any()

    def logp():
        with torch.no_grad():
            return run.token_logprobs(run.actor, [prompt], [loop])[0][0]

    before = logp()
    for step in range(1, 6):
        _unlikelihood_step(run, loops, step, config)
        run.clip_and_step()
    after = logp()
    assert after[mask].mean() < before[mask].mean() - 0.1, (before[mask], after[mask])
