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


# RAFT's outcome on this random model follows its sampling RNG stream: one seed moved the digits by
# +0.44 or +2.24 depending on the seed alone (session 24, learning_runs.py's comment has the values),
# so it is judged on the mean over five seeds (~30 s in all); every seed still keeps every invariant
# three_runs checks (KL budget included).
SEEDS = {"raft": (0, 1, 2, 3, 4)}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_three_runs_improve_preference_within_kl_budget(name, tiny_model_dir, trained_rm, tmp_path):
    torch.set_num_threads(2)
    finals, firsts = [], []
    for seed in SEEDS.get(name, (None,)):
        start_digits, trace = three_runs(name, tiny_model_dir, trained_rm[0], tmp_path, seed=seed)
        print(f"\n{name} seed {seed}: digits/answer anchor {start_digits:.2f} -> {trace}")
        finals.append(trace[-1]["digits"])
        firsts.append(trace[0]["digits"])
    final, first = sum(finals) / len(finals), sum(firsts) / len(firsts)
    assert final > start_digits + 1.0, (finals, start_digits)      # the true preference moved
    assert final >= first - 0.25, (finals, firsts)                # and held across rounds
