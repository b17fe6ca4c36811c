"""Every pure function of trainer.ppo_math against values computed by hand (worked in comments)."""
import math

import pytest
import torch

from trainer import ppo_math as pm

approx = lambda v, rel=1e-5: pytest.approx(v, rel=rel, abs=1e-6)  # noqa: E731


def test_masked_mean_and_var():
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    assert pm.masked_mean(x, mask).item() == approx(7 / 3)          # (1+2+4)/3
    assert pm.masked_mean(x, mask, dim=1).tolist() == approx([1.5, 4.0])
    # deviations from 7/3: -4/3, -1/3, 5/3 -> squares 16/9, 1/9, 25/9 -> mean 14/9
    assert pm.masked_var(x, mask).item() == approx(14 / 9)


def test_masked_whiten_zeroes_padding():
    x = torch.tensor([[1.0, 3.0], [5.0, 100.0]])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    # values 1,3,5: mean 3, var 8/3 -> (x-3)/sqrt(8/3) = -1.224745, 0, 1.224745; pad -> 0
    out = pm.masked_whiten(x, mask)
    assert out.flatten().tolist() == approx([-1.2247449, 0.0, 1.2247449, 0.0])


def test_logprobs_and_entropy():
    logits = torch.tensor([[[0.0, math.log(3.0)], [0.0, 0.0]]])  # p = (1/4, 3/4) and (1/2, 1/2)
    tokens = torch.tensor([[1, 0]])
    assert pm.logprobs_from_logits(logits, tokens).tolist()[0] == approx([math.log(0.75), math.log(0.5)])
    # H(1/4, 3/4) = 0.25 ln4 + 0.75 ln(4/3) = 0.5623351; H(1/2, 1/2) = ln2
    assert pm.entropy_from_logits(logits).tolist()[0] == approx([0.5623351, math.log(2)])


def test_kl_estimators():
    logp = torch.tensor([math.log(0.5), math.log(0.3)])
    ref = torch.tensor([math.log(0.25), math.log(0.3)])
    assert pm.kl_per_token(logp, ref, "k1").tolist() == approx([math.log(2), 0.0])
    # k3 with ρ = 0.25/0.5 = 0.5: (0.5 - 1) - ln 0.5 = 0.1931472
    assert pm.kl_per_token(logp, ref, "k3").tolist() == approx([0.1931472, 0.0])
    with pytest.raises(ValueError):
        pm.kl_per_token(logp, ref, "k9")


def test_shape_scores_normalise_clip_eos_penalty():
    raw = torch.tensor([3.0, -1.0, 11.0])
    has_eos = torch.tensor([True, False, True])
    # (raw-1)/2 = 1, -1, 5 -> clip 4 -> 1, -1, 4 -> penalty 1 on the cut-off one -> 1, -2, 4
    out = pm.shape_scores(raw, has_eos, mean=1.0, std=2.0, normalise=True, clip=4.0, missing_eos_penalty=1.0)
    assert out.tolist() == approx([1.0, -2.0, 4.0])
    out = pm.shape_scores(raw, has_eos, mean=1.0, std=2.0, normalise=False, clip=None)
    assert out.tolist() == approx([3.0, -1.0, 11.0])


