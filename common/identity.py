"""API keys, the accounts they belong to, their pseudonyms and the deployment's derived HMAC
sub-keys: shared by the servers (who is calling, who may rate what, whose quota) and the workers
(capping each account's share of the training votes), so both compute the same principal and
account from the same settings.

Keys are issued by the operator, who knows which keys one customer holds: an entry of
RLHF_API_KEYS / RLHF_TRUSTED_API_KEYS is ``key`` or ``key:account`` (comma-separated). A key
without an account is its own account, so a deployment that names none behaves as before.
Every reader of those two settings goes through `parse_keys` / `key_table` here.
"""
from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from functools import lru_cache
from types import MappingProxyType


def sub_key(settings, purpose: str) -> bytes:
    """A key derived from the deployment's HMAC key for one purpose (pseudonyms of keys,
    feedback tokens), so one use can never be replayed as another."""
    return hmac.new(settings._hmac_key_bytes, b"rlhf-live/" + purpose.encode(),
                    hashlib.sha256).digest()


def key_pseudonym(key: str, settings) -> str:
    # Not the key itself: principals end up in the training data and in logs. Keyed, so a
    # leaked pseudonym cannot be checked against guessed keys offline.
    digest = hmac.new(sub_key(settings, "api-key-pseudonym"), key.encode(),
                      hashlib.sha256).hexdigest()
    return "k_" + digest[:16]


def account_pseudonym(account: str, settings) -> str:
    # Own sub-key and prefix: an account named like a key never collides with that key's
    # pseudonym, and account names (customer names) stay out of the training data.
    digest = hmac.new(sub_key(settings, "api-account-pseudonym"), account.encode(),
                      hashlib.sha256).hexdigest()
    return "a_" + digest[:16]


def parse_keys(value: str, setting: str = "RLHF_API_KEYS") -> list[tuple[str, str | None]]:
    """(key, account or None) of each ``key`` / ``key:account`` entry, in order.

    The account follows the *last* ':' (a key containing ':' is written with its account).
    Blank entries (a trailing comma) are skipped, as they always were. An empty key, an empty
    account after ':' or a key listed twice raise ValueError; the entry is named by its
    position, never by its text (a key is a secret and the message ends up in logs)."""
    out: list[tuple[str, str | None]] = []
    seen: dict[str, int] = {}
    for pos, raw in enumerate(value.split(","), 1):
        entry = raw.strip()
        if not entry:
            continue
        key, sep, account = entry.rpartition(":")
        if not sep:
            key, account = entry, ""
        key, account = key.strip(), account.strip()
        if not key:
            raise ValueError(f"{setting}: entry {pos} has an empty key before ':' "
                             "(entries are 'key' or 'key:account', comma-separated)")
        if sep and not account:
            raise ValueError(f"{setting}: entry {pos} has an empty account after ':' "
                             "(write 'key:account', or just 'key' for a key that is its own "
                             "account)")
        if key in seen:
            raise ValueError(f"{setting}: entries {seen[key]} and {pos} are the same key")
        seen[key] = pos
        out.append((key, account or None))
    return out


@dataclass(frozen=True)
class KeyEntry:
    account: str | None
    """The account named for the key (None: the key is its own account)."""
    trusted: bool
    """Listed in RLHF_TRUSTED_API_KEYS (may also be in RLHF_API_KEYS)."""


@lru_cache(maxsize=16)
def check_key_lists(api_keys: str, trusted_api_keys: str) -> MappingProxyType:
    """Every configured key -> its KeyEntry; ValueError for a malformed list or two lists that
    disagree. A key may be in both lists (it is then trusted) but must name the same account
    in both. An account's keys are all trusted or none: trusted accounts are exempt from the
    training-data cap, so one ordinary key in a trusted account would be an uncapped key."""
    ordinary = parse_keys(api_keys, "RLHF_API_KEYS")
    trusted = parse_keys(trusted_api_keys, "RLHF_TRUSTED_API_KEYS")
    table = {k: KeyEntry(a, True) for k, a in trusted}
    for pos, (k, a) in enumerate(ordinary, 1):
        if k in table and table[k].account != a:
            raise ValueError(f"RLHF_API_KEYS: entry {pos} is also in RLHF_TRUSTED_API_KEYS "
                             "with a different account (a key belongs to one account)")
        table.setdefault(k, KeyEntry(a, False))
    trust: dict[str, set[bool]] = {}
    for e in table.values():
        if e.account is not None:
            trust.setdefault(e.account, set()).add(e.trusted)
    mixed = sorted(a for a, t in trust.items() if len(t) > 1)
    if mixed:
        raise ValueError(f"account {mixed[0]!r} has keys in RLHF_TRUSTED_API_KEYS and keys "
                         "only in RLHF_API_KEYS: an account's keys are all trusted or none "
                         "(trusted accounts are exempt from RLHF_MAX_KEY_SHARE)")
    return MappingProxyType(table)  # cached: read-only


def key_table(settings) -> MappingProxyType:
    """Every key of RLHF_API_KEYS and RLHF_TRUSTED_API_KEYS -> its account and trust."""
    return check_key_lists(settings.api_keys, settings.trusted_api_keys)


def key_account(key: str, settings) -> str:
    """The account pseudonym of a key: its named account's, else the key's own pseudonym (a
    key without an account is its own account: the same id as before accounts existed)."""
    return _account_id(key, key_table(settings).get(key), settings)


def _account_id(key: str, entry: KeyEntry | None, settings) -> str:
    if entry is None or entry.account is None:
        return key_pseudonym(key, settings)
    return account_pseudonym(entry.account, settings)


def accounts_by_principal(settings) -> MappingProxyType:
    """Key pseudonym -> account pseudonym of every configured key (a key without an account
    maps to itself): a stored principal's account under *today's* settings, so records from
    before accounts, and keys the operator regrouped later, follow the current grouping."""
    return _accounts(settings.api_keys, settings.trusted_api_keys, settings._hmac_key_bytes)


@lru_cache(maxsize=16)
def _accounts(api_keys: str, trusted_api_keys: str, hmac_key: bytes) -> MappingProxyType:
    # cached on the settings' values (not the object): the feedback route asks per request
    return MappingProxyType({principal: account for principal, account, _ in
                             key_identities(api_keys, trusted_api_keys, hmac_key).values()})


@lru_cache(maxsize=16)
def key_identities(api_keys: str, trusted_api_keys: str, hmac_key: bytes) -> MappingProxyType:
    """Every configured key -> (its pseudonym, its account's pseudonym, trusted), computed once
    per key configuration (cached on the settings' values, not the object)."""
    s = _HmacOnly(hmac_key)
    return MappingProxyType({k: (key_pseudonym(k, s), _account_id(k, e, s), e.trusted)
                             for k, e in check_key_lists(api_keys, trusted_api_keys).items()})


def trusted_accounts(settings) -> frozenset[str]:
    """Account pseudonyms of the trusted keys (exempt from the training-data cap)."""
    return frozenset(key_account(k, settings) for k, e in key_table(settings).items()
                     if e.trusted)


@dataclass(frozen=True)
class _HmacOnly:
    """What the pseudonym functions read of a Settings (for the cache above)."""
    _hmac_key_bytes: bytes
