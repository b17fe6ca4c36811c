"""The gate's KL checks (trainer/evaluate.kl_to_references): one set of samples of the policy, scored
under each reference; a reference named twice (served = anchor, the first round) gives the same
number as measured alone, and the policy's KL to itself is zero."""
import shutil

import pytest
import torch

from trainer.evaluate import kl_between, kl_to_references
from trainer.modeling import load_causal_lm

PROMPTS = [[{"role": "user", "content": text}] for text in ("Tell me about rivers.", "What is a cloud?", "Name a colour.")]


@pytest.fixture(scope="module")
def nudged_dir(tiny_model_dir, tmp_path_factory):
    """The tiny model with every weight moved a little: a policy some KL away from it."""
    out = tmp_path_factory.mktemp("nudged") / "model"
    shutil.copytree(tiny_model_dir, out)
    model = load_causal_lm(out)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    model.save_pretrained(out)
    return out


def test_same_reference_twice_is_scored_once_and_agrees_with_kl_between(nudged_dir, tiny_model_dir, tmp_path):
    alias = tmp_path / "alias"
    alias.symlink_to(tiny_model_dir, target_is_directory=True)
    kls = kl_to_references(nudged_dir, {"served": tiny_model_dir, "anchor": alias, "self": nudged_dir},
                           PROMPTS, max_new_tokens=8, n_samples=2, seed=3)
    alone = kl_between(nudged_dir, tiny_model_dir, PROMPTS, max_new_tokens=8, n_samples=2, seed=3)
    assert kls["served"] == kls["anchor"]
    assert kls["served"] == pytest.approx(alone, abs=1e-4)
    assert kls["served"] > 0.01                 # the nudge is visible
    assert kls["self"] == pytest.approx(0.0, abs=1e-5)