def test_penalised_rewards_puts_score_on_last_token():
    scores = torch.tensor([2.0, -1.0])
    kl = torch.tensor([[0.1, 0.2, 0.3], [0.4, 0.5, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    out = pm.penalised_rewards(scores, kl, mask, kl_coef=0.5)
    # row 0: -0.05, -0.1, -0.15+2 ; row 1: -0.2, -0.25-1, pad 0
    assert out.tolist()[0] == approx([-0.05, -0.1, 1.85])
    assert out.tolist()[1] == approx([-0.2, -1.25, 0.0])


def test_gae_by_hand():
    rewards = torch.tensor([[0.0, 0.0, 1.0], [1.0, 5.0, 7.0]])
    values = torch.tensor([[0.5, 0.6, 0.7], [0.2, 9.0, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    adv, ret = pm.compute_gae(rewards, values, mask, gamma=0.9, lam=0.5)
    # row 0, γλ = 0.45: δ2 = 1-0.7 = 0.3 -> A2 = 0.3
    #   δ1 = 0.9*0.7-0.6 = 0.03 -> A1 = 0.03+0.45*0.3 = 0.165
    #   δ0 = 0.9*0.6-0.5 = 0.04 -> A0 = 0.04+0.45*0.165 = 0.11425
    assert adv[0].tolist() == approx([0.11425, 0.165, 0.3])
    assert ret[0].tolist() == approx([0.61425, 0.765, 1.0])
    # row 1 ends after one token: padding rewards/values are ignored, A0 = 1 - 0.2 = 0.8
    assert adv[1].tolist() == approx([0.8, 0.0, 0.0])
    assert ret[1].tolist() == approx([1.0, 0.0, 0.0])


def test_clipped_surrogate_values_stats_and_gradient():
    ratios = torch.tensor([[1.5, 0.5, 0.5, 1.0, 7.0]])
    old = torch.zeros(1, 5)
    logp = torch.log(ratios).requires_grad_()
    adv = torch.tensor([[1.0, 1.0, -2.0, 3.0, 100.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 1.0, 0.0]])
    loss, stats = pm.clipped_surrogate_loss(logp, old, adv, mask, cliprange=0.2)
    # token: max(-Aρ, -A·clip ρ): a max(-1.5,-1.2)=-1.2 (clipped) b max(-0.5,-0.8)=-0.5
    #        c max(1.0,1.6)=1.6 (clipped) d -3 ; mean = -3.1/4
    assert loss.item() == approx(-0.775)
    assert stats["clip_frac"] == approx(0.5)
    # ½·mean(ln²1.5, ln²0.5, ln²0.5, 0) = ½·(0.1644019+2·0.4804530)/4
    assert stats["approx_kl"] == approx(0.1406635)
    loss.backward()
    # clipped tokens get no gradient; d/dlogp(-Aρ)/4 = -A·ρ/4: b -> -0.125, d -> -0.75
    assert logp.grad.tolist()[0] == approx([0.0, -0.125, 0.0, -0.75, 0.0])


def test_clipped_value_loss_by_hand():
    values = torch.tensor([[1.0, 0.1, -0.5, 50.0]])
    old = torch.zeros(1, 4)
    returns = torch.tensor([[1.0, 1.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    loss, stats = pm.clipped_value_loss(values, old, returns, mask, cliprange_value=0.2)
    # a: max(0, (0.2-1)²=0.64)  b: max(0.81, 0.81)  c: max(0.25, (-0.2)²=0.04) -> ½·1.7/3
    assert loss.item() == approx(0.2833333)
    assert stats["value_clip_frac"] == approx(1 / 3)


def test_adaptive_kl_controller_steps():
    ctl = pm.AdaptiveKLController(0.1, target=6.0, horizon=100)
    assert ctl.update(9.0, 10) == approx(0.102)        # error +0.5 -> clipped 0.2; ×(1+0.2·10/100)
    assert ctl.update(4.5, 50) == approx(0.0918)       # error -0.25 -> -0.2; ×(1-0.2·50/100)
    assert ctl.update(6.6, 100) == approx(0.10098)     # error +0.1; ×1.1
    assert ctl.update(float("nan"), 100) == approx(0.10098)  # a NaN batch must not poison β
    assert pm.FixedKLController(0.3).update(100.0, 8) == 0.3


def test_bradley_terry_and_pointwise_losses():
    rc, rr = torch.tensor([2.0, 0.0]), torch.tensor([0.0, 0.0])
    margin = torch.tensor([1.0, 0.0])
    # -log σ(1) = 0.3132617, -log σ(0) = 0.6931472
    assert pm.bradley_terry_loss(rc, rr, margin).item() == approx((0.3132617 + 0.6931472) / 2)
    assert pm.bradley_terry_loss(rc, rr, margin, torch.tensor([3.0, 1.0])).item() == approx(
        (3 * 0.3132617 + 0.6931472) / 4)
    r, signs = torch.tensor([2.0, 2.0]), torch.tensor([1.0, -1.0])
    # -log σ(2) = 0.1269280, -log σ(-2) = 2.1269280
    assert pm.pointwise_loss(r, signs).item() == approx(1.1269280)
    assert pm.pointwise_loss(r, signs, torch.tensor([1.0, 0.0])).item() == approx(0.1269280)
    assert pm.pairwise_accuracy(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([0.0, 2.0, 4.0])) == approx(1 / 3)
