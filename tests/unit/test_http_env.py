"""The HTTP environment client (tasks/http_env.py) against a real HTTP server in a thread: a toy game (guess the
number) played over whole episodes, and a server that misbehaves in every way the client must survive: late,
gone, flaky, trickling, and answering garbage. Each failure ends the episode with its reason and reward 0, within
the step deadline."""

import importlib.util
import json
import os
import socket
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from asyncor.configs.schema import Config, EnvConfig
from asyncor.tasks.codec import TextCodec
from asyncor.tasks.environment import EpisodeProblem
from asyncor.tasks.environments import make_environment
from asyncor.tasks.http_env import MAX_BODY_BYTES, HttpEnvironment

from tests.conftest import write_tokenizer_dir

EXAMPLE = os.path.join(os.path.dirname(__file__), "..", "..", "docs", "examples", "http_env_server.py")


# ---------------------------------------------------------------------------------------------- the test server


def secret_of(problem_id: int) -> int:
    return problem_id * 37 % 100


class Game:
    """The server's state: the game's episodes, what it was asked, and the misbehaviour asked of it per path:
    `hostile[path](handler, hit)` answers instead of the game when it returns True (hit counts from 1)."""

    def __init__(self):
        self.hits = Counter()
        self.requests = []  # (path, body)
        self.hostile = {}
        self.secrets = {}
        self.stop = threading.Event()  # set at teardown: late handlers stop waiting
        self.lock = threading.Lock()


class GameHandler(BaseHTTPRequestHandler):
    game: Game

    def log_message(self, *args):
        pass

    def do_POST(self):
        game = self.game
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with game.lock:
            game.hits[self.path] += 1
            game.requests.append((self.path, body))
            hit = game.hits[self.path]
        behave = game.hostile.get(self.path)
        if behave is not None and behave(self, hit):
            return
        if self.path == "/reset":
            answer = {"episode_id": f"ep{body['problem_id']}", "observation": "0-99"}
            game.secrets[answer["episode_id"]] = secret_of(body["problem_id"])
        elif self.path == "/step":
            guess, secret = int("".join(c for c in body["action"] if c.isdigit())), game.secrets[body["episode_id"]]
            answer = {"observation": "=" if guess == secret else "+" if guess < secret else "-",
                      "reward": int(guess == secret), "done": guess == secret}
        else:
            answer = {}
        send(self, json.dumps(answer).encode())


class QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        pass  # a client that left mid-answer is what these tests do on purpose


def send(handler, data: bytes, status: int = 200, length: bool = True) -> None:
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    if length:
        handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)


def serve(handler_cls):
    server = QuietServer(("127.0.0.1", 0), handler_cls)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


@pytest.fixture
def game():
    g = Game()
    server, url = serve(type("H", (GameHandler,), {"game": g}))
    g.url = url
    yield g
    g.stop.set()
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def codec(tmp_path_factory):
    return TextCodec(str(write_tokenizer_dir(tmp_path_factory.mktemp("tok"))))


def make_env(codec, url, **kw):
    settings = {"kind": "http", "http_url": url, "call_end": "=", "step_timeout_s": 2.0, "http_timeout_s": 1.0,
                "http_retries": 2, **kw}
    return HttpEnvironment(EnvConfig(**settings), codec)


def problem(codec, problem_id=7, reference="15"):
    return EpisodeProblem(problem_id, codec.encode_prompt("12+3="), reference)


def started(codec, game, **kw):
    episode = make_env(codec, game.url, **kw).open(problem(codec))
    assert codec.decode_all(episode.start()) == "0-99"
    return episode


def turn(codec, text):
    return codec.encode_text(text)


def timed(fn, *args):
    t0 = time.monotonic()
    result = fn(*args)
    return result, time.monotonic() - t0


def play(codec, episode, limit=10):
    """Binary search on the hints; (observations, the last Observation, guesses)."""
    lo, hi, seen, guesses = 0, 99, [], []
    for _ in range(limit):
        guess = (lo + hi) // 2
        guesses.append(guess)
        obs = episode.step(turn(codec, f"{guess}="))
        if obs.done:
            return seen, obs, guesses
        hint = codec.decode_all(obs.token_ids)
        seen.append(hint)
        lo, hi = (guess + 1, hi) if hint == "+" else (lo, guess - 1)
    raise AssertionError("no answer")


