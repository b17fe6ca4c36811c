"""RAFT's loop check (trainer/rejection.check_loops): when the last epoch's greedy answers loop more
than an earlier epoch's, the policy leaves with the earlier epoch's weights; when the last epoch is
healthy, no earlier epoch is decoded. The greedy decoding is replaced by a counter keyed on the
weights loaded at the time (the tiny random model cannot be made to loop on purpose)."""
import torch

from trainer import rejection
from trainer.config import RAFTConfig
from trainer.data import PromptItem
from trainer.online import OnlineRun
from trainer.policy_base import PolicyJob


def _run(tiny_model_dir, trained_rm, tmp_path):
    config = RAFTConfig(max_new_tokens=8, show_progress_bar=False, device="cpu", seed=0, drop_degenerate=False)
    job = PolicyJob(tiny_model_dir, tiny_model_dir, tmp_path / "out",
                    prompts=[PromptItem([{"role": "user", "content": "hi"}])], reward_model_dir=trained_rm[0])
    return OnlineRun(job, config), config


def _marked(run, value: float) -> dict:
    """A copy of the actor's weights whose first parameter is filled with `value` (the epoch's mark)."""
    state = {k: v.detach().clone() for k, v in run.actor.state_dict().items()}
    first = next(iter(state))
    state[first].fill_(value)
    return state


def _fake_greedy(run, loops_by_mark: dict[float, int], decoded: list):
    first = next(iter(run.actor.state_dict()))

    def degenerate(run_, messages, usual, config):
        mark = round(float(run_.actor.state_dict()[first].flatten()[0]), 3)
        decoded.append(mark)
        return ["la femme, la femme, la femme"] * loops_by_mark[mark]
    return degenerate, first


def test_a_looping_last_epoch_is_given_back(tiny_model_dir, trained_rm, tmp_path, monkeypatch):
    run, config = _run(tiny_model_dir, trained_rm, tmp_path)
    snapshots = [_marked(run, 0.1), _marked(run, 0.2)]          # epochs 1 and 2
    run.actor.load_state_dict(_marked(run, 0.3))                  # epoch 3: what training left
    decoded = []
    fake, first = _fake_greedy(run, {0.1: 0, 0.2: 1, 0.3: 2}, decoded)
    monkeypatch.setattr(rejection, "_degenerate_greedy", fake)
    check = rejection.check_loops(run, [[{"role": "user", "content": "hi"}]], ["hello"], snapshots, config)
    assert decoded == [0.3, 0.2, 0.1]                             # back from the last to a healthy one
    assert check["kept_epoch"] == 1 and check["degenerate_greedy"] == {"1": 0, "2": 1, "3": 2}
    assert float(run.actor.state_dict()[first].flatten()[0]) == torch.tensor(0.1).item()


def test_fewest_loops_wins_when_no_epoch_is_healthy(tiny_model_dir, trained_rm, tmp_path, monkeypatch):
    run, config = _run(tiny_model_dir, trained_rm, tmp_path)
    snapshots = [_marked(run, 0.1), _marked(run, 0.2)]
    run.actor.load_state_dict(_marked(run, 0.3))
    decoded = []
    fake, first = _fake_greedy(run, {0.1: 3, 0.2: 1, 0.3: 2}, decoded)
    monkeypatch.setattr(rejection, "_degenerate_greedy", fake)
    check = rejection.check_loops(run, [[{"role": "user", "content": "hi"}]], ["hello"], snapshots, config)
    assert decoded == [0.3, 0.2, 0.1] and check["kept_epoch"] == 2
    assert float(run.actor.state_dict()[first].flatten()[0]) == torch.tensor(0.2).item()
    assert check["examples"]["2"].startswith("la femme")


def test_a_healthy_last_epoch_is_kept_without_decoding_earlier_ones(tiny_model_dir, trained_rm, tmp_path, monkeypatch):
    run, config = _run(tiny_model_dir, trained_rm, tmp_path)
    snapshots = [_marked(run, 0.1)]
    run.actor.load_state_dict(_marked(run, 0.3))
    decoded = []
    fake, first = _fake_greedy(run, {0.1: 0, 0.3: 0}, decoded)
    monkeypatch.setattr(rejection, "_degenerate_greedy", fake)
    check = rejection.check_loops(run, [[{"role": "user", "content": "hi"}]], ["hello"], snapshots, config)
    assert decoded == [0.3] and check["kept_epoch"] == 2 and check["degenerate_greedy"] == {"2": 0}
    assert float(run.actor.state_dict()[first].flatten()[0]) == torch.tensor(0.3).item()


def test_the_real_greedy_check_counts_loops_of_the_current_weights(tiny_model_dir, trained_rm, tmp_path):
    run, config = _run(tiny_model_dir, trained_rm, tmp_path)
    messages = [[{"role": "user", "content": f"question {i}"}] for i in range(4)]
    before = {k: v.clone() for k, v in run.actor.state_dict().items()}
    check = rejection.check_loops(run, messages, ["an answer"] * 4, [], config)
    assert check["of_epochs"] == 1 and check["kept_epoch"] == 1 and check["prompts"] == 4
    assert 0 <= check["degenerate_greedy"]["1"] <= 4
    assert all(torch.equal(v, before[k]) for k, v in run.actor.state_dict().items())   # nothing reloaded
