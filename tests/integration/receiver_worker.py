"""One actor's weight receiver as its own process, for tests/integration/test_weight_sync_membership.py.

Runs sync/receiver.py's thread and appends `<version> <sum of the weights>` to --out for every version it
stages, so the test sees what each incarnation got; `<out>.ready` appears once the process has started (its
imports done), just before the receiver says hello. Exits on SIGTERM; the test also SIGKILLs and SIGSTOPs it.
"""

import argparse
import signal
import sys
import time

import torch

from asyncor.sync.receiver import WeightReceiver
from asyncor.wire.zeromq import ZmqTransport

parser = argparse.ArgumentParser()
parser.add_argument("--actor-id", type=int, required=True)
parser.add_argument("--ports", required=True, help="sync_port,store_port")
parser.add_argument("--out", required=True)
parser.add_argument("--timeout-s", type=float, default=5.0)
args = parser.parse_args()
sync_port, store_port = map(int, args.ports.split(","))
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
open(args.out + ".ready", "w").close()
receiver = WeightReceiver(ZmqTransport(), args.actor_id, "127.0.0.1", sync_port, store_port, "gloo", args.timeout_s,
                          torch.device("cpu"), rejoin_timeout_s=120.0)
receiver.start()
while True:
    staged = receiver.wait_for(0, 0.2)
    if staged is not None:
        total = sum(float(t.double().sum()) for _, t in staged.tensors)
        with open(args.out, "a") as f:
            f.write(f"{staged.version} {total}\n")
    elif receiver.error is not None:
        raise SystemExit(f"receiver failed: {receiver.error!r}")
    time.sleep(0.01)
