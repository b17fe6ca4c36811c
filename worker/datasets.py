"""Step 2: snapshot records -> reward-model pairs, pointwise thumbs, PPO and gate prompts.

Rules (each counted in `stats`, so a run says what it dropped and why):
- one vote per (rater, target): the latest wins;
- answers from versions the registry does not know are dropped (stale or forged ids);
- no rater contributes more than `max_rater_share` of the votes (their most recent are kept);
- no account contributes more than `max_key_share` of the votes (issue 12, sybil resistance;
  `None` = off). A vote's account is that of the key that asked for the answers it rates
  (`vote_account`): one key can mint any number of end-user pseudonyms (`user` on its chat
  requests), so the rater cap alone does not bound it, and one customer can hold many keys, so
  the cap is per account (`key:account` in RLHF_API_KEYS, common/identity.py; a key without an
  account is its own). Votes on answers without a principal (open API, older answers) and of
  `exempt_accounts` (the trusted back ends, RLHF_TRUSTED_API_KEYS) are not capped. The cap is
  water-filled: the largest per-account count c such that every capped account's share of the
  votes *kept* is at most the share (most recent votes kept), floored at `min_key_cap`. Without
  exempt votes it is at least 1/(number of accounts), since A < 1/share accounts cannot each stay
  under it: a single ordinary account is not capped at all. Keys and accounts are issued by the
  operator: keys put in different accounts are different actors here (README, "Sybil"). The
  stats keep their key-era names (`keys_capped`, `key_cap`, ...): they count accounts;
- comparisons: a/b -> a pair; tie -> no pair (nothing to learn for Bradley-Terry);
  both_bad -> both answers become pointwise "down" examples;
- thumbs: per answer the majority label; within one prompt every up-answer x down-answer
  becomes an extra pair; thumbs not used in a pair stay pointwise;
- prompts are split by hash into train and held-out (gate) sets, so the gate never scores
  prompts PPO trained on;
- examples that involve an answer voted on in this run's own snapshot (`is_new`) are listed in
  `new_pairs` / `new_rated` as well, so a warm-started RM can train on them plus a replay sample
  instead of the whole history every round.
"""
from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from dataclasses import dataclass, field

from trainer.data import PreferencePair, PromptItem, RatedAnswer, user_text


@dataclass
class TrainingSets:
    pairs: list[PreferencePair] = field(default_factory=list)
    eval_pairs: list[PreferencePair] = field(default_factory=list)
    rated: list[RatedAnswer] = field(default_factory=list)
    train_prompts: list[PromptItem] = field(default_factory=list)
    heldout_prompts: list[PromptItem] = field(default_factory=list)
    stats: Counter = field(default_factory=Counter)
    new_pairs: list[PreferencePair] = field(default_factory=list)   # subset of `pairs`
    new_rated: list[RatedAnswer] = field(default_factory=list)      # subset of `rated`


def _messages(answer: dict) -> list[dict]:
    if answer.get("messages"):
        return answer["messages"]
    # Completion-style answers have a raw prompt; treat it as one user turn.
    return [{"role": "user", "content": answer.get("prompt") or ""}]


def _finished(answer: dict) -> bool:
    """False only for an answer the server cut off at max_tokens (finish_reason "length")."""
    return answer.get("finish_reason") != "length"


def is_heldout(prompt_key: str, fraction: float) -> bool:
    bucket = int(hashlib.sha256(prompt_key.encode()).hexdigest()[:8], 16) % 1000
    return bucket < fraction * 1000


def answer_account(answer: dict, accounts) -> str | None:
    """The account (pseudonym) an answer was asked for. Today's settings first (`accounts`: key
    pseudonym -> account pseudonym), so keys the operator regroups into one account are grouped
    in the whole history, older answers included; then the account the server recorded (a key
    since removed from the settings); then the key itself (its own account); None: no key."""
    principal = answer.get("principal")
    if not principal:
        return None
    return accounts.get(principal) or answer.get("account") or principal


def vote_account(rec: dict, accounts=None) -> str | None:
    """The account a vote is charged to: that of the answers it rates (the first in sorted
    order if two requests of different accounts are compared)."""
    found = sorted({answer_account(a, accounts or {}) for a in rec["answers"].values() if a}
                   - {None})
    return found[0] if found else None


