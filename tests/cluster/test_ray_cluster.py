"""The local multi-node Ray cluster used by the launcher's Ray tests."""

import json
import os
import subprocess
import sys

import pytest

from tests.cluster.ray_cluster import ray_available, ray_cluster

_REASON = ray_available()

# Runs in a separate interpreter, as the launcher would: connect by address,
# see both nodes, and spread a two-bundle placement group over them.
_CHECK = r"""
import json, sys
import ray
from ray.util.placement_group import placement_group, placement_group_table, remove_placement_group
ray.init(address=sys.argv[1], logging_level="ERROR", log_to_driver=False)
alive = [n for n in ray.nodes() if n["Alive"]]
pg = placement_group([{"CPU": 0.01}] * 2, strategy="STRICT_SPREAD")
ready = pg.wait(timeout_seconds=60)
bundles = placement_group_table(pg)["bundles_to_node_id"]
remove_placement_group(pg)
print(json.dumps({
    "alive": [{"id": n["NodeID"], "ip": n["NodeManagerAddress"], "cpu": n["Resources"].get("CPU")}
              for n in alive],
    "pg_ready": ready,
    "bundle_nodes": [bundles[i] for i in sorted(bundles)],
}))
ray.shutdown()
"""


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if text in cmd:
                found.append(f"{entry} {cmd[:200]}")
    return found


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.skipif(_REASON is not None, reason=_REASON or "")
def test_two_node_cluster_reachable_from_another_process():
    with ray_cluster(nodes=2) as address:
        host, port = address.rsplit(":", 1)
        assert host and int(port) > 0
        res = subprocess.run(
            [sys.executable, "-c", _CHECK, address],
            capture_output=True,
            text=True,
            timeout=180,
            env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"},
        )
        assert res.returncode == 0, res.stderr[-4000:]
        info = json.loads(res.stdout.strip().splitlines()[-1])
        assert len(info["alive"]) == 2, info
        ids = {n["id"] for n in info["alive"]}
        assert len(ids) == 2, info
        assert all(n["cpu"] == 1 for n in info["alive"]), info
        assert info["pg_ready"], info
        assert len(set(info["bundle_nodes"])) == 2 and set(info["bundle_nodes"]) == ids, info
        # Raylets and Ray's Python services name the GCS address on their command lines.
        assert _processes_mentioning(address), "cluster processes not found while it runs"
    assert _processes_mentioning(address) == []
