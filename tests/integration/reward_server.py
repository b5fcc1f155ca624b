"""A reward server for tests and trial runs (the protocol of tasks/remote_reward.py), good or bad on request.

In-process: `url, stats, stop = start("exact")` serves on a free loopback port from a thread (stdlib
ThreadingHTTPServer, one thread per request); `stop()` wakes any handler that is sleeping, then closes the server.
As a process: `python -m tests.integration.reward_server --port 0 --mode exact` prints `READY <port>` once it
listens (the readiness handshake: no sleeping on the caller's side), then serves until killed. `GET /stats`
answers the stats as JSON.

Modes:
  exact    reward 1.0 when the response, stripped, equals str(reference), else 0.0: the built-in arithmetic task's
           rule, so a real run can learn from it. `delay_s` holds every request that long (to build concurrency).
  positions  like exact, with partial credit: 0.5 x the share of positions right when the lengths match (the
           reward of docs/examples/sort_digits.py, computed by a server: tests/integration/test_user_reward_run.py).
  slow     sleeps `delay_s` (default 5 s: longer than a test client's timeout) before answering as exact.
  garbage  bad answers. A batch kind (GARBAGE_BATCH) spoils the whole answer, an item kind (GARBAGE_ITEM) one
           sample's entry. An item whose prompt is "garbage:<kind>" asks for it (for its batch, or itself).
           A request without such an item gets, by `garbage`: "rotate" (default) the kinds in turn, one per
           request; "marked" an exact answer; a kind, that kind. Unspoilt entries are scored as exact.
  flaky    answers the first `fail_first` requests (default 2) with `status` (default 503), then as exact.
  die      reads the request, then "close": closes the connection without answering; "partial": sends the
           headers and 10 of 1000 promised bytes, then closes; "exit" (process only): the process exits.

With `api_key`, a request without `Authorization: Bearer <api_key>` is answered 401. Stats: requests, the most in
flight at once, the batch sizes seen, arrival times (monotonic), Authorization headers seen.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MODES = ("exact", "positions", "slow", "garbage", "flaky", "die")
GARBAGE_BATCH = ("not_json", "not_object", "no_rewards", "short", "huge", "huge_declared", "not_http")
GARBAGE_ITEM = ("null", "string", "bool", "nan", "inf", "big_int", "list", "no_reward_field", "details")
DIE = ("close", "partial", "exit")
MAX_REQUEST_BYTES = 16 << 20
HUGE_BYTES = (16 << 20) + 1024  # just over the client's cap


@dataclass
class Stats:
    requests: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    batch_sizes: list = field(default_factory=list)
    arrivals: list = field(default_factory=list)
    auth: list = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def as_dict(self) -> dict:
        with self.lock:
            return {"requests": self.requests, "max_in_flight": self.max_in_flight,
                    "batch_sizes": list(self.batch_sizes), "auth": list(self.auth)}


@dataclass
class Behaviour:
    mode: str = "exact"
    delay_s: float | None = None
    fail_first: int = 2
    status: int = 503
    garbage: str = "rotate"
    die: str = "close"
    api_key: str | None = None
    stop: threading.Event = field(default_factory=threading.Event, repr=False)

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"mode {self.mode!r}: one of {MODES}")
        if self.garbage not in GARBAGE_BATCH + GARBAGE_ITEM + ("rotate", "marked"):
            raise ValueError(f"garbage {self.garbage!r}: rotate, marked or one of {GARBAGE_BATCH + GARBAGE_ITEM}")
        if self.die not in DIE:
            raise ValueError(f"die {self.die!r}: one of {DIE}")


def exact_reward(item: dict) -> float:
    return 1.0 if str(item.get("response", "")).strip() == str(item.get("reference")) else 0.0


def positions_reward(item: dict) -> float:
    want, got = str(item.get("reference")), str(item.get("response", "")).strip()
    if got == want:
        return 1.0
    return 0.5 * sum(a == b for a, b in zip(want, got)) / len(want) if len(got) == len(want) and want else 0.0


def _item_entry(kind: str | None, item: dict):
    """The "rewards" entry for one item under an item garbage kind (None: the exact reward)."""
    return {None: exact_reward(item), "null": None, "string": "1.0", "bool": True, "nan": float("nan"),
            "inf": float("inf"), "big_int": 10**400, "list": [1.0], "no_reward_field": {"details": {"x": 1}},
            "details": {"reward": exact_reward(item), "details": {"why": "judge says so"}}}[kind]


class Handler(BaseHTTPRequestHandler):
    server_version = "reward-test/1"

    def log_message(self, *args) -> None:
        pass  # tests read the stats, not a line per request

    def do_GET(self) -> None:
        if self.path.rstrip("/") != "/stats":
            return self._send(404, b"{}")
        self._send(200, json.dumps(self.server.stats.as_dict()).encode())

    def do_POST(self) -> None:
        stats, how = self.server.stats, self.server.behaviour
        with stats.lock:
            stats.requests += 1
            number = stats.requests
            stats.in_flight += 1
            stats.max_in_flight = max(stats.max_in_flight, stats.in_flight)
            stats.arrivals.append(time.monotonic())
            stats.auth.append(self.headers.get("Authorization"))
        try:
            length = self.headers.get("Content-Length", "")
            if not length.isdigit() or int(length) > MAX_REQUEST_BYTES:
                return self._send(400, b'{"error": "Content-Length"}')
            try:
                items = json.loads(self.rfile.read(int(length)))["items"]
                assert isinstance(items, list) and all(isinstance(i, dict) for i in items)
            except Exception:  # noqa: BLE001 - a test server answers a bad request 400, whatever is wrong
                return self._send(400, b'{"error": "body"}')
            with stats.lock:
                stats.batch_sizes.append(len(items))
            if how.api_key is not None and self.headers.get("Authorization") != f"Bearer {how.api_key}":
                return self._send(401, b'{"error": "unauthorised"}')
            self._answer(how, number, items)
        finally:
            with stats.lock:
                stats.in_flight -= 1

    def _answer(self, how: Behaviour, number: int, items: list) -> None:
        if how.mode == "slow":
            how.stop.wait(5.0 if how.delay_s is None else how.delay_s)
        elif how.delay_s:
            how.stop.wait(how.delay_s)
        if how.mode == "flaky" and number <= how.fail_first:
            return self._send(how.status, b'{"error": "try again"}')
        if how.mode == "die":
            return self._die(how.die)
        kinds = [None] * len(items)
        if how.mode == "garbage":
            asked = [str(i.get("prompt", ""))[len("garbage:"):] for i in items]
            asked = [k if str(i.get("prompt", "")).startswith("garbage:") else None for k, i in zip(asked, items)]
            batch_kind = next((k for k in asked if k in GARBAGE_BATCH), None)
            if not any(asked) and how.garbage != "marked":
                every = how.garbage
                if every == "rotate":
                    kinds_all = GARBAGE_BATCH + GARBAGE_ITEM
                    every = kinds_all[(number - 1) % len(kinds_all)]
                batch_kind = every if every in GARBAGE_BATCH else None
                asked = [every] * len(items)
            if batch_kind is not None:
                return self._garbage_batch(batch_kind, items)
            kinds = [k if k in GARBAGE_ITEM else None for k in asked]
        if how.mode == "positions":
            return self._send(200, json.dumps({"rewards": [positions_reward(item) for item in items]}).encode())
        rewards = [_item_entry(k, item) for k, item in zip(kinds, items)]
        self._send(200, json.dumps({"rewards": rewards}).encode())  # NaN / Infinity go out as JSON's extensions

    def _garbage_batch(self, kind: str, items: list) -> None:
        if kind == "not_json":
            return self._send(200, b"<html>Internal judge error</html>")
        if kind == "not_object":
            return self._send(200, json.dumps([1.0] * len(items)).encode())
        if kind == "no_rewards":
            return self._send(200, json.dumps({"scores": [1.0] * len(items)}).encode())
        if kind == "short":
            return self._send(200, json.dumps({"rewards": [1.0] * (len(items) - 1)}).encode())
        if kind == "huge":  # no Content-Length: the body runs until the connection closes
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.close_connection = True
            chunk = b" " * (1 << 20)
            try:
                for _ in range(HUGE_BYTES // len(chunk) + 1):
                    self.wfile.write(chunk)
            except OSError:
                pass  # the client stopped reading at its cap
            return None
        if kind == "huge_declared":
            self.send_response(200)
            self.send_header("Content-Length", str(1 << 30))
            self.end_headers()
            self.close_connection = True
            return None
        assert kind == "not_http"
        self.wfile.write(b"SURPRISE\r\n\r\n")
        self.close_connection = True
        return None

    def _die(self, how: str) -> None:
        self.close_connection = True
        if how == "exit":
            os._exit(3)  # as if the process were killed mid-request
        if how == "partial":
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            self.wfile.write(b'{"rewards": [')
        # "close": nothing written; the server closes the connection when the handler returns

    def _send(self, status: int, body: bytes) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except OSError:
            pass  # the client gave up (its deadline passed)


class Server(ThreadingHTTPServer):
    daemon_threads = True  # a handler still sleeping when the test ends must not hold the interpreter
    block_on_close = False

    def __init__(self, address, behaviour: Behaviour):
        super().__init__(address, Handler)
        self.behaviour, self.stats = behaviour, Stats()

    def handle_error(self, request, client_address) -> None:
        pass  # a client that hung up mid-answer is what several modes are for


def start(mode: str = "exact", **options) -> tuple[str, Stats, callable]:
    """Serves `mode` (options: the fields of Behaviour) on a free loopback port -> (url, stats, stop)."""
    behaviour = Behaviour(mode, **options)
    if mode == "die" and behaviour.die == "exit":
        raise ValueError('die="exit" ends the process: run the server as a process for it')
    server = Server(("127.0.0.1", 0), behaviour)
    # It listens already: a request sent before serve_forever runs waits in the backlog, so no handshake needed.
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True,
                              name="reward-server")
    thread.start()

    def stop() -> None:
        behaviour.stop.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)

    return f"http://127.0.0.1:{server.server_address[1]}/score", server.stats, stop


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0: a free port (printed)")
    parser.add_argument("--mode", choices=MODES, default="exact")
    parser.add_argument("--delay", type=float, default=None, help="seconds (slow: default 5; exact: 0)")
    parser.add_argument("--fail-first", type=int, default=2)
    parser.add_argument("--status", type=int, default=503)
    parser.add_argument("--garbage", choices=("rotate", "marked") + GARBAGE_BATCH + GARBAGE_ITEM, default="rotate")
    parser.add_argument("--die", choices=DIE, default="close")
    parser.add_argument("--api-key-env", default=None, help="require Bearer <value of this variable>")
    args = parser.parse_args(argv)
    api_key = os.environ[args.api_key_env] if args.api_key_env else None
    behaviour = Behaviour(args.mode, delay_s=args.delay, fail_first=args.fail_first, status=args.status,
                          garbage=args.garbage, die=args.die, api_key=api_key)
    server = Server((args.host, args.port), behaviour)
    print(f"READY {server.server_address[1]}", flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    sys.exit(main())
