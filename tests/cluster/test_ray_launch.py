"""launch.py on a real two-node Ray cluster (two raylets on this host, started by the fixture): the roles
are placed on both nodes with a placement group, train the tiny config to the end with the same summary
as a local run, and a role dying on either node is reported with its node before everything stops; the
roles' node-local output files never outlive them."""

import glob
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

import pytest

from asyncor.launcher.ray_cluster import READ_CHUNK, RoleProcess
from tests.cluster.ray_cluster import ray_available, ray_cluster
from tests.cluster.test_slurm_launch import STEPS, overrides
from tests.integration.test_pipeline import check_common, children_of, cmdline

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def ray_address():
    reason = ray_available()
    if reason:
        pytest.skip(f"Ray cannot run here: {reason}")
    with ray_cluster(nodes=2) as address:
        yield address


def launch(ray_address, tmp_path, name, *extra):
    return [sys.executable, "launch.py", "run", "--cluster", "ray", "--address", ray_address,
            *overrides(tmp_path, name, *extra)]


def role_outputs() -> set[str]:
    """The roles' node-local output files (RoleProcess) under this host's temp directory (both nodes' too)."""
    return set(glob.glob(os.path.join(tempfile.gettempdir(), "asyncor-*.out")))


def test_roles_run_on_two_ray_nodes_and_train_to_the_end(ray_address, tmp_path):
    started = time.monotonic()
    outputs_before = role_outputs()
    proc = subprocess.run(launch(ray_address, tmp_path, "ray"), cwd=ROOT, capture_output=True, text=True, timeout=540)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert role_outputs() <= outputs_before  # nothing left on the nodes (issue 26, item 12)
    run_dir = os.path.join(tmp_path, "ray")
    summary, _ = check_common(run_dir, eta=1, steps=STEPS)
    assert summary["cluster"]["kind"] == "ray" and summary["cluster"]["nodes"] == 2
    assert {"before", "after"} <= set(summary["eval"])
    by_node = list(summary["cluster"]["roles_by_node"].values())
    assert sorted(by_node) == [["actor0"], ["buffer", "learner0"]]  # CPU nodes: actors off the learner's node
    with open(os.path.join(run_dir, "plan.json")) as f:
        plan = json.load(f)
    assert plan["cluster"] == "ray" and len(set(plan["node_labels"])) == 2
    with open(os.path.join(run_dir, "logs", "actor0.out")) as f:
        assert '"event": "exit"' in f.read()  # gathered from the node through the role's Ray actor
    assert "| 1 | 0 | actor 0 |" in proc.stdout  # the plan table
    # The roles bind the nodes' non-loopback address: net.auth "auto" turned CURVE on for every ZeroMQ socket.
    with open(os.path.join(run_dir, "config.json")) as f:
        assert json.load(f)["net"]["auth"] == "curve"
    assert os.path.exists(os.path.join(run_dir, "keys", "actor0.key"))  # a key pair per role (public on disk)
    print(f"ray: launch to summary {time.monotonic() - started:.0f} s; {json.dumps(summary['eval'])}")


def test_a_role_dying_on_the_other_node_is_reported_with_its_node_and_everything_stops(ray_address, tmp_path):
    proc = subprocess.Popen(launch(ray_address, tmp_path, "dies", "learner.steps=1000", "eval.before_and_after=false",
                                   "actors.max_restarts=0"),
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    run_dir = os.path.join(tmp_path, "dies")
    metrics = os.path.join(run_dir, "metrics.jsonl")
    deadline = time.monotonic() + 240
    while not (os.path.exists(metrics) and '"role": "learner"' in open(metrics).read()):
        assert time.monotonic() < deadline and proc.poll() is None, "the learner never trained a step"
        time.sleep(1)
    actor = next(pid for pid in children_of(run_dir) if "-m asyncor.actors " in cmdline(pid))
    os.kill(actor, signal.SIGKILL)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, out[-2000:] + err[-2000:]
    assert "role 'actor0' on ray node" in err and "exited with code -9" in err
    deadline = time.monotonic() + 15
    while children_of(run_dir) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not children_of(run_dir), "roles left running after the failure"


def test_a_roles_output_on_its_node_has_no_name_there_and_still_comes_back_whole(tmp_path, monkeypatch):
    """Issue 26 (item 12, Ray part): the node-local file a role's output goes to (launcher/ray_cluster.py
    RoleProcess, here without Ray: the class the Ray actor runs) is unlinked from the start, so it cannot
    outlive the run on the node however the run ends; `status` still returns every byte, over several reads."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    size = READ_CHUNK + 12345
    code = f"import sys; sys.stdout.write('x' * {size}); print('done')"
    role = RoleProcess("actor0", [sys.executable, "-c", code], dict(os.environ), str(tmp_path))
    try:
        assert os.listdir(tmp_path) == []
        assert role.proc.wait(timeout=60) == 0
        got, code = b"", None
        while code is None:
            status, data = role.status(len(got))
            got += data
            if status is not None and len(data) < READ_CHUNK:
                code = status
        assert code == 0 and got == b"x" * size + b"done\n"
        assert os.listdir(tmp_path) == []
    finally:
        role.close()
