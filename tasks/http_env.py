"""The HTTP environment (task.env.kind = "http"): a gym-style server outside the process answers every turn.

Producer: the server at `task.env.http_url`, written by the user (example: docs/examples/http_env_server.py).
Consumer: the actor's environment threads (tasks/environment.py), one `HttpEpisode` per sample. Nothing here runs
on the decode loop; each call blocks its environment thread until the server answers or the deadline passes.

Protocol (the contract a server implements; requests and answers are UTF-8 JSON objects, requests are sent with
`Content-Type: application/json` and `Connection: close`; redirects are not followed):

    POST {http_url}/reset  {"problem_id": int, "prompt": str, "reference": str | null}
        -> 200 {"episode_id": str (1 to 256 chars), "observation": str}
       `prompt` is the problem's prompt tokens as text (special tokens kept); `reference` its answer when that is
       a string, else null. The observation (may be "") is appended after the prompt, before the first turn.
    POST {http_url}/step   {"episode_id": str, "action": str, "turn": int}
        -> 200 {"observation": str, "reward": number, "done": bool}
       `action` is the policy's turn as text (special tokens kept): it ends with `task.env.call_end` or with eos.
       `turn` counts the episode's steps from 0: a retried step repeats it, so a server can answer a repeat from
       its cache instead of applying the action twice. `reward` must be a finite number; it is used only when
       `done` (the episode's reward, reason "answered"). The observation is appended as context (never trained).
    POST {http_url}/close  {"episode_id": str}
        -> anything; best effort: one try, a 1 s deadline, errors ignored. Sent once per episode that reset.

Deadlines and retries. One reset or one step, retries included, ends within `task.env.step_timeout_s`. Each
request (connect, send, read, all together) has `task.env.http_timeout_s`, capped by what is left of that. A
connection error, a timeout or a 5xx status is retried up to `task.env.http_retries` times, after a short
backoff; any other status, and any answer refused below, is not. One connection per request (no keep-alive).
Name resolution (getaddrinfo) is outside the deadline: use an IP address or a name that resolves locally.

Nothing the server sends is trusted. An answer is refused unless its status is 2xx and its body is at most 1 MiB
(read at most that + 1 byte, a larger Content-Length is refused unread), UTF-8, a JSON object (NaN and Infinity
refused) with the fields above of exactly those types (a bool is not a number, 1 is not a bool; other fields are
ignored), and its observation at most 64 Ki characters with no control characters but newline and tab. The
observation is tokenised once with the policy's tokenizer and cut to `task.env.max_observation_tokens` (`cut`).

Failures never raise out of `step`; they end the episode with reward 0 (tasks/environment.py):
  env_timeout   the deadline passed (the last try timed out, or no time was left for another)
  env_error     anything else: connection refused after the retries, 5xx after the retries, another status,
                a refused answer, a step after the episode ended
`start()` returns tokens, not an Observation: when the reset fails it returns no tokens and remembers why, and
the first `step()` returns that failure at once without contacting the server.
"""

from __future__ import annotations

import http.client
import json
import math
import time
import urllib.parse

import numpy as np
from asyncor.tasks.environment import EpisodeProblem, Observation
from asyncor.tasks.tool_env import single_token
from asyncor.tasks.deadline_socket import DeadlineSocket

MAX_BODY_BYTES = 1 << 20
MAX_OBSERVATION_CHARS = 1 << 16
MAX_EPISODE_ID_CHARS = 256
CLOSE_TIMEOUT_S = 1.0  # /close only frees the server's state: not worth holding an environment thread for
BACKOFF_S = 0.05  # before retry k: BACKOFF_S * 2**k, so a restarting server is not hammered

_EMPTY = np.zeros(0, np.int32)


