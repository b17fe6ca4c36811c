"""A fixed probe of this machine's training speed, to compare demo and bench timings across days:
SmolLM2-135M-Instruct forward + backward on 8 x 160 random tokens with 2 torch threads.

    .venv/bin/python bench/cpu_probe.py

Session 5 measured 5.6 s/step (6.0 s beside an idle `rlhf serve`); session 10 7.9-10.1 s/step.
"""
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    import torch
    from transformers import AutoModelForCausalLM

    from common.settings import Settings
    from common.smollm2 import ensure_smollm2

    torch.set_num_threads(2)
    model = AutoModelForCausalLM.from_pretrained(ensure_smollm2(Settings().data_dir), dtype=torch.float32)
    x = torch.randint(0, 1000, (8, 160), generator=torch.Generator().manual_seed(0))
    times = []
    for _ in range(4):
        t = time.perf_counter()
        model(input_ids=x, labels=x).loss.backward()
        times.append(round(time.perf_counter() - t, 2))
    print({"fwd_bwd_8x160_s_per_step": times})


if __name__ == "__main__":
    main()
