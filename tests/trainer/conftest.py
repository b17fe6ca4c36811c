"""A reward model trained once on the synthetic preference (more digits = better), shared by the
learning tests of every RM-based algorithm."""
import pytest
import torch

from tests.trainer.learning_runs import train_synthetic_rm


@pytest.fixture(scope="session")
def trained_rm(tiny_model_dir, tmp_path_factory):
    torch.set_num_threads(2)
    out = tmp_path_factory.mktemp("rm") / "rm"
    calls = []
    metrics, heldout = train_synthetic_rm(tiny_model_dir, out, progress=lambda *a: calls.append(a))
    return out, metrics, heldout, calls
