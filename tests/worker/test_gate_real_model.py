"""The promotion gate on the real demo model (SmolLM2-135M-Instruct): a deliberately hacked
candidate — DPO-trained to answer everything with one word — is refused with the reason recorded,
even though the independent judge RM scores it *higher* than v0 (its bootstrap bound passes):
degeneracy on every answer is what catches it.

The "genuinely better candidate passes" half is test_gate_better_candidate.py, off by default
because it does not pass yet (its docstring has the measurements). Session 4 tried DPO with the
demo's config on 64 pairs of v0's own answers labelled by the `balanced` hidden preference: the gate
refused it, rightly by its rules (a repetitive probe answer, KL 8.19 > 8, a judge RM that scored it
lower, mean -0.39); session 6's RAFT candidates were refused too (a looping answer, judge mean < 0).
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
    settings = Settings(data_dir=work / "data", gate_eval_prompts=10, gate_max_new_tokens=48, kl_budget=8.0,
                        gate_max_kl=8.0)
    gate_prompts = [PromptItem([{"role": "user", "content": p}]) for p in heldout[:10]]
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
    # where the gate's time went, per check
    assert list(gate["metrics"]["seconds"]) == ["greedy_answers", "judges", "kl", "preference_pairs"]

