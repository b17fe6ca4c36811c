"""The promotion gate on the real demo model (SmolLM2-135M-Instruct): a deliberately hacked
candidate — DPO-trained to answer everything with one word — is refused with the reason recorded,
and a genuinely better one — trained on the same kind of pairs a judge RM learned from — passes,
judged by that independent RM with the paired-bootstrap bound, degeneracy on every answer, KL
budget to the anchor and agreement with held-out human pairs.

The taste here: an answer that names the subject of the question in a full sentence beats a
vague non-answer. Nothing in the gate knows it; only the pairs do.
"""
import json
from pathlib import Path

import pytest
import torch

from common.settings import Settings
from trainer.algorithms import make_config, train_policy
from trainer.config import RMConfig
from trainer.data import PreferencePair, PromptItem
from trainer.policy_base import PolicyJob
from trainer.reward_model import train_reward_model
from worker.gate import run_gate

pytestmark = pytest.mark.slow
PROMPTS = json.loads((Path(__file__).parents[2] / "demo" / "data" / "prompts.json").read_text())


def _subject(prompt: str) -> str:
    words = [w.strip("?.,!").lower() for w in prompt.split()]
    content = [w for w in words if len(w) > 4]
    return content[-1] if content else words[-1]


def _pairs(prompts: list[str]) -> list[PreferencePair]:
    out = []
    for p in prompts:
        s = _subject(p)
        out.append(PreferencePair([{"role": "user", "content": p}],
                                  f"{s.capitalize()} matters because it shapes how we live; for example, "
                                  f"people study {s} to understand the world around them.",
                                  "I am not sure. It depends on many things, and it is hard to say."))
    return out


@pytest.fixture(scope="module")
def setup(smollm2_dir, tmp_path_factory):
    torch.set_num_threads(2)
    work = tmp_path_factory.mktemp("gate-real")
    train, judge_data, heldout = PROMPTS["train"][:24], PROMPTS["train"][24:56], PROMPTS["heldout"][:12]
    rm_dir = work / "judge-rm"
    train_reward_model(_pairs(judge_data), [], smollm2_dir, rm_dir,
                       RMConfig(epochs=2, batch_size=8, lr=5e-5, show_progress_bar=False, device="cpu"))
    settings = Settings(data_dir=work / "data", gate_eval_prompts=6, gate_max_new_tokens=48, kl_budget=8.0,
                        gate_max_kl=8.0)
    gate_prompts = [PromptItem([{"role": "user", "content": p}]) for p in heldout[:6]]
    return {"work": work, "train": train, "rm": rm_dir, "settings": settings, "gate_prompts": gate_prompts,
            "eval_pairs": _pairs(heldout)}


def _dpo(smollm2_dir, out, pairs, **config):
    job = PolicyJob(smollm2_dir, smollm2_dir, out, pairs=pairs)
    train_policy("dpo", job, make_config("dpo", {"show_progress_bar": False, "device": "cpu", **config}))
    return out


def test_hacked_one_word_candidate_is_refused(setup, smollm2_dir):
    hacked_pairs = [PreferencePair(p.messages, "Laughing.", p.chosen) for p in _pairs(setup["train"])]
    hacked = _dpo(smollm2_dir, setup["work"] / "hacked", hacked_pairs, lr=1e-4, epochs=4, beta=0.1)
    gate = run_gate(hacked, smollm2_dir, smollm2_dir, setup["gate_prompts"], setup["settings"],
                    judges=[setup["rm"]], eval_pairs=setup["eval_pairs"])
    print(json.dumps(gate, indent=1, default=str)[:3000])
    assert not gate["passed"]
    assert gate["metrics"]["degenerate_answers"] >= 4, gate["metrics"]
    assert any("degenerate answers" in r for r in gate["reasons"]), gate["reasons"]
    assert any("far too short" in e["reasons"][0] for e in gate["metrics"]["degenerate_examples"])


def test_genuinely_better_candidate_passes(setup, smollm2_dir):
    better = _dpo(smollm2_dir, setup["work"] / "better", _pairs(setup["train"]), lr=2e-5, epochs=2, beta=0.1)
    gate = run_gate(better, smollm2_dir, smollm2_dir, setup["gate_prompts"], setup["settings"],
                    judges=[setup["rm"]], eval_pairs=setup["eval_pairs"])
    print(json.dumps(gate, indent=1, default=str)[:3000])
    assert gate["passed"], gate["reasons"]
    m = gate["metrics"]
    assert m["degenerate_answers"] == 0 and m["rm_gain_lower_bound"] > 0
    assert m["kl_to_anchor"] <= setup["settings"].kl_budget
    assert m["pref_accuracy"] > m["pref_accuracy_served"]
