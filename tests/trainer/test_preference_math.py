"""trainer.preference_math (RLOO, DPO, KTO) and the new ppo_math pieces on hand-computed values."""
import math

import pytest
import torch

from trainer import ppo_math as pm
from trainer import preference_math as prm

approx = lambda v, rel=1e-5: pytest.approx(v, rel=rel, abs=1e-6)  # noqa: E731
sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731


def test_rloo_leave_one_out():
    # k=2: A = r_i - r_other.  k=3 row [1, 2, 6]: A_1 = 1 - (2+6)/2 = -3, A_2 = 2 - 3.5 = -1.5, A_3 = 6 - 1.5 = 4.5
    assert prm.rloo_advantages(torch.tensor([[1.0, 3.0]])).tolist() == [[-2.0, 2.0]]
    assert prm.rloo_advantages(torch.tensor([[1.0, 2.0, 6.0]])).tolist()[0] == approx([-3.0, -1.5, 4.5])
    with pytest.raises(ValueError):
        prm.rloo_advantages(torch.tensor([[1.0]]))


def test_kl_penalised_scores_and_reinforce():
    # 2 - 0.1*(−3 − (−5)) = 1.8
    assert prm.kl_penalised_scores(torch.tensor([2.0]), torch.tensor([-3.0]), torch.tensor([-5.0]), 0.1
                                   ).item() == approx(1.8)
    logp = torch.tensor([-4.0, -2.0], requires_grad=True)
    loss = prm.reinforce_loss(logp, torch.tensor([1.0, -1.0]), torch.tensor([4.0, 2.0]))
    # -(1*-4/4 + -1*-2/2)/2 = -(-1 + 1)/2 = 0;  d/dlogp = -(A/n)/2 = [-0.125, 0.25]
    assert loss.item() == approx(0.0)
    loss.backward()
    assert logp.grad.tolist() == approx([-0.125, 0.25])


def test_dpo_loss_known_value():
    pc, pr = torch.tensor([-10.0]), torch.tensor([-12.0])
    rc, rr = torch.tensor([-11.0]), torch.tensor([-11.0])
    # chosen reward 1, rejected reward -1 -> margin 2, h = 0.1*2 = 0.2, loss = -log σ(0.2)
    loss, stats = prm.dpo_loss(pc, pr, rc, rr, beta=0.1)
    assert loss.item() == approx(-math.log(sig(0.2)))
    assert stats["reward_accuracy"] == 1.0 and stats["reward_margin"] == approx(2.0)
    # label smoothing 0.25: -0.75 log σ(0.2) - 0.25 log σ(-0.2)
    smooth, _ = prm.dpo_loss(pc, pr, rc, rr, beta=0.1, label_smoothing=0.25)
    assert smooth.item() == approx(-0.75 * math.log(sig(0.2)) - 0.25 * math.log(sig(-0.2)))
    # weights: pair 2 has h = -0.2 and weight 3 -> (1*l(0.2) + 3*l(-0.2)) / 4
    loss_w, _ = prm.dpo_loss(torch.tensor([-10.0, -12.0]), torch.tensor([-12.0, -10.0]),
                             torch.tensor([-11.0, -11.0]), torch.tensor([-11.0, -11.0]), 0.1,
                             weight=torch.tensor([1.0, 3.0]))
    assert loss_w.item() == approx((-math.log(sig(0.2)) - 3 * math.log(sig(-0.2))) / 4)


def test_dpo_gradient_raises_chosen_lowers_rejected():
    pc = torch.tensor([-5.0], requires_grad=True)
    pr = torch.tensor([-5.0], requires_grad=True)
    loss, _ = prm.dpo_loss(pc, pr, torch.tensor([-5.0]), torch.tensor([-5.0]), beta=0.5)
    loss.backward()
    # h = 0: dL/dh = -σ(-0) = -0.5 -> dL/dpc = -0.25, dL/dpr = +0.25
    assert pc.grad.item() == approx(-0.25) and pr.grad.item() == approx(0.25)


def test_implicit_preference_accuracy():
    acc = prm.implicit_preference_accuracy(torch.tensor([-1.0, -3.0, -2.0]), torch.tensor([-2.0, -1.0, -2.0]),
                                           torch.zeros(3), torch.zeros(3))
    assert acc == approx(1.5 / 3)  # margins 1, -2, 0: one agrees, one disagrees, a tie counts half
    assert math.isnan(prm.implicit_preference_accuracy(torch.zeros(0), torch.zeros(0), torch.zeros(0), torch.zeros(0)))


