"""The promotion gate on the real demo model (SmolLM2-135M-Instruct), both ways:

- a deliberately hacked candidate — DPO-trained to answer everything with one word — is refused
  with the reason recorded, even though the independent judge RM scores it *higher* than v0 (its
  bootstrap bound passes): degeneracy on every answer is what catches it;
- a genuinely better candidate passes: DPO (the demo's config) on v0's own sampled answers,
  labelled by a hidden preference of the demo's users (demo/personas.py, no noise), judged by an
  RM trained on *other* prompts' pairs of the same preference, and better than v0 by that hidden
  preference on the gate's held-out prompts (the truth the gate never sees).
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


DEMO_DPO = {"lr": 1.5e-4, "beta": 0.25, "epochs": 3}   # demo/cli.py PRESETS["default"].policy


def _truth_pairs(model_dir, prompts: list[str], per_prompt: int, seed: int, preference: str = "balanced"):
    """v0's own answers (temperature 1, 64 tokens like the demo's users), every two answers of a
    prompt whose hidden scores differ made a pair, better first; cut-off answers marked as such."""
    from itertools import combinations

    from demo.personas import hidden_score
    from trainer.evaluate import _sample
    from trainer.modeling import eos_token_ids, load_causal_lm, load_tokenizer
    tok, model = load_tokenizer(model_dir), load_causal_lm(model_dir)
    eos = set(eos_token_ids(model, tok))
    msgs = [[{"role": "user", "content": p}] for p in prompts for _ in range(per_prompt)]
    _, resp = _sample(model, tok, msgs, 64, greedy=False, seed=seed)
    texts = tok.batch_decode(resp, skip_special_tokens=True)
    done = [r[-1] in eos for r in resp]
    pairs = []
    for i, prompt in enumerate(prompts):
        group = [(texts[j], done[j]) for j in range(i * per_prompt, (i + 1) * per_prompt)]
        for a, b in combinations(group, 2):
            sa, sb = (hidden_score(t, f, prompt, preference=preference) for t, f in (a, b))
            if abs(sa - sb) > 1e-9:
                (c, cf), (r, rf) = (a, b) if sa > sb else (b, a)
                pairs.append(PreferencePair([{"role": "user", "content": prompt}], c, r,
                                            chosen_finished=cf, rejected_finished=rf))
    return pairs


def test_genuinely_better_candidate_passes(smollm2_dir, tmp_path):
    from demo.personas import hidden_score
    from trainer.evaluate import generate_finished
    torch.set_num_threads(2)
    train, judge_prompts, heldout = PROMPTS["train"][:16], PROMPTS["train"][40:56], PROMPTS["heldout"][:12]
    judge = tmp_path / "judge-rm"
    judge_pairs = _truth_pairs(smollm2_dir, judge_prompts, 4, seed=1)
    train_reward_model(judge_pairs, [], smollm2_dir, judge,
                       RMConfig(epochs=2, batch_size=8, lr=5e-5, show_progress_bar=False, device="cpu"))
    pairs = _truth_pairs(smollm2_dir, train, 4, seed=2)
    better = _dpo(smollm2_dir, tmp_path / "better", pairs[:64], **DEMO_DPO)
    settings = Settings(data_dir=tmp_path / "data", gate_eval_prompts=len(heldout), gate_max_new_tokens=64)
    gate_prompts = [PromptItem([{"role": "user", "content": p}]) for p in heldout]
    gate = run_gate(better, smollm2_dir, smollm2_dir, gate_prompts, settings, judges=[judge],
                    eval_pairs=_truth_pairs(smollm2_dir, heldout[:6], 4, seed=3))
    print(json.dumps(gate, indent=1, default=str)[:3000])

    def truth(model_dir):   # the hidden preference on the gate's own prompts: what "better" means
        answers, done = generate_finished(model_dir, gate_prompts, max_new_tokens=64)
        return sum(hidden_score(a, f, p, preference="balanced") for a, f, p in zip(answers, done, heldout)) / len(heldout)
    assert truth(better) > truth(smollm2_dir)
    assert gate["passed"], gate["reasons"]
    assert gate["metrics"]["rm_gain_lower_bound"] > 0 and gate["metrics"]["degenerate_answers"] == 0
