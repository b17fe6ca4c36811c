"""A fixed probe of this machine's training speed, to compare demo and bench timings across days:
SmolLM2-135M-Instruct forward + backward on 8 x 160 random tokens with 2 torch threads.

    .venv/bin/python bench/cpu_probe.py [--bf16]

Session 5 measured 5.6 s/step (6.0 s beside an idle `rlhf serve`); session 10 7.9-10.1 s/step.
Where the CPU multiplies bf16 natively (Intel AMX; trainer/device.py) or with --bf16, it also times
the same step under bf16 autocast (what training runs in there) and 16 greedy answers of 48 tokens
(RAFT's sampling runs under the same autocast) in fp32 and in bf16. Session 32 (AMX Xeon): fp32
5.5-7.4 s/step, bf16 3.2-3.6 s/step; 16 x 48 tokens 5.0 s fp32, 3.7-4.0 s bf16.
"""
import contextlib
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

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
    if len(modes) == 1:
        return
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.padding_side = "left"
    chats = [[{"role": "user", "content": f"Tell me about topic number {i}."}] for i in range(16)]
    batch = tokenizer.apply_chat_template(chats, add_generation_prompt=True, return_tensors="pt", padding=True,
                                          return_dict=True)
    for name, ctx in list(modes.items()) * 2:
        t = time.perf_counter()
        with torch.no_grad(), ctx():
            model.generate(**batch, max_new_tokens=48, min_new_tokens=48, do_sample=False)
        print({f"greedy_16x48_s_{name}": round(time.perf_counter() - t, 2)})


if __name__ == "__main__":
    main()
