"""Probe (session 13): the embedding RM with the policy's own frozen states (SmolLM2-135M-Instruct,
mean-pooled last layer) in place of all-MiniLM-L6-v2, at 200 pairs on the cached 120-prompt pool.

    .venv/bin/python bench/rm_policy_encoder_probe.py    # writes bench/results/rm_policy_encoder_probe.json

Measured: truth accuracy 0.60 / 0.60 / 0.64 (balanced / formal_expert / concise_warm) vs MiniLM's
0.61 / 0.60 / 0.61, 74-87 s per RM vs 9-12 s: no gain, not adopted.
"""
import runpy
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
import trainer.embedding_rm as er  # noqa: E402

er.encoder_dir = lambda: REPO / ".rlhf-data" / "base" / "SmolLM2-135M-Instruct"
sys.argv = ["bench_rm_efficiency.py", "--preferences", "balanced,formal_expert,concise_warm", "--sizes", "200",
            "--variant", 'smollm_enc={"kind":"embedding"}', "--out", "rm_policy_encoder_probe"]
runpy.run_path(str(REPO / "bench" / "bench_rm_efficiency.py"), run_name="__main__")
