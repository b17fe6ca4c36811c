"""RAFT's KL brake (trainer/kl_brake.py): alpha shrinks (a secant step from the served version's KL,
else halving) until the estimated KL to the anchor is within the limit (the last tried is kept), the
weights are interpolated between the served and the trained ones, and a real RAFT run on the tiny
model publishes exactly that interpolation."""
import torch

from tests.helpers.models import shifted_copy
from trainer.config import RAFTConfig
from trainer.data import PromptItem
from trainer.kl_brake import brake_alphas, interpolate_, next_alpha
from trainer.modeling import load_causal_lm
from trainer.policy_base import PolicyJob
from trainer.rejection import run_raft


def test_alpha_halves_until_the_kl_is_within_the_limit():
    kl = lambda a: 10 * a * a                    # noqa: E731  (KL grows ~quadratically with the step)
    assert brake_alphas(kl, limit=3.0, tries=2) == (0.5, {1.0: 10.0, 0.5: 2.5}, {})
    assert brake_alphas(kl, limit=20.0, tries=2) == (1.0, {1.0: 10.0}, {})           # within: untouched
    # never within: the last (smallest) alpha tried is kept, after `tries` halvings
    assert brake_alphas(kl, limit=0.1, tries=2) == (0.25, {1.0: 10.0, 0.5: 2.5, 0.25: 0.625}, {})
    assert brake_alphas(kl, limit=0.1, tries=0) == (1.0, {1.0: 10.0}, {})
    # unknown start: no line to trust, so even with `settle` every alpha is estimated
    assert brake_alphas(kl, limit=3.0, tries=2, settle=lambda a: None) == (0.5, {1.0: 10.0, 0.5: 2.5}, {})


def test_next_alpha_is_where_the_line_from_the_start_meets_the_limit():
    # served 3.66, alpha 1 read 7.34, limit 7.2: the line asks for 0.962 of the step; capped at 0.9
    assert next_alpha(1.0, 7.34, 7.2, 3.66) == 0.9
    # served 3.06, alpha 1 read 8.92: (7.2 - 3.06) / (8.92 - 3.06) = 0.7065 -> 0.706
    assert next_alpha(1.0, 8.92, 7.2, 3.06) == 0.706
    # from a smaller alpha: 0.5 * (7.2 - 4) / (12 - 4) = 0.2
    assert next_alpha(0.5, 12.0, 7.2, 4.0) == 0.2
    # far over: never below alpha / 8
    assert next_alpha(1.0, 1000.0, 7.2, 0.0) == 0.125
    # start unknown, or already at/over the limit: halve
    assert next_alpha(1.0, 9.0, 7.2, None) == 0.5
    assert next_alpha(0.5, 9.0, 7.2, 7.5) == 0.25


def test_brake_with_a_known_start_takes_secant_steps():
    kl = lambda a: 2.0 + 8.0 * a           # noqa: E731  (linear from the served version's 2.0)
    # one step lands on the limit: (6 - 2) / (10 - 2) = 0.5, estimated 6.0 <= 6
    assert brake_alphas(kl, limit=6.0, tries=2, start_kl=2.0) == (0.5, {1.0: 10.0, 0.5: 6.0}, {})
    convex = lambda a: 2.0 + 8.0 * a * a   # noqa: E731  (the line errs on the safe side)
    assert brake_alphas(convex, limit=4.0, tries=2, start_kl=2.0) == (0.25, {1.0: 10.0, 0.25: 2.5}, {})
    assert brake_alphas(convex, limit=2.1, tries=1, start_kl=2.0)[0] == 0.125   # floor 1/8, last kept
    concave = lambda a: 2.0 + 8.0 * a ** 0.5   # noqa: E731  (the line overshoots: a second secant step)
    alpha, seen, _ = brake_alphas(concave, limit=4.0, tries=2, start_kl=2.0)
    assert list(seen) == [1.0, 0.25, 0.125] and alpha == 0.125    # 0.25 read 6.0; 0.25 * 2 / 4 = 0.125


def test_a_settled_secant_step_is_applied_without_a_second_estimate():
    kl = lambda a: 2.0 + 8.0 * a           # noqa: E731
    estimated, settled = [], []

    def estimate(a):
        estimated.append(a)
        return kl(a)
    # (6 - 2) / (10 - 2) = 0.5: the line predicts exactly the limit there; settled, not estimated
    assert brake_alphas(estimate, limit=6.0, tries=2, start_kl=2.0, settle=settled.append) == (0.5, {1.0: 10.0}, {0.5: 6.0})
    assert estimated == [1.0] and settled == [0.5]
    # capped at 0.9 alpha: the line predicts 2 + 0.9 * 8 = 9.2 <= 9.5
    assert brake_alphas(kl, limit=9.5, tries=2, start_kl=2.0, settle=lambda a: None) == (0.9, {1.0: 10.0}, {0.9: 9.2})
    # session 23's formal_expert round 3: served 4.0386, alpha 1 read 9.811; the line's 0.54768 rounds up
    # to 0.548, which the line puts 0.0016 over 7.2 — within the rounding, so it is settled
    alpha, seen, predicted = brake_alphas(lambda a: 9.811, limit=7.2, tries=2, start_kl=4.0386, settle=lambda a: None)
    assert alpha == 0.548 and list(seen) == [1.0] and abs(predicted[0.548] - 7.2016) < 1e-3
    # floored at alpha / 8, the line predicts 2 + 8 / 8 = 3.0 > 2.1: that alpha is estimated after all
    alpha, seen, predicted = brake_alphas(kl, limit=2.1, tries=1, start_kl=2.0, settle=lambda a: None)
    assert alpha == 0.125 and list(seen) == [1.0, 0.125] and predicted == {}


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
    assert held["kl_brake"]["start_kl"] is None         # the job did not say: alpha halves
    assert held["kl_brake_estimate"] == held["kl_brake"]["estimates"]["0.25"] and held["kl_brake"]["predicted"] == {}
    # where the round's time went, per phase (version metadata)
    assert list(held["phase_seconds"]) == ["sample_and_rank", "find_loops", "fine_tune", "loop_check", "repair", "kl_brake"]
    assert all(v >= 0 for v in held["phase_seconds"].values())
    s, f, h = (load_causal_lm(d).state_dict() for d in (served, tmp_path / "free", tmp_path / "held"))
    moved = [k for k in s if not torch.equal(s[k], f[k])]
    assert moved                                        # training moved the weights
    for k in s:
        assert torch.allclose(h[k], s[k] + 0.25 * (f[k] - s[k]), atol=1e-6), k


def test_a_policy_equal_to_its_anchor_has_zero_kl_and_is_not_braked(tiny_model_dir, trained_rm, tmp_path):
    result = _raft(tiny_model_dir, trained_rm[0], tiny_model_dir, tmp_path / "same", 8.0, lr=0.0)
    assert result["kl_brake_alpha"] == 1.0 and result["kl_brake"]["estimates"] == {"1.0": 0.0}
