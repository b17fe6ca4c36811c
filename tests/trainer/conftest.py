"""A reward model trained once on the synthetic preference (more digits = better), shared by the
learning tests of every RM-based algorithm."""
import pytest
import torch

from tests.trainer.synthetic import AnswerSampler
from trainer.config import RMConfig
from trainer.modeling import load_tokenizer
from trainer.reward_model import train_reward_model


@pytest.fixture(scope="session")
def trained_rm(tiny_model_dir, tmp_path_factory):
    torch.set_num_threads(2)
    sampler = AnswerSampler(load_tokenizer(tiny_model_dir), seed=0)
    train, heldout = sampler.pairs(400, prompt_seed=1), sampler.pairs(100, prompt_seed=2)
    rated = sampler.rated(60, prompt_seed=3)
    out = tmp_path_factory.mktemp("rm") / "rm"
    calls = []
    metrics = train_reward_model(
        train, rated, tiny_model_dir, out,
        RMConfig(lr=5e-4, epochs=4, batch_size=16, show_progress_bar=False, seed=0),
        eval_pairs=heldout, progress=lambda *a: calls.append(a))
    return out, metrics, heldout, calls
