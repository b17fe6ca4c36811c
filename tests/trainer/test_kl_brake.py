"""RAFT's KL brake (trainer/kl_brake.py): alpha halves until the estimated KL to the anchor is within
the limit (the last tried is kept), the weights are interpolated between the served and the trained
ones, and a real RAFT run on the tiny model publishes exactly that interpolation."""
import torch

from tests.helpers.models import shifted_copy
from trainer.config import RAFTConfig
from trainer.data import PromptItem
from trainer.kl_brake import brake_alphas, interpolate_
from trainer.modeling import load_causal_lm
from trainer.policy_base import PolicyJob
from trainer.rejection import run_raft


def test_alpha_halves_until_the_kl_is_within_the_limit():
    kl = lambda a: 10 * a * a                    # noqa: E731  (KL grows ~quadratically with the step)
    assert brake_alphas(kl, limit=3.0, tries=2) == (0.5, {1.0: 10.0, 0.5: 2.5})
    assert brake_alphas(kl, limit=20.0, tries=2) == (1.0, {1.0: 10.0})           # within: untouched
    # never within: the last (smallest) alpha tried is kept, after `tries` halvings
    assert brake_alphas(kl, limit=0.1, tries=2) == (0.25, {1.0: 10.0, 0.5: 2.5, 0.25: 0.625})
    assert brake_alphas(kl, limit=0.1, tries=0) == (1.0, {1.0: 10.0})


def test_interpolation_moves_each_weight_alpha_of_the_way():
    start, end = [torch.tensor([0.0, 2.0]), torch.tensor([[1.0]])], [torch.tensor([4.0, -2.0]), torch.tensor([[3.0]])]
    params = [torch.zeros(2), torch.zeros(1, 1)]
    interpolate_(params, start, end, 0.25)
    assert params[0].tolist() == [1.0, 1.0] and params[1].tolist() == [[1.5]]
    interpolate_(params, start, end, 1.0)
    assert params[0].tolist() == [4.0, -2.0]


def _raft(tiny_model_dir, rm_dir, served, out, kl_budget, lr):
    config = RAFTConfig(k=2, max_new_tokens=4, lr=lr, epochs=1, loop_check=False, drop_degenerate=False,
                        require_eos=False, close_cut_answers=False, min_advantage=-100.0, top_p=1.0,
                        opening_stop_weight=0.0, unlikelihood_weight=0.0, kl_brake_prompts=4,
                        show_progress_bar=False, device="cpu", seed=3)
    prompts = [PromptItem([{"role": "user", "content": f"question {i}"}]) for i in range(3)]
    job = PolicyJob(served, tiny_model_dir, out, prompts=prompts, reward_model_dir=rm_dir, kl_budget=kl_budget)
    return run_raft(job, config)


def test_raft_publishes_the_braked_interpolation(tiny_model_dir, trained_rm, tmp_path):
    served = shifted_copy(tiny_model_dir, tmp_path / "served")
    free = _raft(tiny_model_dir, trained_rm[0], served, tmp_path / "free", None, lr=1e-2)
    assert "kl_brake" not in free                       # no budget: no brake
    held = _raft(tiny_model_dir, trained_rm[0], served, tmp_path / "held", 1e-6, lr=1e-2)
    # a limit nothing meets: three estimates (alpha 1, 1/2, 1/4), the last kept
    assert held["kl_brake_alpha"] == 0.25 and list(held["kl_brake"]["estimates"]) == ["1.0", "0.5", "0.25"]
    assert held["kl_brake"]["limit"] == 0.9 * 1e-6 and held["kl_brake"]["prompts"] == 3
    s, f, h = (load_causal_lm(d).state_dict() for d in (served, tmp_path / "free", tmp_path / "held"))
    moved = [k for k in s if not torch.equal(s[k], f[k])]
    assert moved                                        # training moved the weights
    for k in s:
        assert torch.allclose(h[k], s[k] + 0.25 * (f[k] - s[k]), atol=1e-6), k


def test_a_policy_equal_to_its_anchor_has_zero_kl_and_is_not_braked(tiny_model_dir, trained_rm, tmp_path):
    result = _raft(tiny_model_dir, trained_rm[0], tiny_model_dir, tmp_path / "same", 8.0, lr=0.0)
    assert result["kl_brake_alpha"] == 1.0 and result["kl_brake"]["estimates"] == {"1.0": 0.0}
