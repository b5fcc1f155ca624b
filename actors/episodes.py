"""Multi-turn episodes in the streaming actor (DESIGN §11): turns in the engine, environment steps beside it.

An episode is one sequence of its group. Each policy turn is one engine request on the prompt and every token so
far (policy and environment tokens exactly as they were sampled and returned: nothing is re-tokenised), stopping
at eos, at the environment's turn-end tokens, or at the episode's token limit. When a turn ends the sequence
leaves the engine (`InFlight.detach`: its slot is free for other sequences) and its environment step runs on one
of `task.env.workers` threads (an environment whose steps take microseconds, `inline`, runs them on the loop);
the loop polls the answers each tick, appends the observation and starts the
next turn, whose prefix the engine finds in its prefix cache when the weights are unchanged (requests are salted
by the version they start on, so KV of old weights is never reused). Weights may change between turns
(`update_mode = "inflight"`: also between decoding steps within a turn); each token keeps the version that
sampled it and the group's staleness counts from its oldest policy token.

An episode ends (`InFlight.finish`) when the environment says done, at the token limit ("length"), after
`max_turns` turns that still call ("turn_limit", reward 0), or when the environment fails (its reason, reward 0):
a step that raises, answers what is not an `Observation`, returns ids outside the vocabulary, or is still
running `step_timeout_s` after it was due. A late step's thread is abandoned (its answer is ignored); tools and
the HTTP client bound their own time, so abandoned threads end.

Producer: the rollout loop (`open`, `turn_ended`). Consumers: the environment threads. Blocking: none on the
loop (`poll` takes only finished steps). Bounded: at most the granted episodes wait, each with one step at a time;
the executor queues steps beyond `workers` (a queued step's deadline counts from its submission).
"""

from __future__ import annotations

import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field

import numpy as np

from asyncor.actors.sequences import Sequence
from asyncor.tasks.environment import END_REASONS, EpisodeProblem, Observation


@dataclass
class EpisodeStats:
    """Per-actor tallies of finished episodes (the actor's summary and metrics)."""

    episodes: int = 0
    turns: dict[int, int] = field(default_factory=dict)  # turns -> episodes
    end_reasons: dict[str, int] = field(default_factory=lambda: {r: 0 for r in END_REASONS})
    env_s: float = 0.0  # time episodes waited for their environment (openings and steps), summed
    env_steps: int = 0  # environment calls: each episode's opening and every step
    policy_tokens: int = 0
    env_tokens: int = 0
    observations_cut: int = 0
    resumed_tokens: int = 0  # prompt tokens of turns 2.. (the prefix the engine re-reads)
    cached_tokens: int = 0  # of which the prefix cache held

    def add(self, seq: Sequence) -> None:
        self.episodes += 1
        self.turns[seq.turns] = self.turns.get(seq.turns, 0) + 1
        self.end_reasons[seq.end_reason] = self.end_reasons.get(seq.end_reason, 0) + 1
        self.env_s += seq.env_s
        policy = int(sum(seq.mask))
        self.policy_tokens += policy
        self.env_tokens += len(seq.mask) - policy
        self.observations_cut += seq.cut_observations
        self.resumed_tokens += seq.resumed_tokens
        self.cached_tokens += seq.cached_tokens

    def summary(self) -> dict:
        turns = sum(k * v for k, v in self.turns.items())
        return {"episodes": self.episodes, "turns_mean": turns / self.episodes if self.episodes else 0.0,
                "turns": {str(k): v for k, v in sorted(self.turns.items())},
                "tokens_per_turn": self.policy_tokens / turns if turns else 0.0,
                "env_tokens_per_episode": self.env_tokens / self.episodes if self.episodes else 0.0,
                "env_s": self.env_s, "env_s_per_step": self.env_s / self.env_steps if self.env_steps else 0.0,
                "env_steps": self.env_steps, "end_reasons": dict(self.end_reasons),
                "observations_cut": self.observations_cut,
                "prefix_cached_frac": self.cached_tokens / self.resumed_tokens if self.resumed_tokens else 0.0}


@dataclass
class _Step:
    seq: Sequence
    future: Future
    due: float  # perf_counter deadline
    submitted: float
    opening: bool  # Environment.open + Episode.start, not a turn's step


