"""The gate's paired bootstrap bound on known values."""
import math
import random

import pytest

from worker.gate import paired_bootstrap_lower_bound


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
