"""A fixed probe of this machine's training speed, to compare demo and bench timings across days:
SmolLM2-135M-Instruct forward + backward on 8 x 160 random tokens with 2 torch threads.

    .venv/bin/python bench/cpu_probe.py [--bf16]

Session 5 measured 5.6 s/step (6.0 s beside an idle `rlhf serve`); session 10 7.9-10.1 s/step.
Where the CPU multiplies bf16 natively (Intel AMX; trainer/device.py) or with --bf16, it also times
the same step under bf16 autocast (RLHF_TRAIN_PRECISION=bf16). Session 32 (AMX Xeon): fp32 5.5-7.4
s/step, bf16 3.2-3.6 s/step.
"""
import contextlib
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    import torch
    from transformers import AutoModelForCausalLM

    from common.settings import Settings
    from common.smollm2 import ensure_smollm2
    from trainer.device import cpu_has_native_bf16

    torch.set_num_threads(2)
    path = ensure_smollm2(Settings().data_dir)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    x = torch.randint(0, 1000, (8, 160), generator=torch.Generator().manual_seed(0))
    modes = {"fp32": contextlib.nullcontext}
    if cpu_has_native_bf16() or "--bf16" in sys.argv:
        modes["bf16"] = lambda: torch.autocast("cpu", dtype=torch.bfloat16)
    for name, ctx in modes.items():
        times = []
        for _ in range(4):
            t = time.perf_counter()
            with ctx():
                loss = model(input_ids=x, labels=x).loss
            loss.backward()
            times.append(round(time.perf_counter() - t, 2))
        print({"fwd_bwd_8x160_s_per_step" + ("" if name == "fp32" else f"_{name}"): times})


if __name__ == "__main__":
    main()
