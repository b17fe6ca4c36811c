"""Every policy algorithm, three consecutive runs on the tiny model with the synthetic preference
(more digits = better): each run starts from the previous run's policy, as the live loop does,
while the reference stays the anchor (the tiny model). The true preference must improve on
held-out prompts and KL to the anchor must stay within the budget after every run — the drift
that a per-round reference let compound (KL 2.4 -> 6.1 -> 8.4 in the old demo).

Each algorithm is one test of a few seconds on 2 CPU cores; all are seeded; a sign error, a
broken baseline or a reference that moves with the parent makes them fail. The runs themselves
live in learning_runs.py (shared with the GPU check, bench/gpu_learning_check.py).
"""
import pytest
import torch

from tests.trainer.learning_runs import CONFIGS, three_runs


@pytest.mark.parametrize("name", list(CONFIGS))
def test_three_runs_improve_preference_within_kl_budget(name, tiny_model_dir, trained_rm, tmp_path):
    torch.set_num_threads(2)
    start_digits, trace = three_runs(name, tiny_model_dir, trained_rm[0], tmp_path)
    print(f"\n{name}: digits/answer anchor {start_digits:.2f} -> {trace}")
    assert trace[-1]["digits"] > start_digits + 1.0, trace          # the true preference moved
    assert trace[-1]["digits"] >= trace[0]["digits"] - 0.25, trace   # and held across rounds
