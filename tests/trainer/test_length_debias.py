"""ODIN length debiasing of the reward model: the pure maths against hand-computed values, then an RM
trained where length and the true preference disagree.

Fixture: the truth is synthetic.py's "more digits = better", but in the training pairs the chosen
answer is usually *shorter* (chosen has 4-14 filler words, rejected 10-20; chosen is shorter in
tokens in ~77% of pairs). On held-out pairs both sides draw 4-20 words, so length says nothing about
the preference there. Measured on the tiny model (seed 0, 400 pairs, 4 epochs): without debiasing
held-out accuracy 0.81 and length_correlation -0.56 (seeds 0-2: 0.79-0.81, -0.56..-0.60); with it
0.91 and +0.02 (seeds 0-4: 0.85-0.93, -0.21..+0.05). On an H200 (bf16 autocast, seeds 0-2): 0.79-0.80
and -0.56..-0.61 without, 0.82-0.92 and -0.01..+0.15 with.
"""
import json
import math
import random

import pytest
import torch

from tests.trainer.synthetic import AnswerSampler, prompts
from trainer import ppo_math as pm
from trainer.config import RMConfig
from trainer.data import PreferencePair
from trainer.modeling import load_tokenizer
from trainer.reward_model import STATS_FILE, RewardModel, answer_lengths, train_reward_model

approx = lambda v, rel=1e-5: pytest.approx(v, rel=rel, abs=1e-6)  # noqa: E731


# ---------------------------------------------------------------- pure maths
def test_pearson_correlation_by_hand():
    x = torch.tensor([1.0, 2.0, 3.0, 4.0])
    y = torch.tensor([1.0, 3.0, 2.0, 4.0])
    # centred: x -1.5 -.5 .5 1.5, y -1.5 .5 -.5 1.5; Sxy = 2.25-.25-.25+2.25 = 4, Sxx = Syy = 5 -> 0.8
    assert pm.pearson_correlation(x, y).item() == approx(0.8)
    assert pm.pearson_correlation(x, x).item() == approx(1.0)
    assert pm.pearson_correlation(x, -x).item() == approx(-1.0)
    assert pm.pearson_correlation(10 * x + 5, y).item() == approx(0.8)   # scale/shift invariant


def test_pearson_correlation_gradient_by_hand():
    x = torch.tensor([1.0, 2.0, 3.0, 4.0], requires_grad=True)
    y = torch.tensor([1.0, 3.0, 2.0, 4.0])
    pm.pearson_correlation(x, y).backward()
    # dρ/dx_i = yc_i/sqrt(Sxx Syy) - ρ xc_i/Sxx = (yc_i - 0.8 xc_i)/5
    # = (-1.5+1.2)/5, (.5+.4)/5, (-.5-.4)/5, (1.5-1.2)/5
    assert x.grad.tolist() == approx([-0.06, 0.18, -0.18, 0.06])


def test_pearson_correlation_is_zero_and_finite_when_constant():
    y = torch.tensor([1.0, 2.0, 3.0])
    for x in (torch.tensor([0.1, 0.1, 0.1]), torch.zeros(3)):
        x.requires_grad_(True)
        r = pm.pearson_correlation(x, y)
        r.backward()
        assert r.item() == 0.0 and x.grad.tolist() == [0.0, 0.0, 0.0]   # no NaN leaking into a step
    assert pm.pearson_correlation(y, torch.full((3,), 7.0)).item() == 0.0  # every answer equally long
    assert pm.pearson_correlation(torch.tensor([1.0]), torch.tensor([2.0])).item() == 0.0
    assert pm.pearson_correlation(torch.zeros(0), torch.zeros(0)).item() == 0.0


def test_length_decorrelation_loss_by_hand():
    lengths = torch.tensor([1.0, 3.0, 2.0, 4.0])
    # ρ(r_Q, L) = 0.8 (as above), ρ(r_L, L) = 1 -> 0.8 - 1
    loss = pm.length_decorrelation_loss(torch.tensor([1.0, 2.0, 3.0, 4.0]), lengths.clone(), lengths)
    assert loss.item() == approx(-0.2)
    # a quality head that learnt "shorter is better" is penalised too: |-0.8| = 0.8; anti-length r_L: -(-1)
    loss = pm.length_decorrelation_loss(torch.tensor([4.0, 3.0, 2.0, 1.0]), -lengths, lengths)
    assert loss.item() == approx(1.8)
    assert pm.length_decorrelation_loss(lengths, lengths, torch.full((4,), 5.0)).item() == 0.0


def test_head_orthogonality_loss_by_hand():
    w_q = torch.tensor([[1.0, 2.0, 3.0]], requires_grad=True)
    w_l = torch.tensor([[4.0, -5.0, 6.0]])
    loss = pm.head_orthogonality_loss(w_q, w_l)             # |4 - 10 + 18| = 12
    loss.backward()
    assert loss.item() == approx(12.0)
    assert w_q.grad.tolist() == [[4.0, -5.0, 6.0]]           # sign(+12)·w_L
    assert pm.head_orthogonality_loss(w_q, -w_l).item() == approx(12.0)
    assert pm.head_orthogonality_loss(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 3.0])).item() == 0.0


