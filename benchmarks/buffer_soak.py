"""Soak a live buffer: several fast synthetic actors and a learner, real processes and real ZeroMQ.

    python benchmarks/buffer_soak.py                      # 60 s per row: 4 senders, CURVE off and on
    python benchmarks/buffer_soak.py --seconds 20 --senders 2 4 8 --response-tokens 512

The buffer runs as its own process (`python -m asyncor.buffer`), exactly as `launch.py` starts it. Each
sender process is an actor without an engine. It asks for grants, builds the group each grant asks for
(random tokens of the granted length, the granted group size, labelled with the oldest version the
grant allows, so many are dropped as stale when the learner moves on) and sends the groups as fast as the buffer
acknowledges them, several in flight. A learner process takes batches as fast as they come
(`--learner-step-s` of simulated training each) and reports each new version. Admission (η and the batch
size) and `buffer.max_groups` are the only brakes.

Printed per row:
* accepted groups per second and MB per second of group messages;
* the buffer's peak RSS, and its growth from the first to the second half of the soak (a leak shows here);
* the most groups the buffer's store held at once, against the admission window (η + 1) x batch;
* the ledger (accepted = trained + dropped + still buffered; 0 unaccounted).
A sender checks every answer: a group acknowledged "full" is sent again after a pause; one refused,
acknowledged "duplicate" or unanswered counts as lost, and the run reports it.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

TIMEOUT = 10.0


def make_config(run_dir: str, senders: int, group_size: int, response_tokens: int, prompts_per_step: int,
                eta: int, auth: str) -> str:
    """A resolved config for a buffer alone (tokenizer of the tiny model; no model weights needed)."""
    from asyncor.configs.loader import dump_resolved
    from asyncor.configs.schema import Config
    from asyncor.launcher.ports import assign_ports
    from asyncor.prepare.tiny_model import build_tokenizer

    tok_dir = os.path.join(run_dir, "tok")
    os.makedirs(tok_dir, exist_ok=True)
    build_tokenizer().save(os.path.join(tok_dir, "tokenizer.json"))
    with open(os.path.join(tok_dir, "tokenizer_config.json"), "w") as f:
        json.dump({"bos_token": "<bos>", "eos_token": "<eos>"}, f)
    with open(os.path.join(tok_dir, "config.json"), "w") as f:
        json.dump({"eos_token_id": 2}, f)
    config = Config.model_validate({
        "run": {"output_dir": os.path.dirname(run_dir), "name": os.path.basename(run_dir)},
        "model": {"path": tok_dir},
        "task": {"digits": 3, "train_size": 20000},
        "actors": {"count": senders, "group_size": group_size, "max_response_tokens": response_tokens},
        "buffer": {"max_staleness": eta},
        "learner": {"prompts_per_step": prompts_per_step, "steps": 1_000_000,
                    "micro_batch_tokens": 64 + response_tokens},
        "algo": {"rejection": {"enabled": False}, "online_filter": False},
        "net": {"auth": auth, "request_timeout_s": TIMEOUT},
    })
    assign_ports(config)
    path = os.path.join(run_dir, "config.json")
    dump_resolved(config, path)
    return path


def sender(cfg_path: str, actor_id: int, vocab: int, stop_at: float, in_flight: int, out: mp.Queue,
           keys_env: dict) -> None:
    """One synthetic actor: grant -> groups of the granted shape -> acks, until the buffer says stop. `keys_env`:
    its own CURVE keys, as the launcher gives them (empty without CURVE)."""
    os.environ.update(keys_env)
    from asyncor.wire.curve import role_keys
    from asyncor.wire.arrays import unpack_array
    from asyncor.wire.envelope import encode
    from asyncor.wire.trajectory import Response, TrajectoryGroup
    from asyncor.wire.rpc import connect
    from asyncor.wire.transport import endpoint
    from asyncor.wire.zeromq import ZmqTransport
    from asyncor.configs.loader import load_resolved

    cfg = load_resolved(cfg_path)
    transport = ZmqTransport()
    at = endpoint(cfg.net.buffer_address, cfg.net.buffer_actor_port)
    keys = role_keys(cfg.net.auth)
    control = connect(transport, at, f"actor{actor_id}", cfg.buffer.max_message_bytes, "buffer", keys)
    groups_sock = connect(transport, at, f"actor{actor_id}/groups", cfg.buffer.max_message_bytes, "buffer", keys)
    rng = np.random.default_rng(actor_id)
    stats = {"sent": 0, "accepted": 0, "bytes": 0, "lost": 0, "not_accepted": {}}
    control.request("actor_hello", {"actor_id": actor_id}, TIMEOUT)
    seq = 0
    while True:
        want = in_flight if time.monotonic() < stop_at else 0
        reply = control.request("grant_request", {"actor_id": actor_id, "max_prompts": want, "hold_s": 0.5}, TIMEOUT)
        if reply.type == "stop":
            break
        if reply.type != "grant":
            if want == 0:
                time.sleep(0.05)
            continue
        n, max_tokens = reply.body["sampling"]["n"], reply.body["sampling"]["max_tokens"]
        bodies = []
        for p in reply.body["prompts"]:
            prompt = unpack_array(p["token_ids"], "token_ids", "<i4")
            responses = []
            for _ in range(n):
                length = int(rng.integers(1, max_tokens + 1))
                responses.append(Response(rng.integers(0, vocab, length, dtype=np.int32),
                                          -rng.random(length, dtype=np.float32), reply.body["min_version"], "stop",
                                          float(rng.integers(0, 2))))
            bodies.append(TrajectoryGroup(p["prompt_id"], prompt, responses, actor_id, seq, 0.01).to_wire())
            seq += 1
        stats["bytes"] += sum(len(encode("group", b)) for b in bodies)
        stats["sent"] += len(bodies)
        pending = bodies
        while pending:  # "full" is backpressure: resend after a pause, as actors/outbox.py does
            acks = groups_sock.request_many("group", pending, TIMEOUT)
            retry = []
            for body, ack in zip(pending, acks):
                status = ("no reply" if ack is None else f"refused: {ack.body.get('reason')}"
                                          if ack.type == "refused" else ack.body.get("status"))
                if status == "accepted":
                    stats["accepted"] += 1
                elif status == "full":
                    retry.append(body)
                else:
                    stats["lost"] += 1
                    stats["not_accepted"][status] = stats["not_accepted"].get(status, 0) + 1
            pending = retry
            if retry:
                time.sleep(0.05)
    control.request("bye", {"actor_id": actor_id, "stats": {}}, TIMEOUT)
    out.put(stats)


def learner(cfg_path: str, step_s: float, stop_at: float, out: mp.Queue, keys_env: dict) -> None:
    os.environ.update(keys_env)
    from asyncor.wire.curve import role_keys
    from asyncor.wire.rpc import connect
    from asyncor.wire.transport import endpoint
    from asyncor.wire.zeromq import ZmqTransport
    from asyncor.configs.loader import load_resolved

    cfg = load_resolved(cfg_path)
    client = connect(ZmqTransport(), endpoint(cfg.net.buffer_address, cfg.net.buffer_learner_port), "learner",
                    cfg.buffer.max_message_bytes, "buffer", role_keys(cfg.net.auth))
    client.request("learner_hello", {}, TIMEOUT)
    client.request("version", {"version": 0}, TIMEOUT)
    version, trained = 0, 0
    while time.monotonic() < stop_at:
        reply = client.request("batch_request", {"version": version, "n_groups": cfg.learner.prompts_per_step},
                               TIMEOUT)
        if reply.type != "batch":
            continue
        trained += len(reply.body["groups"])
        time.sleep(step_s)  # training
        version += 1
        client.request("version", {"version": version}, TIMEOUT)
    client.request("done", {}, TIMEOUT)
    out.put({"steps": version, "trained": trained})


def rss_sampler(pid: int, samples: list, stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            with open(f"/proc/{pid}/status") as f:
                rss = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
            samples.append((time.monotonic(), rss / 1024))
        except (OSError, StopIteration):
            return
        time.sleep(0.1)


def soak(seconds: float, senders: int = 4, group_size: int = 8, response_tokens: int = 256,
         prompts_per_step: int = 32, eta: int = 2, in_flight: int = 16, learner_step_s: float = 0.0,
         auth: str = "off", run_dir: str | None = None) -> dict:
    from asyncor.wire.zeromq import generate_keys
    from asyncor.prepare.tiny_model import build_tokenizer

    run_dir = run_dir or tempfile.mkdtemp(prefix="asyncor-soak-")
    cfg_path = make_config(os.path.join(run_dir, "soak"), senders, group_size, response_tokens, prompts_per_step,
                           eta, auth)
    env = {**os.environ, "PYTHONPATH": ROOT}
    # Each process gets its own role's keys, as launch.py gives them.
    roles = ["buffer", "learner", *(f"actor{i}" for i in range(senders))]
    keys = generate_keys(roles, {"buffer", "learner"}) if auth == "curve" else None

    def role_env(role: str) -> dict:
        return keys.issue(role).to_env() if keys else {}

    env.update(role_env("buffer"))
    buffer = subprocess.Popen([sys.executable, "-m", "asyncor.buffer", "--config", cfg_path], cwd=ROOT, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    vocab = build_tokenizer().get_vocab_size()
    out: mp.Queue = mp.get_context("fork").Queue()
    start = time.monotonic()
    stop_at = start + seconds
    procs = [mp.get_context("fork").Process(target=learner, args=(cfg_path, learner_step_s, stop_at, out,
                                                                  role_env("learner")))]
    procs += [mp.get_context("fork").Process(target=sender, args=(cfg_path, i, vocab, stop_at, in_flight, out,
                                                                  role_env(f"actor{i}")))
              for i in range(senders)]
    for p in procs:
        p.start()
    samples: list = []  # (monotonic s, buffer RSS MB); sampled from here on (no thread while forking)
    stop_sampling = threading.Event()
    threading.Thread(target=rss_sampler, args=(buffer.pid, samples, stop_sampling), daemon=True).start()
    try:
        results = [out.get(timeout=seconds + 120) for _ in procs]
    except Exception:
        buffer.kill()
        raise RuntimeError(f"a soak process did not report: buffer says {buffer.communicate()[1].decode()[-2000:]}")
    for p in procs:
        p.join(timeout=30)
    try:
        _, err = buffer.communicate(timeout=60)
    finally:
        stop_sampling.set()
        buffer.kill()
    wall = time.monotonic() - start
    if buffer.returncode != 0:
        raise RuntimeError(f"the buffer exited {buffer.returncode}: {err.decode()[-2000:]}")
    learner_result = next(r for r in results if "trained" in r)
    sent = [r for r in results if "sent" in r]
    run = os.path.join(run_dir, "soak")
    with open(os.path.join(run, "roles", "buffer.json")) as f:
        summary = json.load(f)
    half = samples[0][0] + (samples[-1][0] - samples[0][0]) / 2 if samples else 0
    first = max((m for t, m in samples if t <= half), default=0.0)
    second = max((m for t, m in samples if t > half), default=0.0)
    accepted = sum(r["accepted"] for r in sent)
    return {
        "senders": senders, "auth": auth, "seconds": seconds, "wall_s": wall,
        "groups_per_s": accepted / seconds, "mb_per_s": sum(r["bytes"] for r in sent) / seconds / 1e6,
        "sent": sum(r["sent"] for r in sent), "accepted": accepted, "lost": sum(r["lost"] for r in sent),
        "not_accepted": [r["not_accepted"] for r in sent if r["not_accepted"]],
        "learner_steps": learner_result["steps"], "trained": learner_result["trained"],
        "peak_rss_mb": max((m for _, m in samples), default=0.0), "rss_first_half_mb": first,
        "rss_second_half_mb": second, "max_store": summary["max_stored"],
        "max_groups": (eta + 1) * prompts_per_step, "ledger": summary["ledger"],
        "rejected": summary["rejected"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--senders", type=int, nargs="+", default=[4])
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--response-tokens", type=int, default=256)
    parser.add_argument("--learner-step-s", type=float, default=0.0)
    parser.add_argument("--auth", nargs="+", default=["off", "curve"])
    args = parser.parse_args()
    print("| senders | auth | groups/s | MB/s | sent | accepted | lost | learner steps | trained / dropped stale | "
          "peak RSS MB | RSS 1st -> 2nd half MB | max store / window | ledger unaccounted |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for senders in args.senders:
        for auth in args.auth:
            r = soak(args.seconds, senders, args.group_size, args.response_tokens, auth=auth,
                     learner_step_s=args.learner_step_s)
            print(f"| {senders} | {auth} | {r['groups_per_s']:.0f} | {r['mb_per_s']:.1f} | {r['sent']} | "
                  f"{r['accepted']} | {r['lost']} | {r['learner_steps']} | {r['ledger']['trained']} / "
                  f"{r['ledger']['dropped_stale']} | {r['peak_rss_mb']:.0f} | "
                  f"{r['rss_first_half_mb']:.0f} -> {r['rss_second_half_mb']:.0f} | {r['max_store']} / "
                  f"{r['max_groups']} | {r['ledger']['unaccounted']} |", flush=True)


if __name__ == "__main__":
    main()
