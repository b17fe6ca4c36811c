"""RAFT's unlikelihood terms (trainer/rejection.py): the loop step lowers the probability of the
repeated tokens of a looping answer, and leaves its first occurrence's tokens alone; the early-stop
term lowers the probability of stopping where a kept answer went on."""
import torch

from trainer import preference_math as prm
from trainer.config import RAFTConfig
from trainer.data import PromptItem
from trainer.online import OnlineRun
from trainer.policy_base import PolicyJob
from trainer.rejection import _unlikelihood_step, find_loops, not_ended_mask


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


def test_not_ended_mask_marks_every_real_token_but_the_stop():
    real = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    # the first answer ends with the stop id 2; the second was cut off (no stop): all its real tokens count
    assert not_ended_mask([[5, 7, 2], [9]], [2], real).tolist() == [[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]]


def test_early_stop_unlikelihood_on_known_values_and_it_lowers_stopping_where_the_answer_went_on(
        tiny_model_dir, trained_rm, tmp_path):
    # -log(1 - p) averaged over the marked positions: p = 0.5 and 0.2 -> (0.6931 + 0.2231) / 2
    stop_logp = torch.log(torch.tensor([[0.5, 0.2, 0.9]]))
    loss = prm.unlikelihood_loss(stop_logp, torch.tensor([[1.0, 1.0, 0.0]])).item()
    assert abs(loss - 0.4581) < 1e-4
    torch.set_num_threads(2)
    config = RAFTConfig(lr=1e-3, show_progress_bar=False, device="cpu", seed=0)
    job = PolicyJob(tiny_model_dir, tiny_model_dir, tmp_path / "out", prompts=[PromptItem([{"role": "user", "content": "hi"}])],
                    reward_model_dir=trained_rm[0])
    run = OnlineRun(job, config)
    prompt = run.prompt_ids([{"role": "user", "content": "hi"}])
    answer = run.tokenizer("one two three four five", add_special_tokens=False).input_ids + [run.eos_ids[0]]

    def early_stop() -> float:
        with torch.no_grad():
            _, real, stop = run.token_and_stop_logprobs(run.actor, [prompt], [answer])
        return prm.unlikelihood_loss(stop, not_ended_mask([answer], run.eos_ids, real)).item()
    before = early_stop()
    for _ in range(3):
        _, real, stop = run.token_and_stop_logprobs(run.actor, [prompt], [answer])
        prm.unlikelihood_loss(stop, not_ended_mask([answer], run.eos_ids, real)).backward()
        run.clip_and_step()
    assert early_stop() < before


def test_not_ended_mask_can_cover_only_the_leading_share_of_each_answer():
    real = torch.tensor([[1.0, 1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 0.0, 0.0]])
    # share 0.5: ceil(0.5 * 5) = 3 and ceil(0.5 * 3) = 2 leading tokens; the stop id 2 never counts
    assert not_ended_mask([[5, 7, 8, 9, 2], [2, 7, 8]], [2], real, share=0.5).tolist() == [
        [1.0, 1.0, 1.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0, 0.0]]


def test_opening_stop_step_lowers_stopping_in_the_openings(tiny_model_dir, trained_rm, tmp_path):
    from trainer.rejection import _opening_stop_step
    torch.set_num_threads(2)
    config = RAFTConfig(lr=1e-3, show_progress_bar=False, device="cpu", seed=0, opening_stop_weight=1.0, opening_batch=2)
    job = PolicyJob(tiny_model_dir, tiny_model_dir, tmp_path / "out", prompts=[PromptItem([{"role": "user", "content": "hi"}])],
                    reward_model_dir=trained_rm[0])
    run = OnlineRun(job, config)
    prompt = run.prompt_ids([{"role": "user", "content": "hi"}])
    openings = [(prompt, run.tokenizer(t, add_special_tokens=False).input_ids) for t in ("one two", "three four five")]

    def stop_mass() -> float:
        with torch.no_grad():
            _, real, stop = run.token_and_stop_logprobs(run.actor, [p for p, _ in openings], [r for _, r in openings])
        return float((stop.exp() * real).sum())
    before = stop_mass()
    losses = []
    for step in range(3):
        losses.append(_opening_stop_step(run, openings, step, config))
        run.clip_and_step()
    assert all(x > 0 for x in losses)
    assert stop_mass() < before
