"""Would a gate retry at the weight-space midpoint (WiSE-FT) rescue a candidate refused for one degenerate
answer? For a finished demo run: weights served + alpha (candidate - served) for each alpha, their greedy
answers (48 tokens) to the report's 48 held-out prompts (win rate vs v0 by the hidden preference) and to
the 160 gate-only prompts (degenerate answers, common/degeneracy.py against v0's answer).

    PYTHONPATH=. .venv/bin/python bench/midpoint_probe.py RUN_DIR SERVED CANDIDATE ALPHAS PREFERENCE OUT_JSON
    e.g. /work/runs/fe34 v1 v2 0.5,0.75 formal_expert bench/results/midpoint-fe34.json   (~1 min per alpha)

Session 34: formal_expert (v1 served, v2 refused for "What is marathons?" -> "Amaranthos! ...") kept the
off-prompt answer at alpha 0.5 and 0.75; balanced (v2 served, v3 refused for "Explain marathons in simple terms." -> "Amaranthrums ...") lost it at
0.5. One rescue in two, so the retry was not built. The win rates here use 48 tokens, not the report's
budget: compare them with each other, not with report.md."""
import json, shutil, sys, time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from common.degeneracy import degenerate_reasons
from demo.evaluate import score_answers
from trainer.data import PromptItem
from trainer.evaluate import generate_finished

run, served, cand = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
alphas = [float(a) for a in sys.argv[4].split(",")]
pref = sys.argv[5]
models = run / "data" / "models"
prompts = json.load(open("demo/data/prompts.json"))
report = prompts["heldout"][:48]
extra = prompts["gate_extra"]
items = lambda ps: [PromptItem([{"role": "user", "content": p}]) for p in ps]

def answers(folder, ps, n):
    return generate_finished(folder, items(ps), n, greedy=True)

t = time.time()
v0r, v0rf = answers(models / "v0", report, 48)
v0e, _ = answers(models / "v0", extra, 48)
base = score_answers(report, v0r, v0rf, None, None, pref)
print("v0 ready", round(time.time() - t), "s", flush=True)
ws, wc = load_file(str(models / served / "model.safetensors")), load_file(str(models / cand / "model.safetensors"))
out = {}
for a in alphas:
    t = time.time()
    folder = Path(f"/tmp/interp-{a}")
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(models / cand, folder, ignore=shutil.ignore_patterns("*.safetensors", "gate_*", "*.jsonl"))
    save_file({k: (ws[k] + a * (wc[k] - ws[k])).contiguous() for k in ws}, str(folder / "model.safetensors"),
              metadata={"format": "pt"})
    ra, rf = answers(folder, report, 48)
    ea, _ = answers(folder, extra, 48)
    sc = score_answers(report, ra, rf, v0r, base["scores"], pref)
    bad = [(p, x, degenerate_reasons(x, p, r)) for p, x, r in zip(extra, ea, v0e) if degenerate_reasons(x, p, r)]
    out[a] = {"win": sc["win_rate_vs_v0"], "hidden": sc["hidden_score"], "words": sc["mean_words"],
              "report_degenerate": sc["degenerate_count"], "extra_degenerate": len(bad), "extra_examples": bad[:3],
              "seconds": round(time.time() - t)}
    print(a, out[a], flush=True)
    shutil.rmtree(folder, ignore_errors=True)
json.dump({"run": str(run), "served": served, "candidate": cand, "preference": pref, "alphas": out},
          open(sys.argv[6], "w"), indent=1)
