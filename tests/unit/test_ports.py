"""launcher/ports.py: picked ports are free and never in the kernel's ephemeral range, where a process started
between the pick and the bind (srun's I/O listeners, any bind(0)) could take them."""

import socket

from asyncor.configs.schema import Config
from asyncor.launcher.ports import assign_ports, ephemeral_range, free_port, free_ports


def test_picked_ports_are_free_distinct_and_outside_the_ephemeral_range():
    low, high = ephemeral_range()
    ports = [free_port() for _ in range(200)]
    assert all(not low <= p <= high and 1024 < p < 65536 for p in ports)
    distinct = free_ports(300)  # two picks can collide (nothing is bound in between); free_ports never does
    assert len(set(distinct)) == 300 and all(not low <= p <= high for p in distinct)
    for p in ports[:20]:
        with socket.socket() as s:
            s.bind(("", p))  # free indeed
    config = Config()
    assign_ports(config)
    net = config.net
    assigned = [net.buffer_actor_port, net.buffer_learner_port, net.sync_port, net.store_port, net.learner_port,
                net.telemetry_port]
    assert len(set(assigned)) == 6 and all(not low <= p <= high for p in assigned)
