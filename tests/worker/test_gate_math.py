"""The gate's paired bootstrap bound on known values."""
import math
import random

import pytest

from trainer.data import PromptItem
from worker.gate import (agreement_drop_upper_bound, gate_prompt_set, load_gate_prompts, rm_gate_accuracy,
                         paired_bootstrap_lower_bound)


def test_constant_diffs_bound_is_the_constant():
    assert paired_bootstrap_lower_bound([0.3] * 10) == pytest.approx(0.3)


def test_two_point_distribution():
    # n=2, diffs {1, -1}: resampled means are -1, 0, 1 with probability 1/4, 1/2, 1/4, so the
    # 5% quantile is -1: a mean of 0 on two prompts proves nothing
    assert paired_bootstrap_lower_bound([1.0, -1.0], n_boot=4000) == -1.0


def test_large_sample_matches_the_normal_approximation():
    rng = random.Random(1)
    diffs = [rng.gauss(0.5, 1.0) for _ in range(400)]
    mean = sum(diffs) / len(diffs)
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / len(diffs))
    # one-sided 95%: mean - 1.645 * sd / sqrt(n)
    assert paired_bootstrap_lower_bound(diffs) == pytest.approx(mean - 1.645 * sd / 20, abs=0.02)


def test_positive_mean_can_still_fail_the_bound():
    diffs = [2.0, -1.0, -1.0, 0.5]            # mean +0.125, but too noisy to trust
    assert sum(diffs) / 4 > 0 and paired_bootstrap_lower_bound(diffs) < 0
    assert math.isnan(paired_bootstrap_lower_bound([]))


def test_agreement_drop_bound_refuses_a_real_drop_not_noise():
    served = [1.0, 0.0] * 11                       # 22 pairs, served agrees on 11 (0.50)
    # 0.41 vs 0.50 (session 16's refusal): the candidate loses 5 of the served version's pairs
    # and gains 3 others; a 95% bound cannot call that a drop
    noisy = list(served)
    for i in (0, 2, 4, 6, 8):
        noisy[i] = 0.0
    for i in (1, 3, 5):
        noisy[i] = 1.0
    assert sum(noisy) == 9 and agreement_drop_upper_bound(noisy, served) > 0
    # losing 2 pairs and gaining none is not proof either (bound 0, and 0 is not below -0)
    assert agreement_drop_upper_bound([0.0, 0.0] + served[2:], served) == 0.0
    # it gives up every pair the served version agreed with, gaining none: a drop beyond noise
    worse = [0.0] * 22
    assert agreement_drop_upper_bound(worse, served) < -0.3
    assert agreement_drop_upper_bound(served, served) == 0.0   # identical agreement: no drop
    # round 1 (served = anchor, 0.5 on every pair): a coin-like candidate is not a drop
    assert agreement_drop_upper_bound([1.0, 0.0] * 11, [0.5] * 22) > 0


def test_gate_prompt_set_file_and_order(tmp_path):
    f = tmp_path / "gate.json"
    f.write_text('["What is rain?", [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Why?"}]]')
    extra = load_gate_prompts(f)
    assert [p.messages[-1]["content"] for p in extra] == ["What is rain?", "Why?"]
    live = [PromptItem([{"role": "user", "content": "What is rain?"}]), PromptItem([{"role": "user", "content": "Hi"}])]
    # live held-out prompts first, the file's after, a repeated prompt once, capped
    assert [p.messages[-1]["content"] for p in gate_prompt_set(live, extra, 10)] == ["What is rain?", "Hi", "Why?"]
    assert len(gate_prompt_set(live, extra, 2)) == 2
    for bad in ("[]", "{}", '["ok", 3]', '[""]'):
        f.write_text(bad)
        with pytest.raises(ValueError):
            load_gate_prompts(f)


def test_rm_accuracy_for_the_gate_prefers_the_pooled_estimate():
    # round 1 of session 22: 7 of 13 held-out votes (0.54, "at chance") but 0.73 over 55 pairs scored unseen
    assert rm_gate_accuracy({"heldout_accuracy": 7 / 13, "pooled_heldout_accuracy": 40 / 55}) == pytest.approx(40 / 55)
    assert rm_gate_accuracy({"heldout_accuracy": 0.6, "pooled_heldout_accuracy": None}) == 0.6  # transformer RM
    assert rm_gate_accuracy({}) is None