class Episodes:
    """The turns of an actor's episodes: open, record a turn's tokens, step the environment, start the next turn,
    end. The loop that owns the engine binds it (`bind`): the rollout loop, or evaluation (`run_episodes`)."""

    def __init__(self, env, vocab_size: int, eos_id: int, workers: int):
        self.env, self.vocab_size, self.eos_id = env, vocab_size, eos_id
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix="env")
        self.steps: list[_Step] = []
        self.stats = EpisodeStats()
        self.inflight = self.add_turn = self.complete = None

    def bind(self, inflight, add_turn, complete) -> None:
        """`inflight`: the loop's InFlight; `add_turn(seq, request_id, prompt_ids)` starts a turn in the engine;
        `complete(group)` takes a group whose episodes all ended."""
        self.inflight, self.add_turn, self.complete = inflight, add_turn, complete

    # ------------------------------------------------------------------ the loop's side

    def record(self, d, version: int) -> None:
        """An engine delta of an episode's turn; when the turn ended, out of the engine and on to the environment."""
        self.inflight.record(d.request_id, d.token_ids, d.logprobs, version, None, d.versions)
        if d.finish_reason is None:
            return
        seq = self.inflight.detach(d.request_id)
        if seq is None:  # aborted by a restart, its last output already queued
            return
        if seq.turns > 1:
            seq.cached_tokens += getattr(d, "cached_tokens", 0) or 0
        end = self.turn_ended(seq, d.finish_reason)
        if end is not None:
            self.end(seq, *end)

    def next_turns(self) -> None:
        """Episodes whose environment answered: end them, or append the observation and start the next turn."""
        for seq, obs in self.poll():
            if obs.done:
                self.end(seq, "stop" if obs.reason == "answered" else "abort", obs.reason, obs.reward)
                continue
            ids = obs.token_ids[: max(seq.tokens_left, 0)]
            self.inflight.observe(seq, ids)
            seq.cut_observations += int(obs.cut or len(ids) < len(obs.token_ids))
            if seq.tokens_left <= 0:
                self.end(seq, "length", "length", None)
                continue
            prompt = seq.resume_prompt()
            if seq.turns:
                seq.resumed_tokens += len(prompt)
            self.add_turn(seq, self.inflight.attach(seq), prompt)

    def end(self, seq: Sequence, finish_reason: str, end_reason: str, reward: float | None) -> None:
        group = self.inflight.finish(seq, finish_reason, end_reason, reward)
        self.ended(seq)
        if group is not None:
            self.complete(group)

    def open(self, seqs: list[Sequence]) -> None:
        """Start each sequence's episode (Environment.open + Episode.start) on an environment thread."""
        for seq in seqs:
            problem = EpisodeProblem(seq.prompt.prompt_id, seq.prompt.token_ids, seq.prompt.reference)
            self._submit(seq, lambda p=problem: self._open(p), opening=True)

    def turn_ended(self, seq: Sequence, finish_reason: str) -> tuple[str, str, float | None] | None:
        """A turn of `seq` (detached) ended with `finish_reason`; the episode's (finish, end reason, reward) if
        it ends now, else None (its environment step was submitted)."""
        if finish_reason == "length" or seq.tokens_left <= 0:
            return "length", "length", None
        ended_by_call = bool(seq.tokens) and seq.tokens[-1] != self.eos_id
        if ended_by_call and seq.turns >= self.env.max_turns:
            return "length", "turn_limit", 0.0
        turn = np.asarray(seq.last_turn, dtype=np.int32)
        self._submit(seq, lambda e=seq.episode, t=turn: e.step(t), opening=False)
        return None

    def poll(self) -> list[tuple[Sequence, Observation]]:
        """The steps that finished (or failed, or passed their deadline), each with its checked observation."""
        now, out, keep = time.perf_counter(), [], []
        for step in self.steps:
            if step.future.done():
                obs = self._checked(step)
            elif now > step.due:
                step.future.cancel()  # a queued step never runs; a running one is abandoned
                obs = Observation(done=True, reward=0.0, reason="env_timeout")
            else:
                keep.append(step)
                continue
            step.seq.env_s += now - step.submitted
            self.stats.env_steps += 1  # an episode's opening (an HTTP reset) counts as a step too
            out.append((step.seq, obs))
        self.steps = keep
        return out

    def waiting(self) -> int:
        return len(self.steps)

    def wait(self, timeout_s: float) -> None:
        """Block until a step finishes, the earliest deadline passes, or `timeout_s` (the loop has nothing else)."""
        if not self.steps:
            return
        due = min(step.due for step in self.steps) - time.perf_counter()
        wait([step.future for step in self.steps], timeout=max(0.0, min(timeout_s, due)), return_when=FIRST_COMPLETED)

    def ended(self, seq: Sequence) -> None:
        """Count a finished episode and close it (on an environment thread: closing may talk to a server)."""
        self.stats.add(seq)
        if seq.episode is not None:
            try:
                self.pool.submit(_close_quietly, seq.episode)
            except RuntimeError:  # the actor is stopping (the pool is shut down): nothing left to free
                pass

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------------ the threads' side

    def _open(self, problem: EpisodeProblem) -> tuple[object, np.ndarray]:
        episode = self.env.open(problem)
        return episode, episode.start()

    def _submit(self, seq: Sequence, fn, opening: bool) -> None:
        now = time.perf_counter()
        if getattr(self.env, "inline", False):  # microseconds of work (the calculator): no thread hop, no GIL wait
            future = Future()
            try:
                future.set_result(fn())
            except Exception as exc:  # noqa: BLE001 - checked like a thread's (`_checked`)
                future.set_exception(exc)
        else:
            future = self.pool.submit(fn)
        self.steps.append(_Step(seq, future, now + self.env.step_timeout_s, now, opening))

    def _checked(self, step: _Step) -> Observation:
        """The step's answer, checked: anything but an Observation of in-vocabulary ids is an env_error."""
        try:
            result = step.future.result()
        except Exception:  # noqa: BLE001 - an environment's bug ends its episode, never the actor
            return Observation(done=True, reward=0.0, reason="env_error")
        if step.opening:  # (episode, start tokens)
            step.seq.episode, ids = result
            result = Observation(ids) if isinstance(ids, np.ndarray) else None
        if not isinstance(result, Observation) or not self._valid_ids(result.token_ids):
            return Observation(done=True, reward=0.0, reason="env_error")
        if result.done and (result.reason not in END_REASONS or (
                result.reward is not None and not (isinstance(result.reward, (int, float))
                                                   and np.isfinite(result.reward)))):
            return Observation(done=True, reward=0.0, reason="env_error")
        return result

    def _valid_ids(self, ids) -> bool:
        if not isinstance(ids, np.ndarray) or ids.ndim != 1 or (len(ids) and ids.dtype.kind not in "iu"):
            return False
        return not len(ids) or (int(ids.min()) >= 0 and int(ids.max()) < self.vocab_size)


