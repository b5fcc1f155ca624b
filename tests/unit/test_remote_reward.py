"""The reward-server client (tasks/remote_reward.py) against the test server (tests/integration/reward_server.py)
in a thread: right rewards in order, batches of at most batch_size, the in-flight cap, and every way a server can
fail (late, gone, flaky, 4xx, garbage of each kind), each counted by its reason, within the documented bound."""

import os
import select
import socket
import subprocess
import sys
import threading
import time

import pytest
from asyncor.configs.schema import RewardServerConfig
from asyncor.tasks.remote_reward import RemoteReward

from tests.integration.reward_server import GARBAGE_BATCH, GARBAGE_ITEM, start

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class Log:
    """A logger that keeps what it is told."""

    def __init__(self):
        self.lines = []

    def __getattr__(self, level):
        return lambda event, **kw: self.lines.append((level, event, kw))


def item(i: int, right: bool = True, prompt: str | None = None) -> dict:
    answer = str(i * 7)
    return {"id": i, "prompt": prompt or f"{i}*7=", "response": f" {answer}\n" if right else answer + "1",
            "reference": answer, "kind": "arithmetic"}


def settings(**kw) -> RewardServerConfig:
    base = {"batch_size": 4, "timeout_s": 2.0, "retries": 2, "backoff_s": 0.02, "max_concurrency": 2}
    return RewardServerConfig(**{**base, **kw})


@pytest.fixture
def server():
    stops = []

    def serve(mode="exact", **options):
        url, stats, stop = start(mode, **options)
        stops.append(stop)
        return url, stats

    yield serve
    for stop in stops:
        stop()


@pytest.fixture
def client():
    made = []

    def make(url, **kw):
        c = RemoteReward(url, settings(**kw), log=Log())
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------------------------- a good server


def test_exact_rewards_in_order_batched_under_the_concurrency_cap(server, client):
    url, stats = server("exact", delay_s=0.3)  # each request held: the batches overlap, even on a busy host
    c = client(url, batch_size=3, max_concurrency=3)
    items = [item(i, right=i % 3 != 0) for i in range(20)]
    assert c.score(items) == [0.0 if i % 3 == 0 else 1.0 for i in range(20)]
    assert sorted(stats.batch_sizes) == [2] + [3] * 6
    assert 1 < stats.max_in_flight <= 3
    assert c.requests == 7 and not c.failures
    assert c.score([]) == [] and c.requests == 7


def test_the_cap_holds_with_many_batches(server, client):
    # Each request held 0.3 s, so the pool's two threads overlap even on a busy host (at 0.02 s they once did not).
    url, stats = server("exact", delay_s=0.3)
    c = client(url, batch_size=1, max_concurrency=2)
    assert c.score([item(i) for i in range(6)]) == [1.0] * 6
    assert stats.max_in_flight == 2 and stats.batch_sizes == [1] * 6


def test_details_are_only_logged(server, client):
    url, _ = server("garbage", garbage="details")
    c = client(url)
    assert c.score([item(1), item(2, right=False)]) == [1.0, 0.0]
    assert not c.failures
    logged = [kw for level, event, kw in c.log.lines if event == "reward_server_details"]
    assert len(logged) == 1 and "judge says so" in logged[0]["details"]


# ---------------------------------------------------------------------------------------------- failures


def test_slow_server_scores_zero_for_timeout_within_the_bound(server, client):
    url, stats = server("slow", delay_s=5.0)
    c = client(url, timeout_s=0.3, retries=1, backoff_s=0.05, batch_size=4, max_concurrency=2)
    items = [item(i) for i in range(10)]  # 3 batches, 2 in flight: two waves
    bound = c.max_block_s(len(items))
    assert bound == pytest.approx(2 * (2 * 0.3 + 1.25 * 0.05))
    t0 = time.monotonic()
    rewards = c.score(items)
    elapsed = time.monotonic() - t0
    assert rewards == [0.0] * 10
    assert c.failures == {"timeout": 10} and c.requests == 6 and stats.requests == 6
    assert 2 * 0.3 * 2 <= elapsed <= bound + 0.3
    warned = [(level, kw) for level, event, kw in c.log.lines if event == "reward_server_failures"]
    assert warned == [("warning", {"url": url, "samples": 10, "timeout": 10})]


BATCH_REASON = {"not_json": "bad_answer", "not_object": "bad_answer", "no_rewards": "bad_answer",
                "short": "bad_answer", "huge": "too_large", "huge_declared": "too_large", "not_http": "bad_answer"}
ITEM_REASON = {"null": "no_reward", "string": "not_a_number", "bool": "not_a_number", "nan": "nan", "inf": "nan",
               "big_int": "nan", "list": "not_a_number", "no_reward_field": "not_a_number", "details": None}


