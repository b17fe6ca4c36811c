"""One RAFT round from v0 per variant of RAFTConfig, all against the same reward model, judged on
many prompts none of them trained on: degenerate greedy answers (common/degeneracy.py, against v0's
answer), finished share, the hidden taste's win share vs v0, KL to v0.

Why: the demo's final served versions missed "0 degenerate answers" by one answer in 24 (session
14: "Tell me something interesting about thunderstorms." -> "The thunderstorms."), a rate of a few
percent that one demo cannot tell apart between variants. This measures it on ~200 unseen prompts
in a few minutes per variant.

The RM learns from pairs of v0's own samples labelled by a demo preference's hidden taste (as the
gate's better-candidate test does), on the RAFT round's own training prompts. Evaluation prompts:
the demo's question templates on the held-out topics and on everyday topics that appear nowhere in
the demo's prompts (general, not tuned to a persona).

    python bench/raft_degenerate_ab.py --variant default='{}' --variant x='{"epochs": 1}' \
        [--blend half=default:0.5] [--preference balanced] [--out bench/results/raft_degenerate_ab.json]

`--blend NAME=VARIANT:ALPHA` judges v0 + ALPHA (variant - v0), the weight-space interpolation of a
trained variant (listed before it) toward v0 (trainer/kl_brake.interpolate_), without training again.
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import time
from pathlib import Path

import torch

from common.degeneracy import degenerate_reasons, first_sentence, length_floor, words
from demo.personas import hidden_score
from trainer.algorithms import make_config, train_policy
from trainer.config import RMConfig
from trainer.data import PreferencePair, PromptItem
from trainer.evaluate import generate_finished, kl_between
from trainer.policy_base import PolicyJob
from trainer.reward_model import train_reward_model

ROOT = Path(__file__).parents[1]
TEMPLATES = ["What is {}?", "Why should I learn about {}?", "Explain {} in simple terms.",
             "Tell me something interesting about {}."]
EVERYDAY = ["bread", "bicycles", "bridges", "coffee", "clocks", "deserts", "elephants", "honey", "islands",
            "kites", "lighthouses", "maps", "mushrooms", "paper", "penguins", "pianos", "salt", "sharks",
            "soap", "spiders", "tea", "tides", "tomatoes", "tunnels", "wind", "wool", "zebras", "batteries",
            "chess", "fog"]
MAX_NEW, K = 64, 4


def item(prompt: str) -> PromptItem:
    return PromptItem([{"role": "user", "content": prompt}])


def topic(prompt: str) -> str:
    for t in TEMPLATES:
        m = re.fullmatch(re.escape(t).replace(r"\{\}", "(.+)"), prompt)
        if m:
            return m.group(1)
    return prompt


def eval_prompts(prompts: dict) -> list[str]:
    trained = {topic(p) for p in prompts["train"]}
    topics = sorted(({topic(p) for p in prompts["heldout"]} | set(EVERYDAY)) - trained)
    return [t.format(x) for x in topics for t in TEMPLATES]


def short_first_sentence(answer: str, usual: str) -> bool:
    """The answer opens with a fragment: its first sentence is "far too short" by the gate's length
    clause against `usual` (degenerate_reasons' defaults: max(2 words, 0.06 x its words)), whether the
    answer stops there ("The thunderstorms.") or goes on ("The thunderstorms. They are a ...")."""
    return len(words(first_sentence(answer))) < length_floor(usual)


def labelled_pairs(model: Path, prompts: list[str], preference: str) -> list[PreferencePair]:
    """K samples of v0 per prompt; the taste's favourite against each answer it likes clearly less."""
    answers, done = generate_finished(model, [item(p) for p in prompts for _ in range(K)], MAX_NEW, greedy=False, seed=1)
    pairs = []
    for i, p in enumerate(prompts):
        taste = lambda a, f: hidden_score(a, f, p, preference=preference)  # noqa: E731
        group = sorted(zip(answers[i * K:(i + 1) * K], done[i * K:(i + 1) * K]), key=lambda af: taste(*af), reverse=True)
        (best, bdone), rest = group[0], group[1:]
        pairs += [PreferencePair(item(p).messages, best, a, chosen_finished=bdone, rejected_finished=d)
                  for a, d in rest if taste(best, bdone) - taste(a, d) > 0.05]
    return pairs


def judge(model: Path, prompts: list[str], base: tuple[list[str], list[bool]], preference: str) -> dict:
    answers, done = generate_finished(model, [item(p) for p in prompts], MAX_NEW, greedy=True)
    return judge_answers(prompts, answers, done, base, preference)


def judge_answers(prompts: list[str], answers: list[str], done: list[bool], base: tuple[list[str], list[bool]],
                  preference: str) -> dict:
    """Degenerate answers (against v0's in `base`), fragment openings, finished share, the taste's win
    share vs v0 and mean score, words."""
    bad = [(p, a[:100], r[0]) for p, a, b in zip(prompts, answers, base[0]) for r in [degenerate_reasons(a, p, b)] if r]
    score = lambda p, a, f: hidden_score(a, f, p, preference=preference)  # noqa: E731
    new = [score(p, a, f) for p, a, f in zip(prompts, answers, done)]
    old = [score(p, a, f) for p, a, f in zip(prompts, *base)]
    wins = sum(1.0 if n > o + 1e-9 else 0.5 if abs(n - o) <= 1e-9 else 0.0 for n, o in zip(new, old))
    fragments = sum(short_first_sentence(a, b) for a, b in zip(answers, base[0]))
    return {"degenerate": len(bad), "fragment_openings": fragments, "prompts": len(prompts), "finished": round(sum(done) / len(done), 3),
            "win_vs_v0": round(wins / len(prompts), 3), "hidden": round(sum(new) / len(new), 3),
            "words": round(sum(len(a.split()) for a in answers) / len(answers), 1), "examples": bad[:6]}


def blend(variant: Path, v0: Path, alpha: float, out: Path) -> None:
    """Write v0 + alpha (variant - v0) to `out` (the variant's tokenizer and config files beside it)."""
    from trainer.kl_brake import interpolate_
    from trainer.modeling import load_causal_lm
    shutil.rmtree(out, ignore_errors=True)
    # not the variant's training stamp: a later --variant of this name must train, not reuse the blend
    shutil.copytree(variant, out, ignore=shutil.ignore_patterns("bench_config.json", "bench_metrics.json"))
    model, start = load_causal_lm(variant), load_causal_lm(v0)
    params = [p for p in model.parameters()]
    interpolate_(params, [p.detach() for p in start.parameters()], [p.detach().clone() for p in params], alpha)
    model.save_pretrained(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--variant", action="append", default=[], help="NAME=JSON overrides of RAFTConfig")
    ap.add_argument("--blend", action="append", default=[], help="NAME=VARIANT:ALPHA (module docstring)")
    ap.add_argument("--preference", default="balanced")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "raft_degenerate_ab.json"))
    ap.add_argument("--work", default=str(ROOT / ".rlhf-data" / "bench-cache" / "raft_ab"))
    args = ap.parse_args()
    torch.set_num_threads(2)
    from common.smollm2 import ensure_smollm2
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    v0 = ensure_smollm2(work)
    prompts = json.loads((ROOT / "demo" / "data" / "prompts.json").read_text())
    train, evals = prompts["train"][:48], eval_prompts(prompts)
    rm = work / f"rm-{args.preference}"
    result = {"preference": args.preference, "train_prompts": len(train), "eval_prompts": len(evals), "variants": {}}
    if not (rm / "reward_stats.json").exists():
        t = time.time()
        pairs = labelled_pairs(v0, train, args.preference)
        metrics = train_reward_model(pairs, [], v0, rm, RMConfig(kind="embedding", show_progress_bar=False, device="cpu"))
        result["rm"] = {"pairs": len(pairs), "seconds": round(time.time() - t), "heldout_accuracy": metrics.get("heldout_accuracy")}
    base_file = work / "v0_greedy.json"      # v0's greedy answers, for the prompts they answer
    cached = json.loads(base_file.read_text()) if base_file.exists() else {}
    if not isinstance(cached, dict) or cached.get("prompts") != evals:
        answers, done = generate_finished(v0, [item(p) for p in evals], MAX_NEW, greedy=True)
        cached = {"prompts": evals, "answers": answers, "finished": done}
        base_file.write_text(json.dumps(cached))
    base = (cached["answers"], cached["finished"])
    result["v0"] = judge(v0, evals, base, args.preference)
    print("v0", result["v0"], flush=True)
    for spec in args.variant + args.blend:
        name, _, overrides = spec.partition("=")
        out = work / f"cand-{name}"
        if spec in args.blend:
            source, _, alpha = overrides.partition(":")
            blend(work / f"cand-{source}", v0, float(alpha), out)
            row = {"blend_of": source, "alpha": float(alpha)}
        else:
            t = time.time()
            config = {**json.loads(overrides or "{}"), "show_progress_bar": False, "device": "cpu"}
            stamp = out / "bench_config.json"       # a candidate trained with these overrides is judged again, not retrained
            if stamp.exists() and json.loads(stamp.read_text()) == config:
                metrics = json.loads((out / "bench_metrics.json").read_text())
            else:
                shutil.rmtree(out, ignore_errors=True)
                metrics = train_policy("raft", PolicyJob(v0, v0, out, prompts=[item(p) for p in train], reward_model_dir=rm),
                                       make_config("raft", config))
                (out / "bench_metrics.json").write_text(json.dumps(metrics, default=str))
                stamp.write_text(json.dumps(config))
            row = {"overrides": json.loads(overrides or "{}"), "train_seconds": round(time.time() - t),
                   **{k: metrics.get(k) for k in ("kept", "kept_closed", "fragment_targets", "eos_fraction", "steps", "loop_check_kept_epoch",
                                                  "loop_check_degenerate_last", "loop_check_degenerate_kept",
                                                  "repair")},
                   # the round's samples that opened with a fragment; "fragment_openings" (from judge) is the greedy count
                   "sample_fragment_openings": metrics.get("fragment_openings")}
        row.update(**judge(out, evals, base, args.preference),
                   kl_to_v0=round(kl_between(out, v0, [item(p) for p in evals[:48]], max_new_tokens=MAX_NEW, n_samples=2), 3))
        result["variants"][name] = row
        print(name, json.dumps(row), flush=True)
        Path(args.out).write_text(json.dumps(result, indent=1))
    Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