# ---------------------------------------------------------------- an RM on length-confounded pairs
def confounded_pairs(sampler: AnswerSampler, n: int, prompt_seed: int, chosen_shorter: bool) -> list[PreferencePair]:
    """More digits is better (as in synthetic.py); chosen_shorter -> the chosen side usually has fewer
    filler words, else both sides draw their length independently."""
    rng = random.Random(prompt_seed)
    out = []
    for item in prompts(n, prompt_seed):
        low = rng.randint(0, 2)
        high = low + rng.randint(1, 3)
        if chosen_shorter:
            words_c, words_r = rng.randint(4, 14), rng.randint(10, 20)
        else:
            words_c, words_r = rng.randint(4, 20), rng.randint(4, 20)
        out.append(PreferencePair(item.messages, sampler.answer(high, words_c), sampler.answer(low, words_r)))
    return out


@pytest.fixture(scope="module")
def confounded_rms(tiny_model_dir, tmp_path_factory):
    """(vanilla metrics, debiased metrics, debiased RM dir, vanilla RM dir, held-out pairs)."""
    sampler = AnswerSampler(load_tokenizer(tiny_model_dir), seed=0)
    train = confounded_pairs(sampler, 400, prompt_seed=1, chosen_shorter=True)
    heldout = confounded_pairs(sampler, 100, prompt_seed=2, chosen_shorter=False)
    root = tmp_path_factory.mktemp("length_rm")
    runs = {}
    # one thread: CPU reductions (so the measured numbers) differ with the thread count, and other
    # fixtures of the session set their own; restored afterwards
    threads = torch.get_num_threads()
    try:
        for debias in (False, True):
            config = RMConfig(lr=5e-4, epochs=4, batch_size=16, show_progress_bar=False, seed=0, device="cpu",
                              num_threads=1, length_debias=debias)
            out = root / f"debias_{debias}"
            runs[debias] = (train_reward_model(train, None, tiny_model_dir, out, config, eval_pairs=heldout), out)
    finally:
        torch.set_num_threads(threads)
    return runs[False][0], runs[True][0], runs[True][1], runs[False][1], heldout


def test_fixture_makes_a_plain_rm_a_length_meter(confounded_rms):
    vanilla, _, _, _, _ = confounded_rms
    # the test below only means something if the undebiased RM really reads length (measured -0.56)
    assert vanilla["length_correlation_on"] == "heldout"
    assert vanilla["length_correlation"] <= -0.4, vanilla


def test_debiased_rm_learns_the_preference_not_the_length(confounded_rms):
    vanilla, debiased, _, _, _ = confounded_rms
    # measured: 0.91 vs 0.81 accuracy, |ρ| 0.02 vs 0.56
    assert debiased["heldout_accuracy"] >= 0.85, debiased
    assert debiased["heldout_accuracy"] >= vanilla["heldout_accuracy"] + 0.05, (vanilla, debiased)
    assert abs(debiased["length_correlation"]) <= 0.25, debiased
    assert abs(debiased["length_correlation"]) <= abs(vanilla["length_correlation"]) - 0.25, (vanilla, debiased)


def test_saved_rm_is_the_quality_head_alone(confounded_rms):
    _, debiased, out, vanilla_out, heldout = confounded_rms
    from safetensors import safe_open

    def tensor_names(folder):
        with safe_open(str(folder / "model.safetensors"), "pt") as f:
            return set(f.keys())
    assert tensor_names(out) == tensor_names(vanilla_out)      # no length head in the HF folder
    stats = json.loads((out / STATS_FILE).read_text())
    assert stats["metrics"]["length_correlation"] == debiased["length_correlation"]
    assert stats["metrics"]["length_correlation_on"] == "heldout" and stats["config"]["length_debias"] is True
    # the reloaded folder (score head only) reproduces accuracy and length correlation
    rm = RewardModel.load(out)
    rc = rm.score([p.messages for p in heldout], [p.chosen for p in heldout])
    rr = rm.score([p.messages for p in heldout], [p.rejected for p in heldout])
    assert sum(c > r for c, r in zip(rc, rr)) / len(heldout) == pytest.approx(debiased["heldout_accuracy"])
    lengths = answer_lengths(rm.tokenizer, [p.chosen for p in heldout] + [p.rejected for p in heldout])
    corr = pm.pearson_correlation(torch.tensor(rc + rr), lengths).item()
    assert corr == pytest.approx(debiased["length_correlation"], abs=1e-4)


def test_length_correlation_falls_back_to_training_answers(tiny_model_dir, tmp_path):
    sampler = AnswerSampler(load_tokenizer(tiny_model_dir), seed=3)
    pairs = sampler.pairs(6, prompt_seed=4)                 # < min_heldout_pairs: nothing held out
    config = RMConfig(lr=1e-4, epochs=1, batch_size=4, show_progress_bar=False, seed=0, device="cpu")
    metrics = train_reward_model(pairs, sampler.rated(4, prompt_seed=5), tiny_model_dir, tmp_path / "rm", config)
    assert metrics["heldout_accuracy"] is None and metrics["length_correlation_on"] == "train"
    assert math.isfinite(metrics["length_correlation"]) and -1.0 <= metrics["length_correlation"] <= 1.0