def test_garbage_of_each_kind_is_counted_and_spares_the_other_samples(server, client):
    assert set(BATCH_REASON) == set(GARBAGE_BATCH) and set(ITEM_REASON) == set(GARBAGE_ITEM)
    url, stats = server("garbage", garbage="marked")
    c = client(url, batch_size=2, max_concurrency=3, retries=2)
    items, expected, reasons = [], [], {}
    for n, kind in enumerate(list(BATCH_REASON) + list(ITEM_REASON)):
        # Each batch: a sample asking for the garbage, then a good one.
        items += [item(100 + n, prompt=f"garbage:{kind}"), item(n)]
        spoilt = kind in BATCH_REASON
        reason = BATCH_REASON.get(kind) or ITEM_REASON.get(kind)
        expected += [1.0 if reason is None else 0.0, 0.0 if spoilt else 1.0]
        if reason:
            reasons[reason] = reasons.get(reason, 0) + (2 if spoilt else 1)
    items += [item(i, right=i % 2 == 0) for i in range(50, 56)]  # three good batches
    expected += [1.0 if i % 2 == 0 else 0.0 for i in range(50, 56)]
    t0 = time.monotonic()
    assert c.score(items) == expected
    assert time.monotonic() - t0 < 3.0
    assert dict(c.failures) == reasons
    assert c.requests == len(items) // 2 == stats.requests  # garbage is not retried


def test_unencodable_reference_fails_without_a_request(server, client):
    url, stats = server("exact")
    c = client(url, batch_size=2)
    bad = {**item(3), "reference": {1, 2}}  # a set is not JSON
    assert c.score([item(1), item(2), bad, item(4)]) == [1.0, 1.0, 0.0, 0.0]
    assert c.failures == {"unencodable": 2} and c.requests == 1 == stats.requests


@pytest.mark.parametrize("status,fail_first,retries,reason,requests", [
    (503, 2, 3, None, 3),  # retried until it answers
    (429, 1, 1, None, 2),
    (503, 99, 2, "http_5xx", 3),  # still failing after the last retry
    (429, 99, 1, "http_429", 2),
    (400, 99, 3, "http_4xx", 1),  # 4xx: not retried
    (404, 99, 3, "http_4xx", 1),
    (302, 99, 3, "bad_status", 1),
])
def test_status_codes_retry_or_not(server, client, status, fail_first, retries, reason, requests):
    url, stats = server("flaky", fail_first=fail_first, status=status)
    c = client(url, batch_size=8, max_concurrency=1, retries=retries, backoff_s=0.01)
    rewards = c.score([item(i, right=i != 2) for i in range(5)])
    if reason is None:
        assert rewards == [1.0, 1.0, 0.0, 1.0, 1.0] and not c.failures
    else:
        assert rewards == [0.0] * 5 and c.failures == {reason: 5}
    assert c.requests == requests == stats.requests


def test_backoff_doubles_between_tries(server, client):
    url, stats = server("flaky", fail_first=3, status=503)
    c = client(url, batch_size=8, max_concurrency=1, retries=3, backoff_s=0.1)
    assert c.score([item(1)]) == [1.0]
    gaps = [b - a for a, b in zip(stats.arrivals, stats.arrivals[1:])]
    assert len(gaps) == 3 and c.requests == 4
    for k, gap in enumerate(gaps):  # backoff_s * 2**k, jitter -25 % .. +25 % (+ the request itself)
        assert 0.75 * 0.1 * 2**k <= gap <= 1.25 * 0.1 * 2**k + 0.1, gaps


def test_backoff_is_jittered(server, client):
    url, stats = server("flaky", fail_first=1, status=503)
    c = client(url, batch_size=8, max_concurrency=1, retries=1, backoff_s=0.1)
    asked = []

    class Highest:
        def uniform(self, low, high):
            asked.append((low, high))
            return high

    c._rng = Highest()
    assert c.score([item(1)]) == [1.0]
    assert asked == [(0.75, 1.25)]
    assert stats.arrivals[1] - stats.arrivals[0] >= 0.125


def test_close_cuts_a_backoff_short(server, client):
    url, stats = server("flaky", fail_first=99, status=503)
    c = client(url, batch_size=8, max_concurrency=1, retries=3, backoff_s=5.0)
    threading.Timer(0.2, c.close).start()
    t0 = time.monotonic()
    assert c.score([item(1)]) == [0.0]
    assert time.monotonic() - t0 < 1.0
    assert c.failures == {"http_5xx": 1} and c.requests == 1


def test_nothing_listening_is_unreachable_quickly(client):
    c = client(f"http://127.0.0.1:{free_port()}/score", retries=2, backoff_s=0.02, timeout_s=0.5)
    t0 = time.monotonic()
    assert c.score([item(i) for i in range(6)]) == [0.0] * 6
    assert time.monotonic() - t0 < c.max_block_s(6)
    assert c.failures == {"unreachable": 6} and c.requests == 2 * 3