def assert_failed(obs, reason):
    assert obs.done and obs.reward == 0.0 and obs.reason == reason and len(obs.token_ids) == 0


# ---------------------------------------------------------------------------------------------- the game


def test_a_whole_episode_of_several_steps(codec, game):
    env = make_env(codec, game.url)
    assert env.turn_end_ids == (codec.encode_text("=")[0],) and env.max_turns == 4 and env.step_timeout_s == 2.0
    episode = started(codec, game)
    hints, last, guesses = play(codec, episode)
    assert len(guesses) >= 3 and guesses[-1] == secret_of(7)
    assert set(hints) <= {"+", "-"} and len(hints) == len(guesses) - 1
    assert last.done and last.reward == 1.0 and isinstance(last.reward, float) and last.reason == "answered"
    assert codec.decode_all(last.token_ids) == "=" and not last.cut
    # what the server was sent: the prompt and each turn as text, the turn counter
    path, body = game.requests[0]
    assert path == "/reset" and body == {"problem_id": 7, "prompt": "<bos>12+3=", "reference": "15"}
    steps = [b for p, b in game.requests if p == "/step"]
    assert [b["action"] for b in steps] == [f"{g}=" for g in guesses]
    assert [b["turn"] for b in steps] == list(range(len(guesses)))
    assert {b["episode_id"] for b in steps} == {"ep7"}
    # a step after the end is not a step; close is sent once
    assert_failed(episode.step(turn(codec, "1=")), "env_error")
    episode.close()
    episode.close()
    assert game.hits["/close"] == 1 and game.requests[-1] == ("/close", {"episode_id": "ep7"})
    assert game.hits["/step"] == len(guesses)


def test_a_reference_that_is_not_a_string_is_sent_as_null(codec, game):
    make_env(codec, game.url).open(problem(codec, 3, reference={"tests": ["x"]})).start()
    assert game.requests[0][1]["reference"] is None and game.requests[0][1]["problem_id"] == 3


def test_make_environment_builds_the_http_client(codec):
    env = {"kind": "http", "http_url": "http://127.0.0.1:9", "call_end": "="}
    config = Config.model_validate({"task": {"env": env}})
    assert isinstance(make_environment(config, codec), HttpEnvironment)


def test_call_end_must_be_one_token_and_the_url_a_url(codec):
    with pytest.raises(ValueError, match="call_end"):
        make_env(codec, "http://127.0.0.1:9", call_end="==")
    with pytest.raises(ValueError):
        make_env(codec, "http://127.0.0.1:notaport")


def test_the_example_server_plays_the_same_game(codec):
    spec = importlib.util.spec_from_file_location("http_env_server", EXAMPLE)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    server, url = serve(example.Handler)
    try:
        episode = make_env(codec, url).open(problem(codec, 11))
        assert codec.decode_all(episode.start()) == "0-99"
        _, last, guesses = play(codec, episode)
        assert last.reward == 1.0 and guesses[-1] == secret_of(11)
        assert len(example.episodes) == 1
        episode.close()
        assert not example.episodes
    finally:
        server.shutdown()
        server.server_close()


# ---------------------------------------------------------------------------------------------- observations


def test_a_long_observation_is_cut_to_max_observation_tokens(codec, game):
    game.hostile["/step"] = lambda h, hit: send(h, b'{"observation": "123456789", "reward": 0, "done": false}') or True
    obs = started(codec, game, max_observation_tokens=4).step(turn(codec, "5="))
    assert not obs.done and obs.cut and codec.decode_all(obs.token_ids) == "1234"
    assert obs.token_ids.dtype == np.int32


def test_done_with_an_observation_and_a_fractional_reward(codec, game):
    game.hostile["/step"] = lambda h, hit: send(h, b'{"observation": "7", "reward": 0.5, "done": true, "x": 1}') or True
    obs = started(codec, game).step(turn(codec, "5="))
    assert obs.done and obs.reward == 0.5 and obs.reason == "answered" and codec.decode_all(obs.token_ids) == "7"


def test_a_long_reset_observation_is_cut_too(codec, game):
    game.hostile["/reset"] = lambda h, hit: send(h, b'{"episode_id": "e", "observation": "1234567"}') or True
    ids = make_env(codec, game.url, max_observation_tokens=3).open(problem(codec)).start()
    assert codec.decode_all(ids) == "123"