class _Failed(Exception):
    """A reset or step that failed, with its end reason (env_timeout | env_error)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class _Refused(Exception):
    """The server answered something that is not an answer of the protocol (never retried)."""


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def parse_answer(raw: bytes) -> dict:
    """An untrusted body as a JSON object; `_Refused` otherwise."""
    if len(raw) > MAX_BODY_BYTES:
        raise _Refused("body over 1 MiB")
    try:
        value = json.loads(raw.decode("utf-8"), parse_constant=_refuse_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:  # RecursionError: deeply nested arrays
        raise _Refused(f"not UTF-8 JSON: {type(e).__name__}") from None
    if not isinstance(value, dict):
        raise _Refused("not a JSON object")
    return value


def _field(answer: dict, name: str, kind: type):
    """`answer[name]` if it is of `kind` (float: a finite number); `_Failed("env_error")` otherwise."""
    value = answer.get(name)
    # bool is an int subclass: True is neither a reward nor a count, and 1 is not a bool.
    if kind is bool:
        ok = isinstance(value, bool)
    elif kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    else:
        ok = isinstance(value, kind)
    if not ok:
        raise _Failed("env_error")
    return value


class HttpEpisode:
    def __init__(self, env: HttpEnvironment, problem: EpisodeProblem):
        self.env, self.problem = env, problem
        self.episode_id: str | None = None
        self.turn = 0
        self.failure = ""  # the reset's failure, or env_error once the episode ended: what the next step returns
        self.closed = False

    def start(self) -> np.ndarray:
        env, problem = self.env, self.problem
        deadline = time.monotonic() + env.step_timeout_s
        try:
            ref = problem.reference if isinstance(problem.reference, str) else None
            body = {"problem_id": int(problem.prompt_id), "prompt": env.codec.decode_all(problem.prompt_ids),
                    "reference": ref}
            answer = env.post("/reset", body, deadline, env.settings.http_retries)
            episode_id = _field(answer, "episode_id", str)
            if not 1 <= len(episode_id) <= MAX_EPISODE_ID_CHARS:
                raise _Failed("env_error")
            ids, _ = env.tokens(_field(answer, "observation", str))
        except _Failed as f:
            self.failure = f.reason
            return _EMPTY
        except Exception:  # noqa: BLE001 - a failed reset is the episode's env_error, never the actor's
            self.failure = "env_error"
            return _EMPTY
        self.episode_id = episode_id
        return ids

    def step(self, turn_ids: np.ndarray) -> Observation:
        if self.failure or self.episode_id is None:  # the reset failed (or never ran), or the episode ended
            return Observation(done=True, reward=0.0, reason=self.failure or "env_error")
        env = self.env
        deadline = time.monotonic() + env.step_timeout_s
        try:
            body = {"episode_id": self.episode_id, "action": env.codec.decode_all(turn_ids), "turn": self.turn}
            self.turn += 1
            answer = env.post("/step", body, deadline, env.settings.http_retries)
            done = _field(answer, "done", bool)
            reward = _field(answer, "reward", float)
            ids, cut = env.tokens(_field(answer, "observation", str))
        except _Failed as f:
            self.failure = "env_error"
            return Observation(done=True, reward=0.0, reason=f.reason)
        except Exception:  # noqa: BLE001 - a step never raises: what went wrong ends the episode, not the actor
            self.failure = "env_error"
            return Observation(done=True, reward=0.0, reason="env_error")
        if done:
            self.failure = "env_error"  # a step after the end is not a step of this episode
            return Observation(ids, done=True, reward=float(reward), reason="answered", cut=cut)
        return Observation(ids, cut=cut)

    def close(self) -> None:
        if self.closed or self.episode_id is None:
            return
        self.closed = True
        deadline = time.monotonic() + min(CLOSE_TIMEOUT_S, self.env.settings.http_timeout_s)
        try:
            self.env.post("/close", {"episode_id": self.episode_id}, deadline, retries=0)
        except Exception:  # noqa: BLE001, S110 - best effort: the episode is over whatever the server says
            pass


class HttpEnvironment:
    def __init__(self, settings, codec):
        self.settings, self.codec = settings, codec
        self.turn_end_ids = (single_token(codec, settings.call_end, "call_end"),)
        self.max_turns = settings.max_turns
        self.max_observation_tokens = settings.max_observation_tokens
        self.step_timeout_s = settings.step_timeout_s
        url = urllib.parse.urlsplit(settings.http_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f'task.env.http_url = {settings.http_url!r}: needs "http://host:port"')
        self.https = url.scheme == "https"
        self.host = url.hostname
        self.port = url.port  # ValueError on a bad port: at construction, not at the first step
        self.prefix = url.path.rstrip("/")

    def open(self, problem: EpisodeProblem) -> HttpEpisode:
        return HttpEpisode(self, problem)

    def close(self) -> None:
        pass

    def tokens(self, text: str) -> tuple[np.ndarray, bool]:
        """An observation's tokens, cut to `max_observation_tokens`; `_Failed("env_error")` if it is refused."""
        if len(text) > MAX_OBSERVATION_CHARS:
            raise _Failed("env_error")
        if any((ord(c) < 32 and c not in "\n\t") or ord(c) == 127 for c in text):
            raise _Failed("env_error")
        try:
            text.encode("utf-8")  # a JSON "\ud800" escape is a lone surrogate: not text the tokenizer takes
        except UnicodeEncodeError:
            raise _Failed("env_error") from None
        ids = self.codec.encode_text(text)
        cut = len(ids) > self.max_observation_tokens
        return np.ascontiguousarray(ids[: self.max_observation_tokens], dtype=np.int32), cut

    def post(self, path: str, payload: dict, deadline: float, retries: int) -> dict:
        """The server's JSON object answer to `payload`, tried up to 1 + `retries` times before `deadline`;
        `_Failed(reason)` otherwise."""
        body = json.dumps(payload).encode("utf-8")
        reason = "env_error"
        for attempt in range(retries + 1):
            if attempt:
                time.sleep(max(min(BACKOFF_S * 2 ** (attempt - 1), deadline - time.monotonic()), 0.0))
            now = time.monotonic()
            if now >= deadline:
                raise _Failed("env_timeout")
            try:
                status, raw = self._request(path, body, min(now + self.settings.http_timeout_s, deadline))
            except TimeoutError:
                reason = "env_timeout"
                continue
            except OSError:  # refused, reset, unreachable; http.client's RemoteDisconnected is one
                reason = "env_error"
                continue
            except (http.client.HTTPException, _Refused):  # not HTTP, or a body over the limit: not retried
                raise _Failed("env_error") from None
            if 500 <= status < 600:
                reason = "env_error"
                continue
            if not 200 <= status < 300:
                raise _Failed("env_error")
            try:
                return parse_answer(raw)
            except _Refused:
                raise _Failed("env_error") from None
        raise _Failed(reason)

    def _request(self, path: str, body: bytes, deadline: float) -> tuple[int, bytes]:
        """One POST: (status, body of at most MAX_BODY_BYTES + 1 bytes), everything within `deadline`."""
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("HTTP request deadline")
        cls = http.client.HTTPSConnection if self.https else http.client.HTTPConnection
        conn = cls(self.host, self.port, timeout=left)
        sock = None
        try:
            conn.connect()
            sock = conn.sock
            conn.sock = DeadlineSocket(sock, deadline)
            conn.request("POST", self.prefix + path, body=body,
                         headers={"Content-Type": "application/json", "Accept": "application/json",
                                  "Connection": "close"})
            resp = conn.getresponse()
            declared = resp.getheader("Content-Length")
            if declared is not None and declared.strip().isdigit() and int(declared) > MAX_BODY_BYTES:
                raise _Refused("Content-Length over 1 MiB")
            raw = resp.read(MAX_BODY_BYTES + 1)
            if len(raw) > MAX_BODY_BYTES:
                raise _Refused("body over 1 MiB")
            return resp.status, raw
        finally:
            conn.close()
            if sock is not None:
                sock.close()
