"""A reward server over HTTP (task.reward = "http://host:port/path", [task.reward_server]): scores answers with a
reward model or an LLM judge served elsewhere.

Producer: the user's server at `task.reward`. Consumer: the actor's scoring thread (tasks/scoring.py's Scorer),
which calls `RemoteReward.score(items)` once per chunk of samples and blocks until it returns. Nothing here runs on
the decode loop. One `score()` call cuts its items into batches of `batch_size` and sends them from a pool of
`max_concurrency` threads: at most `max_concurrency` requests are in flight per RemoteReward (per actor). One
caller at a time (the bound below assumes the pool is its own).

Protocol (the contract a server implements; docs/rewards.md):

    POST {url}   Content-Type: application/json   [Authorization: Bearer <$api_key_env>]   Connection: close
         {"items": [{"id": int, "prompt": str, "response": str, "reference": <JSON value>, "kind": str}, ...]}
         at most `batch_size` items.
    -> 200 {"rewards": [r0, r1, ...]}  same length and order as "items"; each r is
         a finite number                                  the sample's reward
         {"reward": <finite number>, "details": {...}}     the same; details only reach a debug log
         null                                             the server has no reward for it (reason "no_reward")

    Any 2xx status is read as an answer. Redirects are not followed. Name resolution (getaddrinfo) is outside the
    deadline: use an IP address or a name that resolves locally.

Nothing the server sends is trusted. A failed sample scores 0.0 and adds one to `failures[reason]`; `score()` never
raises for anything the server does, and never hangs:

    whole batch, retried (after the last try the reason is the last try's):
        timeout       no complete answer within `timeout_s` (connect + send + answer, one deadline per try)
        unreachable   connection refused / reset / closed before or while answering
        http_5xx      status 5xx
        http_429      status 429 (too many requests; Retry-After is not read: the back-off applies)
    whole batch, not retried (a server that answers garbage answers it again):
        http_4xx      any other 4xx (bad request, unauthorised, not found, ...)
        bad_status    any other status that is not 2xx (1xx, 3xx)
        too_large     a body over MAX_BODY_BYTES (16 MiB; a larger Content-Length is refused unread)
        bad_answer    not UTF-8 JSON, not an object, no "rewards" list, a list of another length, not HTTP
        unencodable   the items could not be sent as JSON (a reference that is not a plain JSON value)
        closed        close() was called while the batch waited for a thread
    one sample (the batch's other samples keep their rewards):
        no_reward     null
        not_a_number  a string, a bool, a list, an object without a number "reward"
        nan           NaN, Infinity, -Infinity, or a number too large for a float (1e999)

Retries: up to `retries` more tries per batch, the k-th (k = 1, 2, ...) after a back-off of
`backoff_s * 2**(k-1)`, times a uniform jitter in [0.75, 1.25] so that actors do not retry in step.

Time bound. One batch takes at most
    B = (retries + 1) * timeout_s + 1.25 * backoff_s * (2**retries - 1)
(`batch_bound_s`), and the pool works through the batches in order, so `score(items)` returns within
    ceil(ceil(len(items) / batch_size) / max_concurrency) * B
(`max_block_s(len(items))`, plus the time to encode and decode the JSON). The scoring thread's wait on the pool has
that deadline (+ 1 s): a batch still unfinished then scores 0 ("timeout") and its thread is left to end on its own
deadline. The TLS handshake of an https URL is bounded per read (timeout_s), not in total.

Why http.client and not httpx: httpx bounds each read, not a whole request (encode/httpx#1450), so a server that
trickles a byte now and then could hold a request, and the actor, for ever. Here every socket read gets what is
left of the try's deadline (the same approach as tasks/http_env.py). One connection per request: a judge's answer
takes far longer than a local connect.
"""

from __future__ import annotations

import collections
import http.client
import json
import math
import os
import random
import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor, wait

from asyncor.configs.schema import RewardServerConfig
from asyncor.telemetry import log as tlog
from asyncor.tasks.deadline_socket import DeadlineSocket

MAX_BODY_BYTES = 16 << 20
JITTER = 0.25  # back-off is scaled by uniform(1 - JITTER, 1 + JITTER)
WAIT_SLACK_S = 1.0  # on top of max_block_s for the scoring thread's wait: JSON and thread start-up
DETAILS_LOG_CHARS = 2000  # a server's details go to a debug log, cut to this