def test_kto_class_weights():
    assert prm.kto_class_weights(10, 10) == (1.0, 1.0)
    assert prm.kto_class_weights(20, 10) == approx((0.5, 1.0))       # λ_D·20 = 1·10
    assert prm.kto_class_weights(10, 40) == approx((1.0, 0.25))      # 1·10 = λ_U·40
    assert prm.kto_class_weights(10, 10, ratio=4 / 3) == approx((1.0, 0.75))
    assert prm.kto_class_weights(0, 5) == (1.0, 1.0)


def test_kto_loss_known_value():
    logp, ref = torch.tensor([-4.0, -6.0]), torch.tensor([-5.0, -5.0])   # r = +1 (up), -1 (down)
    loss, stats = prm.kto_loss(logp, ref, torch.tensor([True, False]), kl_ref=0.5, beta=0.2,
                               lambda_d=1.0, lambda_u=0.5)
    # up: 1 - σ(0.2*(1-0.5)) = 1 - σ(0.1); down: 0.5*(1 - σ(0.2*(0.5+1))) = 0.5*(1 - σ(0.3))
    assert loss.item() == approx(((1 - sig(0.1)) + 0.5 * (1 - sig(0.3))) / 2)
    assert stats["reward_desirable"] == approx(1.0) and stats["reward_undesirable"] == approx(-1.0)
    # a negative KL estimate is clamped to 0
    loss0, stats0 = prm.kto_loss(logp, ref, torch.tensor([True, False]), kl_ref=-3.0, beta=0.2,
                                 lambda_d=1.0, lambda_u=1.0)
    assert stats0["kl_ref_point"] == 0.0
    assert loss0.item() == approx(((1 - sig(0.2)) + (1 - sig(0.2))) / 2)


def test_kto_reference_point():
    z = prm.kto_reference_point(torch.tensor([-1.0, -3.0]), torch.tensor([-2.0, -2.0]))
    assert z.item() == approx(0.0)      # mean(1, -1) = 0
    assert prm.kto_reference_point(torch.tensor([-1.0]), torch.tensor([-3.0])).item() == approx(2.0)
    assert prm.kto_reference_point(torch.tensor([-3.0]), torch.tensor([-1.0])).item() == 0.0


