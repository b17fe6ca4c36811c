"""One RAFT round from v0 with a given unlikelihood weight, against a finished demo's first RM:
degenerate greedy answers (common/degeneracy.py, vs v0's) and finished share on the demo's 40
held-out prompts, KL to v0. The A/B behind RAFTConfig.unlikelihood_weight's default (session 7:
bench/results/raft_unlikelihood_ab.txt).

    python bench/raft_unlikelihood_ab.py DEMO_OUT/data WEIGHT
"""
import json
import sys
import time
from pathlib import Path

import torch

from common.degeneracy import degenerate_reasons
from trainer.algorithms import make_config, train_policy
from trainer.data import PromptItem
from trainer.evaluate import generate_finished, kl_between
from trainer.policy_base import PolicyJob


def main() -> None:
    data, weight = Path(sys.argv[1]), float(sys.argv[2])
    torch.set_num_threads(2)
    prompts = json.loads((Path(__file__).parents[1] / "demo" / "data" / "prompts.json").read_text())
    item = lambda p: PromptItem([{"role": "user", "content": p}])  # noqa: E731
    v0, rm, heldout = data / "models" / "v0", data / "reward_models" / "rm0", prompts["heldout"]
    base, _ = generate_finished(v0, [item(p) for p in heldout], 64, greedy=True)

    def degenerate(model: Path):
        answers, done = generate_finished(model, [item(p) for p in heldout], 64, greedy=True)
        bad = [(p, a[:120]) for p, a, b in zip(heldout, answers, base) if degenerate_reasons(a, p, b)]
        return {"degenerate": len(bad), "finished": sum(done) / len(done), "examples": bad[:3]}

    print("v0", degenerate(v0), flush=True)
    out = Path(f"/tmp/raft-ul-{weight}")
    t = time.time()
    res = train_policy("raft", PolicyJob(v0, v0, out, prompts=[item(p) for p in prompts["train"]], reward_model_dir=rm),
                       make_config("raft", {"unlikelihood_weight": weight, "show_progress_bar": False, "device": "cpu"}))
    print("train", round(time.time() - t), {k: res.get(k) for k in ("kept", "kept_closed", "loops", "loop_tokens", "steps")})
    print("candidate", degenerate(out), "kl_to_v0", kl_between(out, v0, [item(p) for p in heldout], max_new_tokens=64, n_samples=2))


if __name__ == "__main__":
    main()
