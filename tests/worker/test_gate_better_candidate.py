"""The promotion gate on the real demo model (SmolLM2-135M-Instruct): a genuinely better
candidate passes. The counterpart of test_gate_real_model.py (a hacked candidate is refused).

"Better" is judged by a taste written apart from the system: the demo's `balanced` hidden
preference (demo/personas.py), which nothing in trainer/ or worker/ sees. It labels pairs of
v0's own sampled answers, as users would; two reward models learn from those labels on disjoint
prompts: one the candidate is trained against (RAFT: best-of-k of v0's samples by that RM), one
that only judges at the gate. The gate then sees the candidate's greedy answers on held-out
prompts, with held-out labelled pairs for the implicit-preference check. The test asserts that
the gate passes it with no reason recorded, and that the hidden taste agrees it is better.

NOT PASSING YET, so it is off by default (RLHF_TEST_BETTER_CANDIDATE=1 runs it, ~6.5 min on 2
cores): session 6 measured two refusals. RAFT with 2 epochs (14 kept answers, 4 steps): KL 0.34,
finished answers 23% vs v0's 15%, judge mean -0.10 (95% bound -0.50), one looping greedy answer
("...a mix of air and water in the atmosphere" twice). With 3 epochs on 30 prompts (15 kept, 6
steps): KL 0.73, judge mean -0.29 (bound -0.88), one looping answer. Session 7, with cut-off samples
also ranked closed at their last sentence (30 kept answers, 12 steps): KL 2.59, finished answers 54%
vs 15%, 0 degenerate, implicit preference 0.73 vs 0.50 on 22 held-out pairs — and still refused:
the judge RM (trained on the pairs of 20 other prompts) gives mean -0.20, 95% bound -0.94 on 13
prompts. The judge, trained on so few pairs, is the weak part now; a gate that trusted the
candidate's own RM (held-out accuracy 1.0 here) would be the soft gate this test must not need.
Session 13, with the embedding RM the pipeline now trains (both RMs; own RM held-out accuracy
0.875): RAFT kept 30 answers (8 steps), finished answers 88% vs 21%, and the gate refused it on
three counts — 3/33 degenerate greedy answers ("What is thunderstorms?" -> "Thunderbolts!"), judge
mean +0.103 but 95% bound -0.028, implicit preference 0.45 vs 0.50 on 20 held-out pairs. (8 min.)
Session 14, with the RM's surface features and words: the judge's gain bound rose to +0.62, but 2/33
greedy answers stopped after a first sentence ("What is cheese?" -> "The cheese.": the fine-tuning had
learned pi(EOS) 0.44 at any sentence end) and implicit preference 0.40 vs 0.50. With RAFT's early-stop
unlikelihood (`early_stop_weight` 2.0): 0/33 degenerate, judge mean +0.53, bound +0.28, finished
answers 79% vs 21%, KL 2.46 — refused on implicit preference alone (0.40 vs 0.50 on 20 held-out
pairs, 8 of 20; the check allows 0.45). (5.5 min.) That term is off by default: in the balanced
demo the greedy answers it kept from stopping looped instead (RAFTConfig.early_stop_weight).
Session 17, RAFT candidates sampled at 0.7 and the implicit-preference check paired (95% upper bound
of the per-pair difference must not be below 0): that check and the judge pass now (0.45 vs 0.50 on
20 pairs, upper bound +0.15; judge mean +0.51, bound +0.002; finished answers 88% vs 21%, KL 2.84),
and the gate refuses on degeneracy alone: 2/33 greedy answers loop, the probe "What is the capital
of France?" -> "L'Étoile, la Marseillaise, la femme, la femme, ..." and "The thunderstorms. They're a
never-ending cycle, a never-ending cycle. ..." (the RAFT loop check, on the 30 training prompts, kept
epoch 2 with 1 loop of its own). (8 min.)
"""
import json
import os
from pathlib import Path

import pytest
import torch

from common.settings import Settings
from demo.personas import hidden_score
from trainer.algorithms import make_config, train_policy
from trainer.config import RMConfig
from trainer.data import PreferencePair, PromptItem
from trainer.evaluate import generate_finished
from trainer.policy_base import PolicyJob
from trainer.reward_model import train_reward_model
from worker.gate import run_gate

pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400), pytest.mark.skipif(
    not os.environ.get("RLHF_TEST_BETTER_CANDIDATE"),
    reason="not passing yet (see the module docstring); RLHF_TEST_BETTER_CANDIDATE=1 runs it")]
PROMPTS = json.loads((Path(__file__).parents[2] / "demo" / "data" / "prompts.json").read_text())
PREFERENCE, MAX_NEW, K = "balanced", 64, 4


def _item(prompt: str) -> PromptItem:
    return PromptItem([{"role": "user", "content": prompt}])


