"""trainer/decoding.py's savings, side by side with plain HF `generate` on a demo run's versions:
greedy answers with and without dropping ended answers from the batch (seconds, answers identical or
not, the share of `generate`'s row-steps that were rows already ended), and RAFT-style sampling (k
answers per prompt) with and without dropping ended rows and the shared prompt prefill (seconds, samples
identical or not at one seed, mean answer tokens of both).

    python bench/decode_savings.py /work/runs/X [--prompts 128] [--versions v0,v3] [--k 6] [--out FILE]

Prompts: the demo's gate-only prompts (demo/data/prompts.json "gate_extra"), the first `--prompts`,
in batches of 64 as the gate decodes them, with the gate's 64-token budget and each version's own
generation config (repetition penalty 1.1 in the demo). Each version: `generate` first, then the
compacted loop, one after the other in one process (2 torch threads), so the two are comparable only
within a row of the result. Sampling: the last version, the first `--prompts` / 4 prompts, `--k` each,
temperature 0.7 and top_p 0.9 (RAFT's defaults), in batches of 64.
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
from bench.raft_degenerate_ab import item  # noqa: E402
from trainer.modeling import eos_token_ids, left_pad, load_causal_lm, load_tokenizer, prompt_token_ids  # noqa: E402
from trainer.rollout import HFGenerator, SamplingSettings, output_penalties, trim_response  # noqa: E402

ROOT = Path(__file__).parents[1]


def generate_rows(model, prompts, settings: SamplingSettings, batch: int) -> list[list[int]]:
    """HF `generate`, as trainer.rollout.HFGenerator ran every greedy batch before compaction."""
    out_rows = []
    for i in range(0, len(prompts), batch):
        ids, mask = left_pad(prompts[i:i + batch], settings.pad_token_id)
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=settings.max_new_tokens,
                             eos_token_id=settings.eos_token_ids, pad_token_id=settings.pad_token_id,
                             do_sample=False, temperature=None, top_k=None, top_p=None,
                             logits_processor=output_penalties(model.generation_config, ids.shape[1]))
        out_rows += [trim_response(r, settings.eos_token_ids, settings.pad_token_id)
                     for r in out[:, ids.shape[1]:].tolist()]
    return out_rows


def sampling_row(model, tokenizer, prompts, k: int, max_new_tokens: int) -> dict:
    """Sampled answers, k per prompt, through plain `generate` and through HFGenerator (compacted, shared
    prefill), from the same seed: `identical_samples` counts the answers both drew alike (all, when the
    ended rows' place in the draw keeps the random stream, trainer/decoding._draw)."""
    settings = SamplingSettings(max_new_tokens=max_new_tokens, temperature=0.7, top_p=0.9, eos_token_ids=eos_token_ids(
        model, tokenizer), pad_token_id=tokenizer.pad_token_id)
    layout = [p for p in prompts for _ in range(k)]
    gen = HFGenerator(model)
    plain = []
    torch.manual_seed(0)
    t = time.perf_counter()
    for i in range(0, len(layout), gen.batch_size):
        ids, mask = left_pad(layout[i:i + gen.batch_size], settings.pad_token_id)
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                             eos_token_id=settings.eos_token_ids, pad_token_id=settings.pad_token_id, do_sample=True,
                             temperature=0.7, top_k=0, top_p=0.9, repetition_penalty=1.0)
        plain += [trim_response(r, settings.eos_token_ids, settings.pad_token_id)
                  for r in out[:, ids.shape[1]:].tolist()]
    t_generate = time.perf_counter() - t
    torch.manual_seed(0)
    t = time.perf_counter()
    shared = gen.generate(layout, settings)
    t_shared = time.perf_counter() - t
    return {"prompts": len(prompts), "k": k, "answers": len(layout), "generate_s": round(t_generate, 1),
            "compacted_shared_s": round(t_shared, 1), "speedup": round(t_generate / t_shared, 2),
            "identical_samples": sum(a == b for a, b in zip(plain, shared)),
            "mean_tokens": round(sum(map(len, plain)) / len(plain), 1),
            "mean_tokens_compacted": round(sum(map(len, shared)) / len(shared), 1),
            "ended_row_step_share": round(ended_share(plain, gen.batch_size), 3)}


def ended_share(rows: list[list[int]], batch: int) -> float:
    """Share of the row-steps `generate` runs (each batch to its longest answer) spent on ended rows."""
    full = sum(len(rows[i:i + batch]) * max(len(r) for r in rows[i:i + batch]) for i in range(0, len(rows), batch))
    return 1 - sum(len(r) for r in rows) / full


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--prompts", type=int, default=128)
    ap.add_argument("--max-new-tokens", type=int, default=64, help="the demo's gate budget (its users' max_tokens)")
    ap.add_argument("--versions", default="", help="comma-separated version names (default: every version)")
    ap.add_argument("--k", type=int, default=6, help="samples per prompt (RAFT's default k)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench/results/decode_savings.json")
    args = ap.parse_args()
    torch.set_num_threads(2)
    questions = json.loads((ROOT / "demo/data/prompts.json").read_text())["gate_extra"][: args.prompts]
    rows = []
    wanted = set(filter(None, args.versions.split(",")))
    for folder in [f for f in run_versions(args.run) if not wanted or f.name in wanted]:
        tokenizer, model = load_tokenizer(folder), load_causal_lm(folder)
        prompts = [prompt_token_ids(tokenizer, item(q).messages) for q in questions]
        settings = SamplingSettings(max_new_tokens=args.max_new_tokens, greedy=True,
                                    eos_token_ids=eos_token_ids(model, tokenizer), pad_token_id=tokenizer.pad_token_id)
        gen = HFGenerator(model)
        t = time.perf_counter()
        before = generate_rows(model, prompts, settings, gen.batch_size)
        t_generate = time.perf_counter() - t
        t = time.perf_counter()
        after = gen.generate(prompts, settings)
        t_compacted = time.perf_counter() - t
        row = {"version": folder.name, "prompts": len(prompts), "generate_s": round(t_generate, 1),
               "compacted_s": round(t_compacted, 1), "speedup": round(t_generate / t_compacted, 2),
               "identical_answers": sum(a == b for a, b in zip(before, after)),
               "mean_tokens": round(sum(map(len, before)) / len(before), 1),
               "ended_row_step_share": round(ended_share(before, gen.batch_size), 3)}
        print(row, flush=True)
        rows.append(row)
    sampled = sampling_row(model, tokenizer, prompts[: args.prompts // 4], args.k, args.max_new_tokens)
    print(sampled, flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"run": str(args.run), "max_new_tokens": args.max_new_tokens,
                                    "batch": HFGenerator().batch_size, "rows": rows,
                                    "sampling": sampled}, indent=1) + "\n")
    print("wrote", args.out)


if __name__ == "__main__":
    main()