# ---------------------------------------------------------------------------------------------- refused answers

BAD_BODIES = {
    "garbage JSON": b"{not json",
    "not an object": b"[1, 2]",
    "a JSON string": b'"observation"',
    "reward as a string": b'{"observation": "1", "reward": "1", "done": true}',
    "reward as a bool": b'{"observation": "1", "reward": true, "done": true}',
    "done as 1": b'{"observation": "1", "reward": 1, "done": 1}',
    "observation as a number": b'{"observation": 5, "reward": 1, "done": true}',
    "no observation": b'{"reward": 1, "done": true}',
    "reward NaN": b'{"observation": "", "reward": NaN, "done": true}',
    "reward infinite": b'{"observation": "", "reward": 1e999, "done": true}',
    "not UTF-8": b'{"observation": "\xff\xfe", "reward": 0, "done": false}',
    "escape control character": b'{"observation": "1\\u001b[2J", "reward": 0, "done": false}',
    "NUL": b'{"observation": "1\\u00002", "reward": 0, "done": false}',
    "carriage return": b'{"observation": "1\\r2", "reward": 0, "done": false}',
    "lone surrogate": b'{"observation": "1\\ud8002", "reward": 0, "done": false}',
    "observation over 64 Ki chars": json.dumps({"observation": "1" * 70000, "reward": 0, "done": False}).encode(),
    "nested too deep": b"[" * 200000,
    "empty": b"",
}


@pytest.mark.parametrize("name", list(BAD_BODIES))
def test_an_answer_that_is_not_an_observation_is_env_error_and_not_retried(codec, game, name):
    game.hostile["/step"] = lambda h, hit: send(h, BAD_BODIES[name]) or True
    obs, elapsed = timed(started(codec, game).step, turn(codec, "5="))
    assert_failed(obs, "env_error")
    assert game.hits["/step"] == 1 and elapsed < 1.0


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "read-to-close"])
def test_a_body_over_1_mib_is_refused(codec, game, declared):
    huge = json.dumps({"observation": "1" * MAX_BODY_BYTES, "reward": 0, "done": False}).encode()
    game.hostile["/step"] = lambda h, hit: send(h, huge, length=declared) or True
    obs, elapsed = timed(started(codec, game).step, turn(codec, "5="))
    assert_failed(obs, "env_error")
    assert game.hits["/step"] == 1 and elapsed < 1.5


@pytest.mark.parametrize("status", [404, 400, 302])
def test_a_status_other_than_2xx_or_5xx_is_env_error_and_not_retried(codec, game, status):
    game.hostile["/step"] = lambda h, hit: send(h, b'{"observation": "", "reward": 1, "done": true}', status) or True
    assert_failed(started(codec, game).step(turn(codec, "5=")), "env_error")
    assert game.hits["/step"] == 1


@pytest.mark.parametrize("episode_id", ['""', "7", '"' + "e" * 257 + '"', "null"])
def test_a_reset_without_a_usable_episode_id_fails_the_first_step(codec, game, episode_id):
    body = b'{"episode_id": ' + episode_id.encode() + b', "observation": "1"}'
    game.hostile["/reset"] = lambda h, hit: send(h, body) or True
    episode = make_env(codec, game.url).open(problem(codec))
    assert len(episode.start()) == 0
    assert_failed(episode.step(turn(codec, "5=")), "env_error")
    episode.close()
    assert game.hits["/step"] == 0 and game.hits["/close"] == 0


# ---------------------------------------------------------------------------------------------- retries


def test_a_500_then_an_answer_is_retried(codec, game):
    game.hostile["/step"] = lambda h, hit: hit == 1 and (send(h, b"oops", 500) or True)
    obs = started(codec, game).step(turn(codec, "50="))
    assert not obs.done and codec.decode_all(obs.token_ids) == "+"  # secret 59
    assert game.hits["/step"] == 2
    steps = [b for p, b in game.requests if p == "/step"]
    assert steps[0] == steps[1] == {"episode_id": "ep7", "action": "50=", "turn": 0}  # a repeat the server can see


def test_a_dropped_connection_then_an_answer_is_retried(codec, game):
    def drop_once(handler, hit):
        if hit > 1:
            return False
        handler.close_connection = True
        handler.connection.shutdown(socket.SHUT_RDWR)
        return True

    game.hostile["/step"] = drop_once
    obs = started(codec, game).step(turn(codec, "50="))
    assert not obs.done and codec.decode_all(obs.token_ids) == "+" and game.hits["/step"] == 2


