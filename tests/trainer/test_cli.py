"""`rlhf train-rm` then `rlhf ppo` as subprocesses on tiny data: flags parse, folders and JSON appear."""
import json
import subprocess
import sys

from tests.trainer.synthetic import AnswerSampler, prompts
from trainer.data import write_jsonl
from trainer.evaluate import check_finite
from trainer.modeling import load_tokenizer


def _rlhf(*args: str) -> dict:
    proc = subprocess.run([sys.executable, "-m", "cli.main", *map(str, args)], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_train_rm_then_ppo_cli(tiny_model_dir, tmp_path):
    sampler = AnswerSampler(load_tokenizer(tiny_model_dir), seed=5)
    pairs = write_jsonl(tmp_path / "pairs.jsonl", sampler.pairs(12, prompt_seed=1))
    rated = write_jsonl(tmp_path / "rated.jsonl", sampler.rated(6, prompt_seed=2))
    prompt_file = write_jsonl(tmp_path / "prompts.jsonl", prompts(4, seed=3))

    rm = _rlhf("train-rm", "--data", pairs, "--rated", rated, "--base", tiny_model_dir,
               "--out", tmp_path / "rm", "--epochs", "1", "--threads", "2", "--no-progress",
               "--set", "heldout_fraction=0.25")
    assert rm["n_heldout_pairs"] == 3 and rm["n_pairs"] == 9 and rm["n_rated"] == 6
    assert 0.0 <= rm["heldout_accuracy"] <= 1.0
    assert (tmp_path / "rm" / "reward_stats.json").exists()

    rm2 = _rlhf("train-rm", "--rated", rated, "--base", tiny_model_dir, "--out", tmp_path / "rm2",
                "--warm-start", tmp_path / "rm", "--no-progress")
    assert rm2["heldout_accuracy"] is None and rm2["n_rated"] == 6

    out = _rlhf("ppo", "--policy", tiny_model_dir, "--reward-model", tmp_path / "rm",
                "--prompts", prompt_file, "--out", tmp_path / "policy", "--steps", "2",
                "--batch-size", "4", "--mini-batch-size", "2", "--max-new-tokens", "8",
                "--kl-estimator", "k3", "--threads", "2", "--no-progress", "--set", "cliprange=0.1")
    assert out["steps"] == 2 and out["samples"] == 8
    meta = json.loads((tmp_path / "policy" / "train_meta.json").read_text())
    assert meta["config"]["kl_estimator"] == "k3" and meta["config"]["cliprange"] == 0.1
    assert len((tmp_path / "policy" / "metrics.jsonl").read_text().splitlines()) == 2
    assert check_finite(tmp_path / "policy") == []


def test_train_policy_cli_dpo(tiny_model_dir, tmp_path):
    sampler = AnswerSampler(load_tokenizer(tiny_model_dir), seed=6)
    pairs = write_jsonl(tmp_path / "pairs.jsonl", sampler.pairs(8, prompt_seed=1))
    out = _rlhf("train-policy", "--algorithm", "dpo", "--policy", tiny_model_dir, "--pairs", pairs,
                "--out", tmp_path / "dpo", "--threads", "2", "--no-progress", "--set", "epochs=1",
                "--set", "beta=0.2")
    assert out["pairs"] == 8 and out["steps"] == 1 and out["device"] == "cpu/fp32"
    meta = json.loads((tmp_path / "dpo" / "train_meta.json").read_text())
    assert meta["algorithm"] == "dpo" and meta["config"]["beta"] == 0.2
    assert meta["reference"] == str(tiny_model_dir)
    assert check_finite(tmp_path / "dpo") == []