def test_explained_variance():
    returns = torch.tensor([[1.0, 2.0, 3.0, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    # perfect values -> 1; constant mean value -> 0; values off by [1, -1, 0]: 1 - (2/3)/(2/3) = 0
    assert pm.explained_variance(returns.clone(), returns, mask) == approx(1.0)
    assert pm.explained_variance(torch.full_like(returns, 2.0), returns, mask) == approx(0.0)
    assert pm.explained_variance(torch.tensor([[0.0, 3.0, 3.0, 0.0]]), returns, mask) == approx(0.0)
    assert math.isnan(pm.explained_variance(torch.ones(1, 2), torch.ones(1, 2), torch.ones(1, 2)))


def test_adaptive_kl_state_round_trip_and_resume():
    ctl = pm.AdaptiveKLController(0.1, target=4.0, horizon=64)
    ctl.update(8.0, 32)    # error clipped to +0.2: β = 0.1 * (1 + 0.2*32/64) = 0.11
    assert ctl.value == approx(0.11)
    state = ctl.state()
    assert state == {"kind": "adaptive", "value": approx(0.11), "target": 4.0, "horizon": 64}
    resumed = pm.kl_controller_from_state(state)
    resumed.update(2.0, 64)  # error -0.5 -> clipped -0.2: β = 0.11 * 0.8 = 0.088
    assert resumed.value == approx(0.088)
    fixed = pm.kl_controller_from_state({"kind": "fixed", "value": 0.3})
    assert fixed.update(100.0, 10) == 0.3 and fixed.state() == {"kind": "fixed", "value": 0.3}
    with pytest.raises(ValueError):
        pm.kl_controller_from_state({"kind": "pid", "value": 1.0})


def test_rpo_nll_known_values():
    # per-token NLL: 4/2 = 2 and 9/3 = 3
    chosen, tokens = torch.tensor([-4.0, -9.0]), torch.tensor([2.0, 3.0])
    assert prm.rpo_nll(chosen, tokens).item() == pytest.approx(2.5)
    assert prm.rpo_nll(chosen, tokens, torch.tensor([1.0, 3.0])).item() == pytest.approx((2 + 9) / 4)
    # an empty answer (EOS-less, 0 tokens) does not divide by zero
    assert prm.rpo_nll(torch.tensor([0.0]), torch.tensor([0.0])).item() == 0.0


def test_rpo_nll_gradient_raises_the_chosen_log_prob():
    chosen = torch.tensor([-6.0], requires_grad=True)
    prm.rpo_nll(chosen, torch.tensor([3.0])).backward()
    assert chosen.grad.item() == pytest.approx(-1 / 3)   # descent raises log π(y_c)


def test_best_of_group_known_values():
    scores = torch.tensor([[0.1, 0.9, 0.5, 0.2],     # best 1: 0.9 - mean(0.1, 0.5, 0.2) = 0.633 -> kept
                           [0.4, 0.5, 0.45, 0.35],   # best 1: 0.5 - 0.4 = 0.1 <= 0.25 -> RM unsure, skipped
                           [3.0, 1.0, 0.0, -1.0],    # best 0 ineligible -> best eligible 1: 1 - mean(3, 0, -1) = 0.33
                           [2.0, 0.0, 0.0, 0.0],     # only 0 eligible: 2 - 0 = 2 -> kept (siblings still compare)
                           [5.0, 0.0, 0.0, 0.0]])    # nothing eligible -> skipped
    eligible = torch.tensor([[True] * 4, [True] * 4, [False, True, True, True], [True, False, False, False],
                             [False] * 4])
    assert prm.best_of_group(scores, eligible, min_advantage=0.25) == [(0, 1), (2, 1), (3, 0)]
    # with no margin asked, the unsure prompt's best is kept too
    assert prm.best_of_group(scores, eligible, min_advantage=0.0) == [(0, 1), (1, 1), (2, 1), (3, 0)]
    # a prompt whose eligible best is below its siblings' mean is skipped: 1 - mean(3, 3, 3) < 0
    assert prm.best_of_group(torch.tensor([[3.0, 1.0, 3.0, 3.0]]), torch.tensor([[False, True, False, False]])) == []
    # an all-equal group has no advantage to keep
    assert prm.best_of_group(torch.zeros(1, 3), torch.ones(1, 3, dtype=torch.bool), 0.0) == []


def test_best_of_group_with_derived_candidates():
    # columns 0-2: samples; 3-5: candidates derived from samples 0-2 (source 0, 1, 2)
    scores = torch.tensor([[0.0, 1.0, 2.0, 3.0, -9.0, -9.0],
                           [1.0, 1.0, 1.0, 1.2, -9.0, -9.0]])
    eligible = torch.tensor([[False, True, False, True, False, False],
                             [True, True, True, True, False, False]])
    # row 0: best eligible is column 3 (from sample 0): 3 - mean(samples 1, 2) = 3 - 1.5 = 1.5 -> kept
    # row 1: column 3 (from sample 0): 1.2 - mean(1, 1) = 0.2 <= 0.25 -> skipped; derived columns'
    #        -9 never enter the baseline (they are not what the policy says)
    assert prm.best_of_group(scores, eligible, 0.25, source=[0, 1, 2, 0, 1, 2]) == [(0, 3)]
    assert prm.best_of_group(scores, eligible, 0.1, source=[0, 1, 2, 0, 1, 2]) == [(0, 3), (1, 3)]


def test_repeated_ngram_mask_marks_repeats_not_first_occurrences():
    #        0  1  2  3  4  5  6
    ids = [5, 6, 7, 5, 6, 7, 8]
    # bigrams: (5,6)@0 (6,7)@1 (7,5)@2 (5,6)@3 repeat -> 3,4 (6,7)@4 repeat -> 4,5 (7,8)@5
    assert prm.repeated_ngram_mask(ids, 2) == [False, False, False, True, True, True, False]
    assert prm.repeated_ngram_mask(ids, 3) == [False, False, False, True, True, True, False]
    assert prm.repeated_ngram_mask(ids, 4) == [False] * 7
    assert prm.repeated_ngram_mask([1, 1, 1], 1) == [False, True, True]
    assert prm.repeated_ngram_mask([], 3) == []


def test_unlikelihood_loss_known_values():
    # p = 0.5 on the marked token -> -log(0.5) = 0.693; p = 0.9 -> -log(0.1) = 2.303; unmarked ignored
    logp = torch.log(torch.tensor([[0.5, 0.9, 0.99]]))
    loss = prm.unlikelihood_loss(logp, torch.tensor([[1.0, 1.0, 0.0]]))
    assert abs(loss.item() - (0.693147 + 2.302585) / 2) < 1e-4
    # nothing marked: zero, not NaN
    assert prm.unlikelihood_loss(logp, torch.zeros(1, 3)).item() == 0.0
    # the gradient lowers the marked token's log-prob (d loss / d logp > 0 => descent lowers it)
    x = torch.log(torch.tensor([[0.5]])).requires_grad_()
    prm.unlikelihood_loss(x, torch.ones(1, 1)).backward()
    assert x.grad.item() > 0
