"""Episodes in the actor's decode loop (actors/episodes.py, actors/rollout.py) with a fake engine, and hostile
environments: every failure ends its episode with reward 0 and a counted reason, within its deadline, and the
loop goes on with the other episodes.

The fake engine ends every turn after two tokens (5, then the turn-end token CALL), reporting each turn whole as
vLLM does for an unstreamed request. The environment decides what a turn gets back, per prompt.
"""

import time

import numpy as np
import pytest

from asyncor.actors.buffer_link import Grant
from asyncor.actors.episodes import Episodes
from asyncor.actors.outbox import score_groups, to_trajectory
from asyncor.actors.refill import RefillRule
from asyncor.actors.rollout import Rollout, RolloutSettings
from asyncor.actors.sequences import Prompt
from asyncor.tasks.environment import Observation
from asyncor.wire.messages import Stop, WaitReply
from asyncor.wire.trajectory import parse_group

EOS, CALL, VOCAB = 2, 7, 16
OBS = np.array([11, 12, 13], np.int32)


class Requests:
    """What every fake engine here shares: requests by id, abort, running."""

    def abort(self, ids):
        for rid in ids:
            self.requests.pop(rid, None)

    def running(self):
        return len(self.requests)


class TurnEngine(Requests):
    """Every request: token 5, then CALL (a stop), reported whole at its end with its versions."""

    def __init__(self):
        self.requests, self.prompts, self.steps, self.version = {}, {}, 0, 0

    def add(self, request_id, prompt, max_tokens, temperature, top_p, stop_token_id, salt, stream=False, n=1,
            seed=None, extra_stop_ids=()):
        assert CALL in extra_stop_ids and not stream and n == 1
        self.requests[request_id] = [max_tokens, [], []]
        self.prompts[request_id] = np.asarray(prompt).tolist()

    def step(self):
        from asyncor.actors.engine import Delta

        self.steps += 1
        out = []
        for rid, (max_tokens, tokens, versions) in list(self.requests.items()):
            tokens.append(5 if not tokens else CALL)
            versions.append(self.version)
            reason = "stop" if tokens[-1] == CALL else ("length" if len(tokens) >= max_tokens else None)
            if reason:
                del self.requests[rid]
                out.append(Delta(rid, np.array(tokens, np.int32), np.full(len(tokens), -0.5, np.float32), reason,
                                 np.array(versions, np.int32)))
        return out

    def load_weights(self, tensors, version):
        self.version = version


class Episode:
    def __init__(self, behaviour):
        self.behaviour, self.turns = behaviour, 0

    def start(self):
        return np.zeros(0, np.int32)

    def step(self, turn_ids):
        self.turns += 1
        b = self.behaviour
        if b == "hang":
            time.sleep(5)
        if b == "raise":
            raise RuntimeError("the tool fell over")
        if b == "not_an_observation":
            return {"observation": "12"}
        if b == "ids_outside_vocab":
            return Observation(np.array([VOCAB + 3], np.int32))
        if b == "float_ids":
            return Observation(np.array([1.5]))
        if b == "nan_reward":
            return Observation(done=True, reward=float("nan"))
        if b == "unknown_reason":
            return Observation(done=True, reward=1.0, reason="because")
        if b == "flood":
            return Observation(np.full(100_000, 11, np.int32))
        if b == "forever":  # never done: the turn limit ends it
            return Observation(OBS)
        if self.turns < 3:  # "good": three turns, then done with the environment's reward
            return Observation(OBS)
        return Observation(done=True, reward=1.0)

    def close(self):
        pass


class Env:
    turn_end_ids, max_turns, max_observation_tokens, step_timeout_s, inline = (CALL,), 4, 8, 0.5, False

    def __init__(self, behaviours):
        self.behaviours = behaviours

    def open(self, problem):
        b = self.behaviours[problem.prompt_id]
        if b == "open_raises":
            raise ConnectionError("the environment server is gone")
        return Episode(b)

    def close(self):
        pass


class Link:
    """Grants every prompt at the first ask; `stop` once every group is back."""

    def __init__(self, n_prompts=0, n=2, max_tokens=40, prompts=None):
        self.prompts = prompts or [Prompt(i, np.array([1, 3, 4], np.int32), "arithmetic", "x")
                                   for i in range(n_prompts)]
        self.n, self.max_tokens, self.outstanding = n, max_tokens, 0

    def ask(self, max_prompts, version, hold_s=0.0):
        if not self.prompts:
            return Stop() if self.outstanding == 0 else WaitReply(retry_s=0.0)
        take, self.prompts = self.prompts[:max_prompts], self.prompts[max_prompts:]
        self.outstanding += len(take)
        return Grant(take, 0, self.n, self.max_tokens)

    def give_back(self, ids):
        pass


