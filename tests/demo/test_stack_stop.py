"""`stop_process_group`: nothing of the group runs once it returns, even when the leader exits
on SIGTERM before its children (the uvicorn supervisor and its workers; CI of stop 27 saw a
worker still running right after the stop)."""
import subprocess
import sys
import time

from demo.stack import group_pids, stop_process_group

# the leader exits at once on SIGTERM; its child ignores SIGTERM for a while, then exits
LEADER = """
import signal, subprocess, sys, time
subprocess.Popen([sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(%s)"])
time.sleep(60)
"""


def _start(child_s: float) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", LEADER % child_s], start_new_session=True)
    deadline = time.monotonic() + 10
    while len(group_pids(proc.pid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(group_pids(proc.pid)) == 2
    return proc


def test_a_child_that_outlives_its_leader_is_waited_for_within_the_grace():
    proc = _start(child_s=0.5)   # exits by itself, 0.5 s into its life: inside the grace
    stop_process_group(proc, grace_s=10)
    assert group_pids(proc.pid) == [] and proc.returncode is not None


def test_a_child_that_ignores_sigterm_is_killed_and_gone_on_return():
    proc = _start(child_s=60)
    t0 = time.monotonic()
    stop_process_group(proc, grace_s=0.5)
    assert group_pids(proc.pid) == []
    assert time.monotonic() - t0 < 8   # grace, then SIGKILL, not the child's 60 s