@pytest.mark.parametrize("how", ["close", "partial"])
def test_connection_closed_mid_answer_is_unreachable(server, client, how):
    url, stats = server("die", die=how)
    c = client(url, retries=1, timeout_s=0.5)
    t0 = time.monotonic()
    assert c.score([item(i) for i in range(3)]) == [0.0] * 3
    assert time.monotonic() - t0 < 0.5
    assert c.failures == {"unreachable": 3} and c.requests == 2 == stats.requests


def test_trickling_server_is_cut_at_the_deadline(client):
    """A server that sends a byte now and then: each read is quick, the try as a whole is not."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(5)

    def trickle():
        conn, _ = listener.accept()
        with conn:
            try:
                conn.recv(65536)
                for byte in b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\n[1.0]":
                    conn.sendall(bytes([byte]))
                    time.sleep(0.05)
            except OSError:
                pass

    t = threading.Thread(target=trickle, daemon=True)
    t.start()
    c = client(f"http://127.0.0.1:{listener.getsockname()[1]}/", retries=0, timeout_s=0.3)
    t0 = time.monotonic()
    assert c.score([item(1)]) == [0.0]
    assert time.monotonic() - t0 < 0.3 + 0.2
    assert c.failures == {"timeout": 1}
    listener.close()


# ---------------------------------------------------------------------------------------------- configuration


def test_auth_header_is_sent_from_the_environment(server, client, monkeypatch):
    monkeypatch.setenv("REWARD_TEST_KEY", "s3cret")
    url, stats = server("exact", api_key="s3cret")
    c = client(url, api_key_env="REWARD_TEST_KEY", batch_size=2)
    assert c.score([item(i) for i in range(3)]) == [1.0] * 3
    assert stats.auth == ["Bearer s3cret"] * 2
    anonymous = client(url)
    assert anonymous.score([item(1)]) == [0.0] and anonymous.failures == {"http_4xx": 1}
    assert stats.auth[-1] is None


def test_missing_key_or_bad_url_is_a_config_error(monkeypatch):
    monkeypatch.delenv("REWARD_TEST_NO_SUCH_KEY", raising=False)
    with pytest.raises(ValueError, match="api_key_env.*REWARD_TEST_NO_SUCH_KEY"):
        RemoteReward("http://127.0.0.1:1/", settings(api_key_env="REWARD_TEST_NO_SUCH_KEY"))
    monkeypatch.setenv("REWARD_TEST_BAD_KEY", "a\r\nX-Evil: 1")
    with pytest.raises(ValueError, match="control characters"):
        RemoteReward("http://127.0.0.1:1/", settings(api_key_env="REWARD_TEST_BAD_KEY"))
    for url in ("ftp://host/x", "http:///nohost", "http://host:99999/x"):
        with pytest.raises(ValueError, match="task.reward"):
            RemoteReward(url, settings())


def test_score_after_close_is_an_error():
    c = RemoteReward("http://127.0.0.1:1/", settings())
    c.close()
    c.close()
    with pytest.raises(RuntimeError):
        c.score([item(1)])


# ---------------------------------------------------------------------------------------------- as a process


def ready_port(proc: subprocess.Popen, deadline_s: float = 10.0) -> int:
    """The port of the server's `READY <port>` line, read under a deadline."""
    ready, _, _ = select.select([proc.stdout], [], [], deadline_s)
    assert ready, "no READY line"
    line = proc.stdout.readline().split()
    assert line[0] == "READY", line
    return int(line[1])


@pytest.mark.slow
def test_server_process_scores_then_dies_mid_request(client):
    cmd = [sys.executable, "-m", "tests.integration.reward_server", "--port", "0"]
    with subprocess.Popen(cmd + ["--mode", "exact"], cwd=ROOT, stdout=subprocess.PIPE, text=True) as proc:
        try:
            c = client(f"http://127.0.0.1:{ready_port(proc)}/score", batch_size=2)
            assert c.score([item(i, right=i != 1) for i in range(5)]) == [1.0, 0.0, 1.0, 1.0, 1.0]
        finally:
            proc.terminate()
            proc.wait(timeout=10)
    with subprocess.Popen(cmd + ["--mode", "die", "--die", "exit"], cwd=ROOT, stdout=subprocess.PIPE,
                          text=True) as proc:
        try:
            c = client(f"http://127.0.0.1:{ready_port(proc)}/score", retries=2, backoff_s=0.02, timeout_s=1.0)
            t0 = time.monotonic()
            assert c.score([item(1)]) == [0.0]
            assert time.monotonic() - t0 < c.max_block_s(1)
            assert c.failures == {"unreachable": 1} and c.requests == 3
            assert proc.wait(timeout=10) == 3
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