class Outbox:
    def __init__(self, link):
        self.link, self.groups = link, []

    def put(self, group, timeout_s):
        self.groups.append(group)
        self.link.outstanding -= 1


class NoWeights:
    def take(self):
        return None

    def wait_for(self, version, timeout_s):
        return None


class Log:
    def warning(self, *a, **k):
        pass

    info = error = warning


class Scorer:
    reward = None  # no task.reward: the task's own scoring

    def score(self, samples):
        return [0.5] * len(samples)  # the verifier's answer for episodes the environment did not score


class Codec:
    def decode(self, ids):
        return ""


def run(behaviours, max_tokens=40, target=8):
    engine, link = TurnEngine(), Link(len(behaviours), max_tokens=max_tokens)
    outbox = Outbox(link)
    episodes = Episodes(Env(behaviours), VOCAB, EOS, workers=4)
    settings = RolloutSettings(refill=RefillRule("inflight", target_sequences=target), group_size=2,
                               stop_token_id=EOS, metrics_every_s=1e9)
    rollout = Rollout(engine, link, NoWeights(), outbox, settings, Log(), episodes=episodes)
    start = time.perf_counter()
    rollout.run()
    return {g.prompt.prompt_id: g for g in outbox.groups}, episodes.stats, engine, time.perf_counter() - start


def test_a_good_episode_takes_three_turns_token_in_token_out():
    groups, stats, engine, _ = run(["good"])
    g = groups[0]
    for s in g.sequences:
        assert s.turns == 3 and s.end_reason == "answered" and s.reward == 1.0
        turn = [5, CALL]
        assert s.tokens == turn + OBS.tolist() + turn + OBS.tolist() + turn
        assert s.mask == [1, 1, 0, 0, 0, 1, 1, 0, 0, 0, 1, 1]
        assert s.versions == [0, 0, -1, -1, -1, 0, 0, -1, -1, -1, 0, 0]
        assert s.logprobs[2:5] == [0.0] * 3
    # Each turn's request was the prompt and every token before it.
    prompts = sorted(engine.prompts.values(), key=len)
    assert prompts[-1] == [1, 3, 4] + g.sequences[0].tokens[:-2]
    # The wire carries the mask; the learner's checks accept it.
    back = parse_group(to_trajectory(g, [1.0, 1.0], 0, 0).to_wire())
    assert back.responses[0].loss_mask.tolist() == g.sequences[0].mask
    assert back.details["turns_max"] == 3
    assert stats.summary()["turns_mean"] == 3 and stats.end_reasons["answered"] == 2


HOSTILE = {  # behaviour -> the reason its episodes end with
    "hang": "env_timeout", "raise": "env_error", "not_an_observation": "env_error",
    "ids_outside_vocab": "env_error", "float_ids": "env_error", "nan_reward": "env_error",
    "unknown_reason": "env_error", "open_raises": "env_error",
}


def test_hostile_environments_end_their_episodes_and_the_loop_goes_on():
    behaviours = ["good"] + list(HOSTILE) + ["good"]
    groups, stats, _, wall = run(behaviours, target=40)
    assert set(groups) == set(range(len(behaviours)))  # every group came out, good ones too
    assert wall < 3.0  # the hanging step cost its 0.5 s deadline, not its 5 s
    for pid, b in enumerate(behaviours):
        for s in groups[pid].sequences:
            if b == "good":
                assert (s.end_reason, s.reward, s.finish_reason) == ("answered", 1.0, "stop")
            else:
                assert (s.end_reason, s.reward, s.finish_reason) == (HOSTILE[b], 0.0, "abort"), b
    assert stats.end_reasons["env_error"] == 2 * 7 and stats.end_reasons["env_timeout"] == 2
    # Their rewards are the defined 0, not the verifier's; the groups still travel and parse.
    rewards = score_groups(Scorer(), Codec(), [groups[1]])
    assert rewards == [0.0, 0.0]
    for g in groups.values():
        parse_group(to_trajectory(g, [0.0] * 2, 0, 0).to_wire())


def test_a_flood_is_cut_to_the_token_limit_and_an_endless_episode_stops_at_the_turn_limit():
    groups, stats, _, _ = run(["flood", "forever"], max_tokens=30)
    for s in groups[0].sequences:
        assert s.end_reason == "length" and len(s.tokens) == 30 and s.finish_reason == "length"
        assert s.reward is None  # scored by the verifier: cut at the limit, so 0 (tasks/scoring.py)
    for s in groups[1].sequences:
        assert s.end_reason == "turn_limit" and s.turns == 4 and s.reward == 0.0
    rewards = score_groups(Scorer(), Codec(), [groups[1]])
    assert rewards == [0.0, 0.0]