def _close_quietly(episode) -> None:
    try:
        episode.close()
    except Exception:  # noqa: BLE001 - closing is best effort
        pass


def run_episodes(engine, env, problems: list, k: int, temperature: float, top_p: float, max_tokens: int,
                 eos_id: int, vocab_size: int, workers: int) -> tuple[list, EpisodeStats]:
    """`k` episodes of each problem (tasks/task.py Problem) on the weights in `engine`, with nothing else running
    (evaluation): the groups, in problem order, and their tallies. The same turns as the rollout loop's. Sampling
    follows the engine's seeded stream (a fresh engine repeats itself; eval.seed does not apply)."""
    from asyncor.actors.sequences import InFlight, Prompt

    inflight, episodes, done = InFlight(), Episodes(env, vocab_size, eos_id, workers), {}

    def add_turn(seq, request_id, prompt_ids):
        # No per-request seeds: vLLM-CPU fails on a seeded request whose prefill is chunked ("CPU Generator does
        # not use offset"), which one request per episode makes likely; the engine's own seeded stream is used.
        engine.add(request_id, prompt_ids, seq.tokens_left, temperature, top_p, eos_id, salt="eval",
                   extra_stop_ids=env.turn_end_ids)

    episodes.bind(inflight, add_turn, lambda group: done.__setitem__(group.prompt.prompt_id, group))
    try:
        for i, p in enumerate(problems):
            episodes.open(inflight.start_episodes(Prompt(i, p.prompt_ids, p.kind, p.reference), k, max_tokens))
        while len(done) < len(problems):
            episodes.next_turns()
            if engine.running():
                for d in engine.step():
                    episodes.record(d, 0)
            else:
                episodes.wait(0.05)  # every episode waits for its environment
    finally:
        engine.abort(inflight.drop_all())
        episodes.close()
    return [done[i] for i in range(len(problems))], episodes.stats