def _taste(prompt: str, answer: str, finished: bool) -> float:
    return hidden_score(answer, finished, prompt, preference=PREFERENCE)


def _labelled_pairs(model_dir: Path, prompts: list[str], seed: int) -> dict[str, list[PreferencePair]]:
    """K sampled answers per prompt; per prompt, the taste's favourite against each answer it
    likes clearly less. Returned per prompt, so callers can split by prompt."""
    answers, finished = generate_finished(model_dir, [_item(p) for p in prompts for _ in range(K)],
                                          MAX_NEW, greedy=False, seed=seed)
    out: dict[str, list[PreferencePair]] = {}
    for i, p in enumerate(prompts):
        group = sorted(zip(answers[i * K:(i + 1) * K], finished[i * K:(i + 1) * K]),
                       key=lambda af: _taste(p, *af), reverse=True)
        (best, best_done), rest = group[0], group[1:]
        out[p] = [PreferencePair(_item(p).messages, best, a, chosen_finished=best_done, rejected_finished=done)
                  for a, done in rest if _taste(p, best, best_done) - _taste(p, a, done) > 0.05]
    return out


@pytest.fixture(scope="module")
def trained(smollm2_dir, tmp_path_factory):
    torch.set_num_threads(2)
    work = tmp_path_factory.mktemp("gate-better")
    # the judge learns from as many prompts as the candidate's own RM (disjoint ones): a gate's
    # judge is an earlier RM of the same deployment, trained on about as much live feedback
    train, judged, evald = PROMPTS["train"][:30], PROMPTS["train"][30:60], PROMPTS["heldout"][12:20]
    pairs = _labelled_pairs(smollm2_dir, train + judged + evald, seed=1)
    # the RM the pipeline trains in the demo (demo/cli.py): the embedding RM (session 12; the
    # fine-tuned transformer RM judged unseen prompts at 0.38-0.43, bench/results/rm_embedding_ab.json)
    rm_config = RMConfig(kind="embedding", show_progress_bar=False, device="cpu")
    own_rm, judge_rm = work / "own-rm", work / "judge-rm"
    own = train_reward_model([q for p in train for q in pairs[p]], [], smollm2_dir, own_rm, rm_config)
    train_reward_model([q for p in judged for q in pairs[p]], [], smollm2_dir, judge_rm, rm_config)
    candidate = work / "candidate"
    job = PolicyJob(smollm2_dir, smollm2_dir, candidate, prompts=[_item(p) for p in train], reward_model_dir=own_rm)
    # the demo's first round: RAFT with its defaults
    policy = train_policy("raft", job, make_config("raft", {"show_progress_bar": False, "device": "cpu"}))
    return {"candidate": candidate, "own_rm": own_rm, "own_accuracy": own.get("heldout_accuracy"),
            "judge_rm": judge_rm, "eval_pairs": [q for p in evald for q in pairs[p]], "policy": policy,
            "work": work}


def test_genuinely_better_candidate_passes(trained, smollm2_dir):
    # as many gate prompts as the demo's gate uses (32 + the probe), none trained or judged on
    # (heldout[24:48] are the 24 report prompts session 28 added: the same 32 prompts as before)
    gate_prompts = [_item(p) for p in PROMPTS["heldout"][:12] + PROMPTS["heldout"][20:24] + PROMPTS["heldout"][48:64]]
    settings = Settings(data_dir=trained["work"] / "data", gate_eval_prompts=len(gate_prompts),
                        gate_max_new_tokens=MAX_NEW)
    gate = run_gate(trained["candidate"], smollm2_dir, smollm2_dir, gate_prompts, settings,
                    judges=[trained["judge_rm"], trained["own_rm"]], own_rm=trained["own_rm"],
                    own_rm_accuracy=trained["own_accuracy"], eval_pairs=trained["eval_pairs"])
    print(json.dumps({"policy": trained["policy"], "gate": gate}, indent=1, default=str)[:4000])
    # the independent judge only: the RM the candidate was trained against is never its judge
    assert gate["metrics"]["judges"] == ["judge-rm"]
    assert gate["passed"], gate["reasons"]
    assert gate["reasons"] == [] and gate["metrics"]["degenerate_answers"] == 0
    # ... and the taste nobody trained on agrees: the candidate's greedy answers score higher
    texts = [p.messages[0]["content"] for p in gate_prompts]
    new = generate_finished(trained["candidate"], gate_prompts, MAX_NEW, greedy=True)
    old = generate_finished(smollm2_dir, gate_prompts, MAX_NEW, greedy=True)
    score = lambda answers: sum(_taste(p, a, f) for p, a, f in zip(texts, *answers)) / len(texts)  # noqa: E731
    assert score(new) > score(old), (score(new), score(old))