@pytest.mark.parametrize("mode", ["inflight", "chunk"])
def test_a_waiting_episode_frees_its_engine_slot(mode):
    """While every episode of a grant waits for a slow environment, the engine holds none of them."""
    engine, link = TurnEngine(), Link(2)
    outbox = Outbox(link)

    class Slow(Env):
        step_timeout_s = 5.0

    class SlowEpisode(Episode):
        def step(self, turn_ids):
            time.sleep(0.2)
            return Observation(done=True, reward=1.0)

    env = Slow(["good", "good"])
    env.open = lambda problem: SlowEpisode("good")
    episodes = Episodes(env, VOCAB, EOS, workers=4)
    settings = RolloutSettings(refill=RefillRule(mode, target_sequences=4, prompts_per_chunk=2), group_size=2,
                               stop_token_id=EOS, metrics_every_s=1e9)
    rollout = Rollout(engine, link, NoWeights(), outbox, settings, Log(), episodes=episodes)
    seen = []
    while not rollout.stopped:
        rollout.tick()
        seen.append((engine.running(), rollout.inflight.waiting()))
    assert any(waiting == 4 and running == 0 for running, waiting in seen)
    assert len(outbox.groups) == 2


def test_the_documented_custom_environment_plays_through_the_actor_loop(tmp_path):
    """docs/examples/guess_env.py, built by `task.env.factory`, under the same loop (tiny tokenizer)."""
    from asyncor.configs.loader import load_config
    from asyncor.tasks.codec import TextCodec
    from asyncor.tasks.environment import EpisodeProblem
    from asyncor.tasks.environments import make_environment
    from tests.conftest import write_tokenizer_dir

    codec = TextCodec(str(write_tokenizer_dir(tmp_path)))
    config = load_config(None, ["task.env.kind=custom", "task.env.factory=asyncor.docs.examples.guess_env:make"])
    env = make_environment(config, codec)
    episode = env.open(EpisodeProblem(3, np.array([1], np.int32), None))
    secret = episode.secret
    low, high, turns = 0, 99, 0
    while True:  # a bisecting policy
        guess = (low + high) // 2
        obs = episode.step(np.concatenate([codec.encode_text(str(guess)), env.turn_end_ids]).astype(np.int32))
        turns += 1
        if obs.done:
            break
        hint = codec.decode(obs.token_ids)
        low, high = (guess + 1, high) if hint == "+" else (low, guess - 1)
    assert obs.reward == 1.0 and guess == secret and turns <= 7
    with pytest.raises(ValueError, match="task.env.factory"):
        make_environment(load_config(None, ["task.env.kind=custom", "task.env.factory=nowhere.at_all:make"]), codec)


class LaterWeights(NoWeights):
    """Version 1 is staged once the engine has made `after` steps."""

    def __init__(self, engine, after):
        self.engine, self.after, self.sent = engine, after, False

    def take(self):
        if not self.sent and self.engine.steps >= self.after:
            self.sent = True
            return type("Staged", (), {"version": 1, "tensors": [], "recv_s": 0.0, "staged_at": 0.0})()
        return None


@pytest.mark.parametrize("mode", ["inflight", "chunk"])
def test_weights_change_between_steps_inflight_and_only_between_turns_in_chunk_mode(mode):
    engine, link = TurnEngine(), Link(3)
    outbox = Outbox(link)
    episodes = Episodes(Env(["forever"] * 3), VOCAB, EOS, workers=2)
    settings = RolloutSettings(refill=RefillRule(mode, target_sequences=6, prompts_per_chunk=3), group_size=2,
                               stop_token_id=EOS, metrics_every_s=1e9)
    rollout = Rollout(engine, link, LaterWeights(engine, after=3), outbox, settings, Log(), episodes=episodes)
    rollout.run()
    straddling, changed = 0, 0
    for g in outbox.groups:
        for s in g.sequences:
            v, m = np.array(s.versions), np.array(s.mask)
            turns = np.split(v, np.flatnonzero(np.diff(m) != 0) + 1)[::2]  # the policy turns' versions
            straddling += sum(len(set(t.tolist())) > 1 for t in turns)
            changed += len({int(t[0]) for t in turns}) > 1
            assert (v[m == 0] == -1).all()
    assert changed > 0  # episodes that began on version 0 went on with version 1
    if mode == "chunk":
        assert straddling == 0  # loads wait until no turn decodes: between turns
    else:
        assert straddling > 0  # in flight: between two decoding steps, mid-turn
