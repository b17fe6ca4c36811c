"""RLHF_API_KEYS / RLHF_TRUSTED_API_KEYS entries: `key` or `key:account` (common/identity.py)."""
from __future__ import annotations

import pytest
from pydantic import ValidationError

from common.identity import (KeyEntry, account_pseudonym, accounts_by_principal, check_key_lists,
                             key_account, key_pseudonym, parse_keys, trusted_accounts)
from common.settings import Settings


def test_entries_with_and_without_accounts():
    assert parse_keys("") == []
    assert parse_keys(" a , b:acme,c: acme ,") == [("a", None), ("b", "acme"), ("c", "acme")]
    # the account follows the last ':', so a key containing ':' is written with its account
    assert parse_keys("user:pass:acme") == [("user:pass", "acme")]


@pytest.mark.parametrize("value, message", [
    ("a,:acme", "RLHF_API_KEYS: entry 2 has an empty key before ':'"),
    ("a,b: ", "RLHF_API_KEYS: entry 2 has an empty account after ':'"),
    ("s3cret,b,s3cret:acme", "RLHF_API_KEYS: entries 1 and 3 are the same key"),
])
def test_malformed_entries_name_the_entry_never_the_key(value, message):
    with pytest.raises(ValueError) as exc:
        parse_keys(value)
    assert str(exc.value).startswith(message)
    assert "s3cret" not in str(exc.value)


def test_the_two_lists_agree_on_accounts_and_trust():
    table = check_key_lists("a,b:acme,t:shop", "t:shop,u")
    assert dict(table) == {"a": KeyEntry(None, False), "b": KeyEntry("acme", False),
                           "t": KeyEntry("shop", True), "u": KeyEntry(None, True)}
    with pytest.raises(ValueError, match="entry 1 is also in RLHF_TRUSTED_API_KEYS with a "
                                         "different account"):
        check_key_lists("t:acme", "t:shop")
    # an ordinary key in a trusted account would be an uncapped key
    with pytest.raises(ValueError, match="account 'shop' has keys in RLHF_TRUSTED_API_KEYS"):
        check_key_lists("a:shop", "t:shop")


def test_settings_refuse_a_malformed_list_without_echoing_it(tmp_path):
    with pytest.raises(ValidationError) as exc:
        Settings(data_dir=tmp_path, api_keys="k1,k1-secret:")
    assert "entry 2 has an empty account" in str(exc.value)
    assert "k1-secret" not in str(exc.value)
    with pytest.raises(ValidationError, match="RLHF_TRUSTED_API_KEYS: entry 1 has an empty key"):
        Settings(data_dir=tmp_path, trusted_api_keys=":x")


def test_accounts_and_their_pseudonyms(tmp_path):
    s = Settings(data_dir=tmp_path, user_hmac_key="h", api_keys="a,b:acme,c:acme",
                 trusted_api_keys="t:shop")
    assert s.api_key_list == ["a", "b", "c"]
    acme = account_pseudonym("acme", s)
    assert acme.startswith("a_") and len(acme) == 18 and "acme" not in acme
    # a key without an account is its own account: the same id as before accounts existed
    assert key_account("a", s) == key_pseudonym("a", s)
    assert key_account("b", s) == key_account("c", s) == acme
    assert account_pseudonym("a", s) != key_pseudonym("a", s)   # no key/account collision
    assert dict(accounts_by_principal(s)) == {
        key_pseudonym("a", s): key_pseudonym("a", s), key_pseudonym("b", s): acme,
        key_pseudonym("c", s): acme, key_pseudonym("t", s): account_pseudonym("shop", s)}
    assert trusted_accounts(s) == {account_pseudonym("shop", s)}