def key_cap(counts: list[int], exempt: int, share: float, floor: int) -> int | None:
    """Largest c such that c <= share * (exempt + sum(min(n, c))): no capped account holds
    more than `share` of what is kept (None: none needs capping). Without exempt votes, share
    is raised to 1/len(counts) (fewer accounts than 1/share cannot all stay under it)."""
    if not counts:
        return None
    if exempt == 0:
        share = max(share, 1.0 / len(counts))
    ok = lambda c: c <= share * (exempt + sum(min(n, c) for n in counts)) + 1e-9  # noqa: E731
    if ok(max(counts)):
        return None
    lo, hi = 0, max(counts)      # ok(lo), not ok(hi); ok holds on an interval [0, c*]
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if ok(mid) else (lo, mid)
    return max(lo, floor)


def _cap_accounts(votes: list[dict], share: float, exempt: set[str], floor: int, st: Counter,
                  accounts) -> list[dict]:
    per_key: dict[str, list[dict]] = defaultdict(list)   # account -> its votes
    n_exempt = 0
    for rec in votes:
        k = vote_account(rec, accounts)
        if k is None or k in exempt:
            n_exempt += 1
        else:
            per_key[k].append(rec)
    for recs in per_key.values():  # the rater cap grouped votes by rater: back to time order
        recs.sort(key=lambda r: (r["event"]["created"], r["stream_id"]))
    cap = key_cap([len(v) for v in per_key.values()], n_exempt, share, floor)
    st["capped_keys_seen"] = len(per_key)
    if cap is None:
        return votes
    st["key_cap"] = cap
    dropped = set()
    for recs in per_key.values():
        if len(recs) > cap:
            st["dropped_key_cap"] += len(recs) - cap
            st["keys_capped"] += 1
            dropped.update(id(r) for r in recs[:-cap])   # keep each account's most recent votes
    return [r for r in votes if id(r) not in dropped]


def key_cap_args(settings) -> dict:
    """build_training_sets arguments of the per-account cap from the deployment's settings:
    RLHF_MAX_KEY_SHARE (>= 1 = off), the accounts of RLHF_TRUSTED_API_KEYS (exempt) and the
    key -> account map of both key lists (the worker needs the same keys and HMAC key as the
    servers to recognise them; answers also record their account, for keys since removed)."""
    from common.identity import accounts_by_principal, trusted_accounts
    share = settings.max_key_share
    return {"max_key_share": share if share < 1 else None,
            "exempt_accounts": trusted_accounts(settings),
            "accounts": dict(accounts_by_principal(settings)),
            "min_key_cap": settings.min_key_cap}


