"""The launcher's stop path: signals become a stop request at a known point; stop_all is bounded and complete."""

import os
import signal
import subprocess
import sys
import time

import pytest

from asyncor.launcher.processes import Child, stop_all
from asyncor.launcher.stop_signals import Interrupted, StopSignals


@pytest.fixture
def saved_handlers():
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_a_signal_is_recorded_and_raised_at_check(saved_handlers, sig, code):
    signal.signal(sig, signal.SIG_DFL)  # as in a terminal (pytest itself may run under nohup)
    with StopSignals() as stop:
        stop.check()  # nothing yet
        os.kill(os.getpid(), sig)
        time.sleep(0.01)  # the handler runs in this (main) thread, between bytecodes
        with pytest.raises(Interrupted) as caught:
            stop.check()
    assert caught.value.exit_code == code and caught.value.name == signal.Signals(sig).name


def test_the_first_signal_wins_and_handlers_come_back(saved_handlers):
    before = signal.getsignal(signal.SIGTERM)
    with StopSignals() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGINT)  # a second Ctrl-C during the shutdown changes nothing
        time.sleep(0.01)
        with pytest.raises(Interrupted) as caught:
            stop.check()
    assert caught.value.signum == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) == before


def test_inherited_sigint_ignore_is_overridden_but_nohup_is_respected(saved_handlers):
    """A background job of a non-interactive shell starts with SIGINT ignored (issue 10); `nohup` ignores SIGHUP."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    with StopSignals() as stop:
        assert signal.getsignal(signal.SIGHUP) == signal.SIG_IGN
        os.kill(os.getpid(), signal.SIGHUP)
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.01)
        with pytest.raises(Interrupted) as caught:
            stop.check()
    assert caught.value.signum == signal.SIGINT
    assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN


def _child(tmp_path, name, code):
    proc = subprocess.Popen([sys.executable, "-c", code], start_new_session=True, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"  # handlers installed, grandchild started
    return Child(name, proc, str(tmp_path / f"{name}.out"))


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


STUBBORN = """
import signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
grandchild = subprocess.Popen([sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"])
print("ready", flush=True)
print(grandchild.pid, flush=True)
time.sleep(600)
"""

POLITE = """
import subprocess, sys, time
grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
print("ready", flush=True)
print(grandchild.pid, flush=True)
time.sleep(600)
"""


def test_stop_all_kills_stubborn_roles_and_their_children_within_its_bound(tmp_path):
    stubborn = _child(tmp_path, "stubborn", STUBBORN)
    polite = _child(tmp_path, "polite", POLITE)
    grandchildren = [int(c.proc.stdout.readline()) for c in (stubborn, polite)]
    start = time.monotonic()
    stuck = stop_all([stubborn, polite], grace_s=1.0, reap_s=2.0)
    took = time.monotonic() - start
    assert stuck == [] and took < 3.0, took
    assert stubborn.returncode == -signal.SIGKILL and polite.returncode == -signal.SIGTERM
    time.sleep(0.2)  # the grandchildren are reparented to init, which reaps them
    assert not any(_alive(pid) for pid in grandchildren)


def test_stop_all_does_not_wait_the_grace_when_roles_exit(tmp_path):
    polite = _child(tmp_path, "polite", POLITE)
    start = time.monotonic()
    assert stop_all([polite], grace_s=5.0, reap_s=5.0) == []
    assert time.monotonic() - start < 1.5