_RETRIED = ("timeout", "unreachable", "http_5xx", "http_429")


class _Failed(Exception):
    """A try that failed for the whole batch, with its reason."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def _reward(value) -> tuple[float | None, str, object]:
    """One entry of "rewards" -> (reward, "", details) or (None, reason, None)."""
    details = None
    if isinstance(value, dict):
        details = value.get("details")
        value = value.get("reward", "missing")
    if value is None:
        return None, "no_reward", None
    # bool is an int subclass: true is not a reward.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None, "not_a_number", None
    try:
        reward = float(value)  # a huge JSON integer overflows here
    except OverflowError:
        return None, "nan", None
    if not math.isfinite(reward):
        return None, "nan", None
    return reward, "", details


def _parse_rewards(raw: bytes, n: int) -> list:
    """The "rewards" list of an untrusted body, checked to hold `n` entries; `_Failed("bad_answer")` otherwise.
    NaN / Infinity literals are parsed (json.loads default) so that they count per sample."""
    try:
        answer = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):  # RecursionError: deeply nested arrays
        raise _Failed("bad_answer") from None
    rewards = answer.get("rewards") if isinstance(answer, dict) else None
    if not isinstance(rewards, list) or len(rewards) != n:
        raise _Failed("bad_answer")
    return rewards


class RemoteReward:
    def __init__(self, url: str, settings: RewardServerConfig, log=None):
        self.settings = settings
        self.log = log if log is not None else tlog.get("actor")
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f'task.reward = {url!r}: a reward server needs "http://host:port/path" or "https://..."')
        try:
            self.port = parts.port  # a bad port is a config error now, not a failure at every batch
        except ValueError as e:
            raise ValueError(f"task.reward = {url!r}: {e}") from None
        self.url, self.https, self.host = url, parts.scheme == "https", parts.hostname
        self.path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self.headers = {"Content-Type": "application/json", "Accept": "application/json", "Connection": "close"}
        if settings.api_key_env:
            key = os.environ.get(settings.api_key_env)
            if not key:
                raise ValueError(f"task.reward_server.api_key_env = {settings.api_key_env!r}: that environment "
                                 "variable is not set (or empty) in this process")
            if any(ord(c) < 32 or ord(c) == 127 for c in key):  # would split the header
                raise ValueError(f"task.reward_server.api_key_env = {settings.api_key_env!r}: the key holds "
                                 "control characters")
            self.headers["Authorization"] = f"Bearer {key}"
        self.failures: collections.Counter = collections.Counter()
        self.requests = 0
        self._rng = random.Random()
        self._closed = threading.Event()  # cuts a back-off short at close()
        self._pool = ThreadPoolExecutor(max_workers=settings.max_concurrency, thread_name_prefix="remote-reward")

    # ------------------------------------------------------------------------------------------------- bounds

    def batch_bound_s(self) -> float:
        """Longest one batch can take, all tries and back-offs included."""
        s = self.settings
        return (s.retries + 1) * s.timeout_s + (1 + JITTER) * s.backoff_s * (2**s.retries - 1)

    def max_block_s(self, n_items: int) -> float:
        """Longest `score()` of `n_items` items blocks (JSON work aside): waves of max_concurrency batches."""
        s = self.settings
        batches = -(-n_items // s.batch_size)
        return -(-batches // s.max_concurrency) * self.batch_bound_s()

    # ------------------------------------------------------------------------------------------------- scoring

    def score(self, items: list[dict]) -> list[float]:
        """items: {"id": int, "prompt": str, "response": str, "reference": <plain JSON value>, "kind": str};
        returns one reward per item, in order. Never raises for server trouble: a sample whose reward could not
        be had scores 0.0 and is counted in self.failures[reason]. Blocks at most `max_block_s(len(items))`
        (+ 1 s, + JSON work): see the module docstring."""
        if self._closed.is_set():
            raise RuntimeError("RemoteReward.score after close()")
        if not items:
            return []
        size = self.settings.batch_size
        batches = [items[i:i + size] for i in range(0, len(items), size)]
        futures = [self._pool.submit(self._batch, batch) for batch in batches]
        wait(futures, timeout=self.max_block_s(len(items)) + WAIT_SLACK_S)
        rewards: list[float] = []
        failed: collections.Counter = collections.Counter()
        details_example = None
        for batch, future in zip(batches, futures):
            if future.cancelled():  # close() from another thread
                results, requests = [(None, "closed", None)] * len(batch), 0
            elif future.done() and future.exception() is None:
                results, requests = future.result()
            else:  # past the deadline (cannot happen unless the machine stalls), or a bug in _batch: logged
                if future.done():
                    self.log.error("reward_server_bug", error=repr(future.exception()))
                future.cancel()
                results, requests = [(None, "timeout", None)] * len(batch), 0
            self.requests += requests
            for reward, reason, details in results:
                rewards.append(0.0 if reward is None else reward)
                if reward is None:
                    failed[reason] += 1
                elif details is not None and details_example is None:
                    details_example = details
        self.failures.update(failed)
        if failed:
            self.log.warning("reward_server_failures", url=self.url, samples=len(items), **failed)
        if details_example is not None:  # one per call: a judge's rationale per sample would flood the log
            self.log.debug("reward_server_details", details=repr(details_example)[:DETAILS_LOG_CHARS])
        return rewards

    def _batch(self, batch: list[dict]) -> tuple[list[tuple], int]:
        """One batch, retries included -> ([(reward | None, reason, details)] per item, requests made)."""
        s = self.settings
        try:
            body = json.dumps({"items": batch}, allow_nan=False).encode("utf-8")
        except (TypeError, ValueError):
            return [(None, "unencodable", None)] * len(batch), 0
        requests = 0
        reason = "unreachable"
        for attempt in range(s.retries + 1):
            if attempt:
                delay = s.backoff_s * 2 ** (attempt - 1) * self._rng.uniform(1 - JITTER, 1 + JITTER)
                if self._closed.wait(delay):
                    break
            requests += 1
            try:
                status, raw = self._post(body, time.monotonic() + s.timeout_s)
            except _Failed as f:
                reason = f.reason
                if reason in _RETRIED:
                    continue
                break
            if 200 <= status < 300:
                try:
                    return [_reward(value) for value in _parse_rewards(raw, len(batch))], requests
                except _Failed as f:
                    reason = f.reason
                    break
            reason = ("http_429" if status == 429 else "http_5xx" if 500 <= status < 600
                      else "http_4xx" if 400 <= status < 500 else "bad_status")
            if reason not in _RETRIED:
                break
        return [(None, reason, None)] * len(batch), requests

    def _post(self, body: bytes, deadline: float) -> tuple[int, bytes]:
        """One POST: (status, body of at most MAX_BODY_BYTES), everything within `deadline`; `_Failed` otherwise."""
        cls = http.client.HTTPSConnection if self.https else http.client.HTTPConnection
        conn = cls(self.host, self.port, timeout=max(deadline - time.monotonic(), 1e-3))
        sock = None
        try:
            conn.connect()
            sock = conn.sock
            conn.sock = DeadlineSocket(sock, deadline)
            conn.request("POST", self.path, body=body, headers=self.headers)
            resp = conn.getresponse()
            declared = resp.getheader("Content-Length")
            if declared is not None and declared.strip().isdigit() and int(declared) > MAX_BODY_BYTES:
                raise _Failed("too_large")
            raw = resp.read(MAX_BODY_BYTES + 1)
            if len(raw) > MAX_BODY_BYTES:
                raise _Failed("too_large")
            if declared is not None and declared.strip().isdigit() and len(raw) < int(declared):
                raise _Failed("unreachable")  # closed mid-body: http.client's read(n) returns what came
            return resp.status, raw
        except TimeoutError:  # socket.timeout is TimeoutError
            raise _Failed("timeout") from None
        except http.client.IncompleteRead:  # the connection closed in the middle of the body
            raise _Failed("unreachable") from None
        except OSError:  # refused, reset, closed before the status line (RemoteDisconnected is one)
            raise _Failed("unreachable") from None
        except (http.client.HTTPException, ValueError):  # not HTTP (a bad status line, bad chunking)
            raise _Failed("bad_answer") from None
        finally:
            conn.close()
            if sock is not None:
                sock.close()

    def close(self) -> None:
        """Stops the pool; a request in flight ends on its own deadline, a back-off at once. Idempotent."""
        self._closed.set()
        self._pool.shutdown(wait=False, cancel_futures=True)
