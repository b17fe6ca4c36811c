"""A demo run's versions under greedy decoding with a decoding guard against loops, on prompts none of
them trained on: degenerate answers (common/degeneracy.py, against v0's answer decoded the same way),
fragment openings, finished share, words, and the hidden taste's win share vs v0 decoded the same way.

Why: the served versions' remaining degenerate answers are v0's own loops ("a never-ending journey, a
never-ending journey"), which RAFT-side terms moved but did not remove (sessions 14-25). Two guards:
CTRL's repetition penalty (the logit of every token already in the prompt *or* the answer is divided
by it when positive, multiplied when negative; HF `generate` and vLLM alike), and OpenAI's presence /
frequency penalties (only the answer's own tokens, lowered by a constant / per occurrence; vLLM, and
trainer/rollout.OutputPenalties for HF). Both are read from the model folder's generation_config.json,
so gate, report and serving decode alike. This measures what each does to loops, fragments and the
taste before any default.

    python bench/decode_guard.py /work/runs/X [--penalties 1.0,1.1,1.2 | --decodings SETTINGS] [--preference balanced]
        [--out bench/results/decode_guard-X.json]

Prompts: bench/raft_degenerate_ab.py's evaluation set (the demo's four question templates on the
held-out topics and on everyday topics none of the demo's training prompts names).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parents[1]))
from bench.greedy_openings import run_versions  # noqa: E402
from bench.raft_degenerate_ab import MAX_NEW, eval_prompts, judge_answers  # noqa: E402
from common.degeneracy import degenerate_reasons  # noqa: E402
from common.generation_defaults import check_decoding  # noqa: E402
from trainer.modeling import eos_token_ids, load_causal_lm, load_tokenizer, prompt_token_ids  # noqa: E402
from trainer.rollout import HFGenerator, SamplingSettings  # noqa: E402

ROOT = Path(__file__).parents[1]


NEUTRAL = {"repetition_penalty": 1.0, "presence_penalty": 0.0, "frequency_penalty": 0.0}


def parse_decodings(text: str) -> list[dict]:
    """Settings from text: "repetition_penalty=1.1,frequency_penalty=0.5+presence_penalty=0.5" -> one dict per setting
    (settings split by ",", keys of one setting joined by "+"); unknown keys are refused."""
    out = []
    for item in filter(None, text.split(",")):
        setting = {key: float(value) for key, _, value in (pair.partition("=") for pair in item.split("+"))}
        outside = set(setting) - set(NEUTRAL)     # greedy answers: only the penalties change them
        problem = f"not a penalty: {sorted(outside)}" if outside else check_decoding(setting)
        if problem:
            raise SystemExit(f"--decodings {item!r}: {problem}")
        out.append(setting)
    return out


def label(setting: dict) -> str:
    short = {"repetition_penalty": "rp", "presence_penalty": "pp", "frequency_penalty": "fp"}
    return "+".join(f"{short[k]}{v:g}" for k, v in setting.items())


def greedy(model, tokenizer, prompts: list[str], setting: dict) -> tuple[list[str], list[bool]]:
    """Greedy answers with `setting` in place as the checkpoint's generation_config would set it (HF applies
    the repetition penalty, trainer/rollout.OutputPenalties the presence/frequency ones, as vLLM would)."""
    for key, value in {**NEUTRAL, **setting}.items():
        setattr(model.generation_config, key, value)
    ids = [prompt_token_ids(tokenizer, [{"role": "user", "content": p}]) for p in prompts]
    eos = eos_token_ids(model, tokenizer)
    out = HFGenerator(model).generate(ids, SamplingSettings(max_new_tokens=MAX_NEW, greedy=True, eos_token_ids=eos,
                                                            pad_token_id=tokenizer.pad_token_id))
    return tokenizer.batch_decode(out, skip_special_tokens=True), [bool(r) and r[-1] in eos for r in out]


def judge(prompts, answers, done, base, preference) -> dict:
    """raft_degenerate_ab's judgement, plus how many degenerate answers are loops (the repetition clauses)."""
    loops = sum(any(r.startswith(("repeated", "one word")) for r in degenerate_reasons(a, p, b))
                for p, a, b in zip(prompts, answers, base[0]))
    return {**judge_answers(prompts, answers, done, base, preference), "loops": loops}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run", help="a demo's --out folder (its data/models/vN)")
    ap.add_argument("--penalties", default="1.0,1.1,1.2", help="repetition penalties (without --decodings)")
    ap.add_argument("--decodings", default=None, help='settings to compare, e.g. "repetition_penalty=1.1,'
                    'frequency_penalty=0.5,presence_penalty=0.5+frequency_penalty=0.2" (keys joined by +)')
    ap.add_argument("--preference", default="balanced")
    ap.add_argument("--versions", default=None, help="comma-separated names (default: every vN)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(2)
    run = Path(args.run)
    models = run_versions(run)
    if args.versions:
        models = [m for m in models if m.name in args.versions.split(",")]
    prompts = eval_prompts(json.loads((ROOT / "demo" / "data" / "prompts.json").read_text()))
    settings = (parse_decodings(args.decodings) if args.decodings
                else [{"repetition_penalty": float(x)} for x in args.penalties.split(",")])
    out = Path(args.out or ROOT / "bench" / "results" / f"decode_guard-{run.name}.json")
    result = {"run": str(run), "preference": args.preference, "prompts": len(prompts), "rows": {}}
    base: dict[str, tuple] = {}
    for model_dir in models:
        tokenizer, model = load_tokenizer(model_dir), load_causal_lm(model_dir)
        meta = json.loads((model_dir / "rlhf_version.json").read_text()) if (model_dir / "rlhf_version.json").exists() else {}
        for setting in settings:
            t, name = time.time(), label(setting)
            answers, done = greedy(model, tokenizer, prompts, setting)
            base.setdefault(name, (answers, done))    # v0 first: each version against v0 decoded the same way
            row = {"gate_passed": (meta.get("gate") or {}).get("passed"), "decoding": setting,
                   **judge(prompts, answers, done, base[name], args.preference), "seconds": round(time.time() - t)}
            result["rows"][f"{model_dir.name}@{name}"] = row
            print(model_dir.name, name, json.dumps(row), flush=True)
            out.write_text(json.dumps(result, indent=1))
    print("wrote", out)


if __name__ == "__main__":
    main()