def build_training_sets(records: list[dict], known_versions: set[str],
                        max_rater_share: float = 0.25, heldout_fraction: float = 0.2,
                        min_rater_cap: int = 10, is_new=None, max_key_share: float | None = None,
                        exempt_accounts=frozenset(), min_key_cap: int = 10,
                        accounts=None) -> TrainingSets:
    """`is_new(record) -> bool` marks this run's own feedback (default: none is new).
    `max_key_share`/`exempt_accounts`/`accounts`: the per-account cap (module docstring;
    `key_cap_args(settings)`)."""
    out = TrainingSets()
    st = out.stats
    # 1. latest vote per (rater, target) wins; stream ids order events within Redis
    latest: dict[tuple[str, str], dict] = {}
    for rec in sorted(records, key=lambda r: (r["event"]["created"], r["stream_id"])):
        ev = rec["event"]
        key = (ev["rater"], ev["target"])
        if key in latest:
            st["superseded_votes"] += 1
        latest[key] = rec
    votes = list(latest.values())

    # 2. drop votes whose answers are gone or come from unknown versions
    kept = []
    for rec in votes:
        answers = rec["answers"]
        if any(a is None for a in answers.values()):
            st["dropped_missing_answer"] += 1
        elif any(a["model_version"] not in known_versions for a in answers.values()):
            st["dropped_unknown_version"] += 1
        else:
            kept.append(rec)

    # 3. cap each rater's share, keeping their most recent votes
    cap = max(min_rater_cap, int(max_rater_share * len(kept)))
    per_rater: dict[str, list[dict]] = defaultdict(list)
    for rec in kept:
        per_rater[rec["event"]["rater"]].append(rec)
    capped = []
    for rater, recs in per_rater.items():
        if len(recs) > cap:
            st["dropped_rater_cap"] += len(recs) - cap
        capped += recs[-cap:]
    if max_key_share is not None:
        capped = _cap_accounts(capped, max_key_share, set(exempt_accounts), min_key_cap, st,
                               accounts or {})
    st["votes_used"] = len(capped)

    # 4. turn votes into examples
    pairs: list[tuple[str, PreferencePair, bool]] = []
    thumbs: dict[str, Counter] = defaultdict(Counter)   # response_id -> up/down counts
    answer_by_id: dict[str, dict] = {}
    new_ids: set[str] = set()  # answers voted on by this run's own feedback
    for rec in capped:
        ev = rec["event"]
        answer_by_id.update(rec["answers"])
        rec_new = is_new is not None and is_new(rec)
        if rec_new:
            new_ids.update(rec["answers"])
        if ev["kind"] == "thumb":
            thumbs[ev["response_id"]][ev["rating"]] += 1
            continue
        a, b = (rec["answers"][r] for r in ev["response_ids"])
        if ev["choice"] in ("a", "b"):
            chosen, rejected = (a, b) if ev["choice"] == "a" else (b, a)
            pairs.append((a["prompt_key"], PreferencePair(_messages(a), chosen["text"], rejected["text"],
                                                          chosen_finished=_finished(chosen),
                                                          rejected_finished=_finished(rejected)), rec_new))
        elif ev["choice"] == "tie":
            st["ties_skipped"] += 1
        else:  # both_bad
            thumbs[a["response_id"]]["down"] += 1
            thumbs[b["response_id"]]["down"] += 1
            st["both_bad"] += 1

    by_prompt: dict[str, dict[str, list[dict]]] = defaultdict(lambda: {"up": [], "down": []})
    for rid, counts in thumbs.items():
        if counts["up"] == counts["down"]:
            st["thumbs_split_dropped"] += 1
            continue
        label = "up" if counts["up"] > counts["down"] else "down"
        ans = answer_by_id[rid]
        by_prompt[ans["prompt_key"]][label].append(ans)
    for pkey, groups in by_prompt.items():
        ups, downs = groups["up"], groups["down"]
        for u in ups:
            for d in downs:
                pairs.append((pkey, PreferencePair(_messages(u), u["text"], d["text"], chosen_finished=_finished(u),
                                                   rejected_finished=_finished(d)),
                              u["response_id"] in new_ids or d["response_id"] in new_ids))
                st["pairs_from_thumbs"] += 1
        if not (ups and downs):
            for ans, label in [(x, "up") for x in ups] + [(x, "down") for x in downs]:
                out.rated.append(RatedAnswer(_messages(ans), ans["text"], label, finished=_finished(ans)))
                if ans["response_id"] in new_ids:
                    out.new_rated.append(out.rated[-1])

    # 5. dedupe identical pairs, split train / held-out by prompt
    seen = set()
    for pkey, pair, new in pairs:
        sig = (pkey, pair.chosen, pair.rejected)
        if sig in seen or pair.chosen == pair.rejected:
            st["pairs_deduped"] += 1
            continue
        seen.add(sig)
        if is_heldout(pkey, heldout_fraction):
            out.eval_pairs.append(pair)
        else:
            out.pairs.append(pair)
            if new:
                out.new_pairs.append(pair)

    prompts = {}
    for ans in answer_by_id.values():
        if ans is not None:
            prompts.setdefault(ans["prompt_key"], _messages(ans))
    for pkey, msgs in sorted(prompts.items()):
        target = out.heldout_prompts if is_heldout(pkey, heldout_fraction) else out.train_prompts
        target.append(PromptItem(msgs))
    st.update(pairs=len(out.pairs), eval_pairs=len(out.eval_pairs), rated=len(out.rated),
              new_pairs=len(out.new_pairs), new_rated=len(out.new_rated),
              train_prompts=len(out.train_prompts), heldout_prompts=len(out.heldout_prompts))
    return out


def hold_out_texts(sets: TrainingSets, texts: set[str]) -> int:
    """Hold out everything asked with one of `texts` (the operator's gate set, by last user
    message): its prompts join the held-out prompts, its pairs the held-out pairs, its thumbs
    are dropped, so the gate never judges on trained prompts. Returns how many examples moved."""
    if not texts:
        return 0

    def held(x) -> bool:
        return user_text(x.messages) in texts
    prompts, pairs = [x for x in sets.train_prompts if held(x)], [x for x in sets.pairs if held(x)]
    rated = sum(map(held, sets.rated))
    sets.heldout_prompts += prompts
    sets.eval_pairs += pairs
    for name in ("train_prompts", "pairs", "new_pairs", "rated", "new_rated"):
        setattr(sets, name, [x for x in getattr(sets, name) if not held(x)])
    moved = len(prompts) + len(pairs) + rated
    counts = dict(held_out_for_gate_set=moved, pairs=len(sets.pairs), eval_pairs=len(sets.eval_pairs),
                  rated=len(sets.rated), train_prompts=len(sets.train_prompts),
                  heldout_prompts=len(sets.heldout_prompts))
    for k, v in counts.items():   # set, not Counter.update (which adds)
        sets.stats[k] = v
    return moved