def test_500_every_time_is_env_error_after_the_retries(codec, game):
    game.hostile["/step"] = lambda h, hit: send(h, b"", 503) or True
    obs, elapsed = timed(started(codec, game, http_retries=3).step, turn(codec, "5="))
    assert_failed(obs, "env_error")
    assert game.hits["/step"] == 4 and elapsed < 1.0


def test_a_server_gone_is_env_error_after_the_retries_within_the_deadline(codec, game):
    episode = started(codec, game)
    with socket.socket() as s:  # a port nobody listens on: connection refused at once
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    episode.env.port = port
    obs, elapsed = timed(episode.step, turn(codec, "5="))
    assert_failed(obs, "env_error")
    assert elapsed < 1.0  # 3 tries, backoff 0.05 + 0.1 s


def test_a_reset_that_fails_returns_no_tokens_and_its_failure_at_the_first_step(codec, game):
    game.hostile["/reset"] = lambda h, hit: send(h, b"", 500) or True
    episode = make_env(codec, game.url).open(problem(codec))
    ids, elapsed = timed(episode.start)
    assert len(ids) == 0 and ids.dtype == np.int32 and elapsed < 1.0 and game.hits["/reset"] == 3
    obs, elapsed = timed(episode.step, turn(codec, "5="))
    assert_failed(obs, "env_error")
    assert elapsed < 0.01 and game.hits["/step"] == 0
    episode.close()
    assert game.hits["/close"] == 0


# ---------------------------------------------------------------------------------------------- deadlines


def late(game, seconds):
    def answer_late(handler, hit):
        game.stop.wait(seconds)
        send(handler, b'{"observation": "", "reward": 1, "done": true}')
        return True

    return answer_late


def test_a_late_server_is_env_timeout_at_the_step_deadline_retries_included(codec, game):
    game.hostile["/step"] = late(game, 3.0)
    episode = started(codec, game, step_timeout_s=0.6, http_timeout_s=0.25, http_retries=5)
    obs, elapsed = timed(episode.step, turn(codec, "5="))
    assert_failed(obs, "env_timeout")
    assert 0.55 <= elapsed < 0.9
    assert 2 <= game.hits["/step"] <= 3  # retried after each timeout, never past the step's deadline


def test_a_request_deadline_longer_than_the_step_deadline_is_capped(codec, game):
    game.hostile["/step"] = late(game, 3.0)
    episode = started(codec, game, step_timeout_s=0.4, http_timeout_s=5.0)
    obs, elapsed = timed(episode.step, turn(codec, "5="))
    assert_failed(obs, "env_timeout")
    assert 0.35 <= elapsed < 0.7 and game.hits["/step"] == 1


def test_a_server_that_trickles_bytes_cannot_stretch_the_deadline(codec, game):
    def trickle(handler, hit):  # every byte well within a socket timeout, the whole never ending
        handler.wfile.write(b"HTTP/1.0 200 OK\r\nX-Slow: ")
        while not game.stop.wait(0.05):
            handler.wfile.write(b"a")
            handler.wfile.flush()
        return True

    game.hostile["/step"] = trickle
    episode = started(codec, game, step_timeout_s=0.5, http_timeout_s=0.4, http_retries=0)
    obs, elapsed = timed(episode.step, turn(codec, "5="))
    assert_failed(obs, "env_timeout")
    assert 0.35 <= elapsed < 0.7


def test_a_late_reset_returns_within_the_deadline_and_the_first_step_times_out(codec, game):
    game.hostile["/reset"] = late(game, 3.0)
    episode = make_env(codec, game.url, step_timeout_s=0.4, http_timeout_s=1.0).open(problem(codec))
    ids, elapsed = timed(episode.start)
    assert len(ids) == 0 and 0.35 <= elapsed < 0.7
    assert_failed(episode.step(turn(codec, "5=")), "env_timeout")


def test_close_is_best_effort_and_short(codec, game):
    game.hostile["/close"] = late(game, 3.0)
    episode = started(codec, game, http_timeout_s=5.0)
    _, elapsed = timed(episode.close)
    assert elapsed < 1.3 and game.hits["/close"] == 1  # one try, its 1 s deadline
