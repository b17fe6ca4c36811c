"""trainer/device.py's training precision: "fp32" never autocasts, "bf16" always does, "auto" does
where the hardware multiplies bf16 natively; a bad name is refused (by the trainer and by Settings);
and a policy algorithm still learns, within the KL budget, with its forward passes in bf16 on CPU."""
import pydantic
import pytest
import torch

from common.settings import Settings
from tests.trainer.learning_runs import three_runs
from tests.trainer.test_algorithms_learning import SEEDS
from trainer import device as dev


@pytest.fixture
def precision():
    """Set the process-wide precision for one test; the suite's own (fp32, conftest) comes back after."""
    before = dev.train_precision()
    yield dev.set_train_precision
    dev.set_train_precision(before)


def _linear_dtype(cpu: torch.device) -> torch.dtype:
    with dev.autocast(cpu):
        return torch.nn.Linear(4, 4)(torch.ones(2, 4)).dtype


def test_each_precision_autocasts_where_it_says(precision):
    cpu = torch.device("cpu")
    precision("fp32")
    assert not dev.uses_bf16(cpu) and _linear_dtype(cpu) == torch.float32 and dev.describe(cpu) == "cpu/fp32"
    precision("bf16")
    assert dev.uses_bf16(cpu) and _linear_dtype(cpu) == torch.bfloat16
    assert dev.describe(cpu) == ("cpu/bf16-autocast (AMX)" if dev.cpu_has_native_bf16() else "cpu/bf16-autocast (emulated)")
    precision("auto")
    assert dev.uses_bf16(cpu) == dev.cpu_has_native_bf16()
    assert _linear_dtype(cpu) == (torch.bfloat16 if dev.cpu_has_native_bf16() else torch.float32)


def test_unknown_precision_is_refused(precision, monkeypatch):
    with pytest.raises(ValueError, match="fp16"):
        precision("fp16")
    monkeypatch.setenv("RLHF_TRAIN_PRECISION", "fp16")
    with pytest.raises(pydantic.ValidationError, match="train_precision"):
        Settings()


@pytest.mark.parametrize("name", ["dpo", "raft"])
def test_policy_learns_within_kl_budget_with_bf16_forward_passes(name, precision, tiny_model_dir, trained_rm,
                                                                  tmp_path):
    """test_algorithms_learning's three-run check (digits up by > 1 on average over its seeds; KL <=
    budget after every run, which three_runs asserts) with training under CPU bf16 autocast: DPO, and
    RAFT (the demo's algorithm; its sampling runs under the autocast too). The evaluation (digits, KL)
    runs in fp32, as the gate's does. Measured (session 32, RAFT seeds 0-4, digits after run 3, anchor
    0.67): fp32 1.11 / 2.91 / 1.62 / 1.53 / 2.03, mean 1.84, KL 8.3-11.5; bf16 1.44 / 2.66 / 2.34 /
    2.48 / 2.20, mean 2.22, KL 9.3-11.2."""
    torch.set_num_threads(2)
    precision("bf16")
    finals, firsts = [], []
    for seed in SEEDS.get(name, (None,)):
        start, trace = three_runs(name, tiny_model_dir, trained_rm[0], tmp_path / f"seed{seed}", seed=seed)
        print(f"\n{name} seed {seed} under bf16: digits/answer anchor {start:.2f} -> {trace}")
        assert all(row["device"] == dev.describe(torch.device("cpu")) != "cpu/fp32" for row in trace)
        finals.append(trace[-1]["digits"])
        firsts.append(trace[0]["digits"])
    final, first = sum(finals) / len(finals), sum(firsts) / len(firsts)
    assert final > start + 1.0 and final >= first - 0.25, (finals, firsts, start)
