"""The learning check of every algorithm (tests/trainer/learning_runs.py: 3 consecutive runs on the
tiny model, synthetic preference, KL budget to the anchor) on a given device, as a plain script:
the GPU machines have torch + transformers but no pytest/vLLM/Redis. Training runs on `--device`
(CUDA: bf16 autocast, fp32 master weights); evaluation (sampling, KL) runs on the CPU as in CI.
Writes bench/results/learning_<device>.json.

    python bench/gpu_learning_check.py --device cuda
    python bench/gpu_learning_check.py --device cpu --precision bf16 --algorithms raft,dpo --seeds 0,1,2,3,4

`--precision` sets trainer/device.py's training precision ("bf16" autocasts on a CPU too, which no
precision does by default); `--seeds` runs each algorithm once per training seed and judges the mean digits, as
tests/trainer/test_algorithms_learning.py judges RAFT.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--device", default="cuda")
    p.add_argument("--algorithms", default="ppo,rloo,online_dpo,dpo,kto")
    p.add_argument("--precision", default=None, choices=["auto", "fp32", "bf16"],
                   help="training precision (default: RLHF_TRAIN_PRECISION, else auto)")
    p.add_argument("--seeds", default="", help="comma-separated training seeds (default: the config's)")
    p.add_argument("--out", default=None, help="result file (default bench/results/learning_<device>.json)")
    args = p.parse_args()
    import torch

    from trainer.device import set_train_precision
    if args.precision:
        set_train_precision(args.precision)
    seeds = [int(x) for x in args.seeds.split(",") if x] or [None]

    from common.tiny_model import build_tiny_model
    from tests.trainer.learning_runs import three_runs, train_synthetic_rm
    from trainer.device import describe, resolve_device
    device = resolve_device(args.device)
    work = Path(tempfile.mkdtemp(prefix="learning-"))
    tiny = build_tiny_model(work / "tiny")
    t = time.time()
    rm_metrics, _ = train_synthetic_rm(tiny, work / "rm", device=str(device))
    report = {"device": describe(device), "torch": torch.__version__,
              "rm": {"heldout_accuracy": rm_metrics["heldout_accuracy"], "seconds": round(time.time() - t, 2),
                     "device": rm_metrics["device"]}, "algorithms": {}}
    ok = rm_metrics["heldout_accuracy"] >= 0.9
    for name in args.algorithms.split(","):
        t = time.time()
        try:
            traces = {}
            for seed in seeds:
                start, traces[str(seed)] = three_runs(name, tiny, work / "rm", work / f"seed{seed}",
                                                      device=str(device), seed=seed)
            final = sum(tr[-1]["digits"] for tr in traces.values()) / len(traces)
            first = sum(tr[0]["digits"] for tr in traces.values()) / len(traces)
            passed = final > start + 1.0 and final >= first - 0.25
            report["algorithms"][name] = {"anchor_digits": round(start, 2), "mean_final_digits": round(final, 2),
                                          "runs": traces if len(traces) > 1 else traces[str(seeds[0])],
                                          "passed": passed, "seconds_incl_eval": round(time.time() - t, 1)}
        except AssertionError as exc:
            passed = False
            report["algorithms"][name] = {"passed": False, "error": str(exc)[:2000]}
        ok &= passed
        print(json.dumps({name: report["algorithms"][name]}), flush=True)
    suffix = device.type + (f"-{args.precision}" if args.precision else "")
    out = Path(args.out or Path(__file__).parent / "results" / f"learning_{suffix}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"{'PASS' if ok else 'FAIL'}: {out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
