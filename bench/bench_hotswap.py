"""Hot-swap under load: time from deploy (registry CURRENT + pub/sub) to the first answer
produced by the new version, to the first streamed token of the new version, and to the swap
being done (the replica's /health serves it); the swap's own phases (prepared, drained, reloaded,
paused); failed requests during the swap, and the latency bump.

    .venv/bin/python bench/bench_hotswap.py                 # SmolLM2-135M-Instruct
    .venv/bin/python bench/bench_hotswap.py --model tiny    # tiny random Llama (fast)

v1 is the base model with slightly perturbed weights (same shapes), published through the
registry like a pipeline would. The bench swaps v0 -> v1 -> v0 ... `--swaps` times while
`--clients` threads send chat requests non-stop, and records every request.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import machine_facts, percentile, private_redis, write_result  # noqa: E402


def perturbed_copy(src: Path, dst: Path, scale: float = 0.02) -> Path:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(src, torch_dtype=torch.float32)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "layers." in name and p.dim() == 2:
                p.add_(torch.randn(p.shape, generator=g) * scale * p.std())
    model.save_pretrained(dst, safe_serialization=True)
    AutoTokenizer.from_pretrained(src).save_pretrained(dst)
    return dst


def swap_done(url: str, target: str, t_deploy: float, timeout_s: float = 120.0) -> dict:
    """Poll the replica's /health every 10 ms until it serves `target`: deploy -> swap done (the new
    weights answer every request admitted from then on), and the replica's own account of the swap
    (weight load + probe, and how long it waited for in-flight requests to drain). The first-answer
    figure adds the length of one request under load on top of this."""
    import httpx

    with httpx.Client(timeout=5.0) as client:
        while time.perf_counter() - t_deploy < timeout_s:
            try:
                state = client.get(f"{url}/health").json()
            except (httpx.HTTPError, ValueError):
                state = {}
            if state.get("version") == target and state.get("status") == "serving":
                last = state.get("last_swap") or {}
                return {"deploy_to_swap_done_s": round(time.perf_counter() - t_deploy, 3),
                        "swap_s": last.get("seconds"), "prepared_s": last.get("prepared_s"),
                        "drained_s": last.get("drained_s"), "digests_ready_s": last.get("digests_ready_s"),
                        "reloaded_s": last.get("reloaded_s"),
                        "paused_s": last.get("paused_s")}
            time.sleep(0.01)
    return {"deploy_to_swap_done_s": None, "swap_s": None, "prepared_s": None, "drained_s": None,
            "digests_ready_s": None, "reloaded_s": None, "paused_s": None}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2", help="'smollm2', 'tiny' or a model folder")
    ap.add_argument("--swaps", type=int, default=4)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--stream-clients", type=int, default=2, help="more clients that stream (SSE)")
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--settle", type=float, default=8.0, help="seconds of load between swaps")
    args = ap.parse_args()

    from common import ops
    from common.registry import ModelRegistry
    from common.settings import Settings
    from tests.helpers.load import ChatLoad
    from tests.helpers.server import running_server

    work = Path(tempfile.mkdtemp(prefix="bench-hotswap-"))
    data = work / "data"
    if args.model == "tiny":
        from common.tiny_model import build_tiny_model
        base = build_tiny_model(work / "tiny")
    elif args.model == "smollm2":
        from common.smollm2 import ensure_smollm2
        base = ensure_smollm2(Settings().data_dir)
    else:
        base = Path(args.model)
    variant = perturbed_copy(base, work / "variant")

    with private_redis() as redis_url:
        env = {**os.environ, "RLHF_REDIS_URL": redis_url, "RLHF_DATA_DIR": str(data),
               "VLLM_CPU_KVCACHE_SPACE": "2", "RLHF_MAX_MODEL_LEN": "1024"}
        settings = Settings(redis_url=redis_url, data_dir=data)
        with running_server(env, model_dir=base, startup_timeout_s=900) as srv:
            reg = ModelRegistry(settings.models_dir)
            t = time.perf_counter()
            v1 = reg.publish(variant, {"parent": "v0", "note": "bench variant"})
            publish_s = time.perf_counter() - t
            swaps = []
            with ChatLoad(srv.url, args.clients, args.max_tokens, temperature=0,
                          stream_clients=args.stream_clients) as load:
                time.sleep(args.settle)
                for i in range(args.swaps):
                    target = v1 if i % 2 == 0 else "v0"
                    t_deploy = time.perf_counter()
                    ops.deploy(settings, target, actor="bench")
                    done = swap_done(srv.url, target, t_deploy)
                    while not any(v == target and s >= t_deploy for s, _, v, _ in load.records):
                        # first answer *started* after the deploy and produced by the new version
                        if time.perf_counter() - t_deploy > 120:
                            break
                        time.sleep(0.01)
                    first = min((e for s, e, v, _ in load.records if v == target and s >= t_deploy), default=None)
                    # the first token of the new version that reached a streaming client (the stream
                    # started after the deploy and was generated by the new version alone)
                    token = min((f for s, f, v in load.first_tokens if v == target and s >= t_deploy), default=None)
                    swaps.append({"to": target, "t_deploy": t_deploy, "t_first": first,
                                  "deploy_to_first_answer_s":
                                  None if first is None else round(first - t_deploy, 3),
                                  "deploy_to_first_token_s":
                                  None if token is None else round(token - t_deploy, 3), **done})
                    time.sleep(args.settle)
            recs = load.records
    import shutil
    shutil.rmtree(work, ignore_errors=True)
    # A request is "during a swap" if it overlaps [deploy, first answer of the new version].
    windows = [(w["t_deploy"], w["t_first"] or w["t_deploy"]) for w in swaps]
    during = [e - s for s, e, _, st in recs if st == 200 and any(s <= b and e >= a for a, b in windows)]
    outside = [e - s for s, e, _, st in recs if st == 200 and not any(s <= b and e >= a for a, b in windows)]
    lat_all = [e - s for s, e, _, st in recs if st == 200]
    for w in swaps:
        w.pop("t_deploy"), w.pop("t_first")
    failures = [r for r in recs if r[3] != 200]
    ttfa = [s["deploy_to_first_answer_s"] for s in swaps if s["deploy_to_first_answer_s"] is not None]
    swapped = [s["deploy_to_swap_done_s"] for s in swaps if s["deploy_to_swap_done_s"] is not None]
    tokens = [s["deploy_to_first_token_s"] for s in swaps if s["deploy_to_first_token_s"] is not None]
    result = {
        "name": "hotswap", "command": " ".join(["python"] + sys.argv), "machine": machine_facts(),
        "model": str(base), "clients": args.clients, "stream_clients": args.stream_clients, "max_tokens": args.max_tokens,
        "publish_copy_s": round(publish_s, 3), "swaps": swaps,
        "deploy_to_first_answer_s": {"mean": round(sum(ttfa) / len(ttfa), 3) if ttfa else None,
                                     "max": max(ttfa) if ttfa else None},
        "deploy_to_first_token_s": {"mean": round(sum(tokens) / len(tokens), 3) if tokens else None,
                                    "max": max(tokens) if tokens else None},
        "deploy_to_swap_done_s": {"mean": round(sum(swapped) / len(swapped), 3) if swapped else None,
                                  "max": max(swapped) if swapped else None},
        "requests": len(recs), "failed_requests": len(failures),
        "latency_p99_ms_outside_swaps": round(1000 * percentile(outside, 99), 1),
        "latency_p99_ms_during_swaps": round(1000 * percentile(during, 99), 1) if during else None,
        "p99_bump_during_swap": (round(percentile(during, 99) / percentile(outside, 99), 3)
                                 if during and outside else None),
        "latency_ms": {"p50": round(1000 * percentile(lat_all, 50), 1),
                       "p99": round(1000 * percentile(lat_all, 99), 1),
                       "max": round(1000 * max(lat_all), 1) if lat_all else None},
        "first_token_ms_outside_swaps_p50": round(1000 * percentile(
            [f - s for s, f, _ in load.first_tokens
             if not any(s <= b and f >= a for a, b in windows)], 50), 1) if load.first_tokens else None,
        "target": "deploy -> first answer from the new version < 1 s, p99 bump during swaps <= 1.5x, "
                  "0 failed requests (issue 13)",
    }
    print(write_result(f"hotswap-{'tiny' if args.model == 'tiny' else 'smollm2'}", result))
    print({k: result[k] for k in ("deploy_to_first_answer_s", "deploy_to_first_token_s", "deploy_to_swap_done_s",
                                  "requests", "failed_requests", "latency_ms")})


if __name__ == "__main__":
    main()
