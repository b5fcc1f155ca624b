"""Tool-integrated reasoning end to end: a math problem from a data file, episodes played through the real actor
loop (actors/rollout.py Rollout + actors/episodes.py Episodes), the real Python tool in the sandbox
(tasks/python_tool.py, built from the config as the actor builds it) and the real math verifier (tasks/scoring.py
Scorer with its verifier pool, through actors/outbox.py `score_groups`), and on to the wire.

Only the engine is scripted: a policy that reads its prompt (the problem, then every turn and observation so far,
exactly as tokens) and writes the next turn. The tokenizer is character-level with the tool tags as single special
tokens (the default [task.env] tags, Qwen's), so every text below is its tokens one for one. The four samples of
the group:

  right     <tool_call>print(6*7)</tool_call> -> 42 -> \\boxed{42}                     answered, reward 1
  wrong     x = 6*7; print(x) -> 42 -> \\boxed{41} (one less than the tool said)      answered, reward 0
  recovers  a call that raises -> its traceback (feedback, not a failure) -> a fixed
            call -> 42 -> \\boxed{42}                                                 answered, 3 turns, reward 1
  hangs     `while True: pass` -> the sandbox's wall clock                           tool_timeout, reward 0

One tool worker per sample (and environment thread: no call queues behind the hang) and one verifier; the step
deadline is short, so the hang costs its sandbox wall clock, 2.2 s, with a second of slack to the tool's deadline
(tasks/python_tool.py RUN_SLACK_S) on a loaded machine. The loop runs on a thread watched for `RUN_DEADLINE_S`, so a
bug fails the test instead of hanging it; the test takes about 5 s (tool start 1-2 s, loop 2.4 s, scoring 0.7 s).
"""

import json
import threading
import time

import numpy as np
import pytest

from tests.unit.test_episodes import Log, NoWeights, Outbox, Requests  # the loop's fakes
from asyncor.actors.buffer_link import Grant
from asyncor.actors.episodes import Episodes
from asyncor.actors.outbox import score_groups, to_trajectory
from asyncor.actors.refill import RefillRule
from asyncor.actors.rollout import Rollout, RolloutSettings
from asyncor.actors.sequences import Prompt
from asyncor.configs.loader import load_config
from asyncor.wire.messages import Stop, WaitReply
from asyncor.wire.trajectory import parse_group

SPECIAL = ["<pad>", "<bos>", "<eos>", "<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>"]
CHARACTERS = [chr(c) for c in range(32, 127)] + ["\n"]  # printable ASCII and newline
EOS, CALL_END = 2, 4
CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")
QUESTION = ("What is 6 times 7? You may run Python between <tool_call> and </tool_call>. "
            "Put the final answer in \\boxed{}.")
STEP_TIMEOUT_S = 4.0  # tool deadline 3.2 s, sandbox wall clock 2.2 s (python_tool.py from_config; minimum 1.875 s)
RUN_DEADLINE_S = 30.0  # the whole loop; normally ~2 s
TRACEBACK_END = "ZeroDivisionError: division by zero"


def write_model_dir(path):
    """A model directory with only a tokenizer: one token per character, the tool tags one special token each
    (never split by the character pre-tokenizer), and a trivial chat template."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    vocab = {tok: i for i, tok in enumerate(SPECIAL + CHARACTERS)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")  # "." would skip "\n"
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens(SPECIAL)
    path.mkdir(parents=True, exist_ok=True)
    tok.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<bos>", "eos_token": "<eos>",
                                                            "chat_template": CHAT_TEMPLATE}))
    (path / "config.json").write_text(json.dumps({"eos_token_id": EOS, "vocab_size": len(vocab)}))
    return path


# What each plan writes, turn by turn, given the last observation's text (None before the first call).
PLANS = {
    "right": [lambda obs: "<tool_call>print(6*7)</tool_call>",
              lambda obs: f"The answer is \\boxed{{{obs.strip()}}}<eos>"],
    "wrong": [lambda obs: "<tool_call>x = 6*7\nprint(x)</tool_call>",
              lambda obs: f"The answer is \\boxed{{{int(obs) - 1}}}<eos>"],
    "recovers": [lambda obs: "<tool_call>print(6*7/0)</tool_call>",
                 lambda obs: "Oops.<tool_call>print(6*7)</tool_call>" if TRACEBACK_END in obs else "<eos>",
                 lambda obs: f"So \\boxed{{{obs.strip()}}}<eos>"],
    "hangs": [lambda obs: "<tool_call>while True:\n    pass</tool_call>"],
}


class ScriptedPolicy(Requests):
    """The engine. Each request's turn is written when it is added, from its prompt alone: a first turn (the
    prompt is the problem's) takes the next plan; a later turn finds its episode by the tokens it wrote before
    (they must come back unchanged: token in, token out) and reads the observation at the prompt's end. A turn ends
    at its first stop token (eos, or a turn-end id the request names) or at the request's token limit, and is
    reported whole at the next `step`, as vLLM reports an unstreamed request."""

    def __init__(self, codec, problem_ids):
        self.codec, self.problem = codec, list(problem_ids)
        self.unassigned = list(PLANS)
        self.written: list[tuple[list[int], str]] = []  # (prompt + turn, plan): what each episode holds so far
        self.turn_prompts: dict[str, list[str]] = {plan: [] for plan in PLANS}  # each turn's prompt, as text
        self.requests: dict[str, tuple[np.ndarray, str]] = {}

    def add(self, request_id, prompt, max_tokens, temperature, top_p, stop_token_id, salt, stream=False, n=1,
            seed=None, extra_stop_ids=()):
        assert n == 1 and not stream and stop_token_id == EOS and tuple(extra_stop_ids) == (CALL_END,)
        prompt = [int(t) for t in prompt]
        if prompt == self.problem:
            plan = self.unassigned.pop(0)
        else:
            [plan] = {p for held, p in self.written if prompt[:len(held)] == held and len(prompt) > len(held)}
        text = self.codec.decode_all(prompt)
        self.turn_prompts[plan].append(text)
        turn = len(self.turn_prompts[plan]) - 1
        obs = None
        if turn:
            obs = text[text.rindex("<tool_response>") + len("<tool_response>"):]
            assert obs.endswith("</tool_response>"), text  # the observation is the prompt's end
            obs = obs[: -len("</tool_response>")]
        ids = self.codec.encode_text(PLANS[plan][turn](obs))
        stops = np.flatnonzero(np.isin(ids, [EOS, *extra_stop_ids]))
        ids = ids[: stops[0] + 1] if len(stops) else ids
        reason = "stop" if len(ids) <= max_tokens and len(stops) else "length"
        ids = ids[:max_tokens]
        self.written.append((prompt + ids.tolist(), plan))
        self.requests[request_id] = (ids, reason)

    def step(self):
        from asyncor.actors.engine import Delta

        out = [Delta(rid, ids, np.full(len(ids), -0.25, np.float32), reason, np.zeros(len(ids), np.int32))
               for rid, (ids, reason) in self.requests.items()]
        self.requests.clear()
        return out

    def load_weights(self, tensors, version):
        raise AssertionError("no weights in this test")


class Link:
    """The buffer: one grant of the problem, then `stop` once its group came out."""

    def __init__(self, prompt, n, max_tokens):
        self.prompt, self.n, self.max_tokens, self.outstanding = prompt, n, max_tokens, 0

    def ask(self, max_prompts, version, hold_s=0.0):
        if self.prompt is None or max_prompts < 1:
            return Stop() if self.outstanding == 0 else WaitReply(retry_s=0.0)
        prompt, self.prompt = self.prompt, None
        self.outstanding += 1
        return Grant([prompt], 0, self.n, self.max_tokens)

    def give_back(self, ids):
        raise AssertionError("nothing is given back")


def turns_of(codec, seq) -> list[tuple[str, int]]:
    """A sequence's tokens as (text, mask bit) runs: its policy turns and observations, in order."""
    runs, start = [], 0
    for i in range(1, len(seq.tokens) + 1):
        if i == len(seq.tokens) or seq.mask[i] != seq.mask[start]:
            runs.append((codec.decode_all(seq.tokens[start:i]), seq.mask[start]))
            start = i
    return runs


@pytest.mark.slow
def test_a_tool_integrated_math_episode_runs_the_real_tool_and_verifier_through_the_actor_loop(tmp_path):
    from asyncor.tasks.codec import TextCodec
    from asyncor.tasks.environments import make_environment
    from asyncor.tasks.scoring import Scorer
    from asyncor.tasks.task import file_problems

    model_dir = write_model_dir(tmp_path / "model")
    codec = TextCodec(str(model_dir))
    assert codec.encode_text("<tool_call>").tolist() == [3] and codec.encode_text("</tool_call>").tolist() == [4]
    data = tmp_path / "tir.jsonl"
    data.write_text(json.dumps({"prompt": QUESTION, "answer": "42", "data_source": "tir_sample"}) + "\n")
    [problem], _, dropped = file_problems([str(data)], codec, str(model_dir), max_prompt_tokens=512)
    assert dropped == 0 and (problem.kind, problem.reference, problem.data_source) == ("math", "42", "tir_sample")
    assert codec.decode_all(problem.prompt_ids) == f"<bos><|user|>\n{QUESTION}\n<|assistant|>\n"  # the template

    config = load_config(None, ["task.env.kind=tool", "task.env.tool=python", "task.env.workers=4",
                                f"task.env.step_timeout_s={STEP_TIMEOUT_S}", "task.env.max_observation_tokens=512"])
    timings = {}
    start = time.perf_counter()
    env = make_environment(config, codec)  # the actor's way: ToolEnvironment + PythonTool.from_config
    scorer = Scorer(workers=1, deadline_s=30.0, needs_pool=True)  # the verifier pool: started, as in the actor
    timings["start_s"] = time.perf_counter() - start
    try:
        assert env.turn_end_ids == (CALL_END,) and not env.inline  # tool runs go to the environment threads
        assert (env.tool.deadline_s, env.tool.limits.wall_s) == pytest.approx((3.2, 2.2))
        pids = env.tool.worker_pids()
        engine = ScriptedPolicy(codec, problem.prompt_ids)
        link = Link(Prompt(problem.id, problem.prompt_ids, problem.kind, problem.reference), n=len(PLANS),
                    max_tokens=1024)
        outbox = Outbox(link)
        episodes = Episodes(env, codec.vocab_size, codec.eos_id, config.task.env.workers)
        settings = RolloutSettings(refill=RefillRule("inflight", target_sequences=len(PLANS)), group_size=len(PLANS),
                                   stop_token_id=codec.eos_id, metrics_every_s=1e9)
        rollout = Rollout(engine, link, NoWeights(), outbox, settings, Log(), episodes=episodes)
        start = time.perf_counter()
        errors = []

        def run_loop():
            try:
                rollout.run()
            except BaseException as exc:  # noqa: BLE001 - re-raised below, on the test's thread
                errors.append(exc)

        loop = threading.Thread(target=run_loop, daemon=True)  # the real loop, watched: a bug fails, not hangs
        loop.start()
        loop.join(RUN_DEADLINE_S)
        assert not loop.is_alive(), f"the actor loop did not finish within {RUN_DEADLINE_S} s"
        if errors:
            raise errors[0]
        timings["loop_s"] = time.perf_counter() - start
        [group] = outbox.groups
        start = time.perf_counter()
        rewards = score_groups(scorer, codec, [group])
        timings["score_s"] = time.perf_counter() - start
        assert env.tool.worker_pids() == pids  # the sandbox stopped the hang: no tool worker was replaced
    finally:
        env.close()
        scorer.close()
    print("timings", {k: round(v, 2) for k, v in timings.items()})

    for prompts in engine.turn_prompts.values():
        assert prompts[0] == codec.decode_all(problem.prompt_ids)  # every episode's first turn: the problem
    plans = [next(p for p, fns in PLANS.items() if codec.decode_all(s.tokens).startswith(fns[0](None)))
             for s in group.sequences]
    assert sorted(plans) == sorted(PLANS)
    plan_of = dict(zip(plans, group.sequences))
    assert dict(zip(plans, rewards)) == {"right": 1.0, "wrong": 0.0, "recovers": 1.0, "hangs": 0.0}

    # What each episode holds: its turns (mask 1) and the tool's observations (mask 0), in order, as text.
    answer_42 = [("<tool_call>print(6*7)</tool_call>", 1), ("<tool_response>42\n</tool_response>", 0)]
    right = plan_of["right"]
    assert turns_of(codec, right) == answer_42 + [("The answer is \\boxed{42}<eos>", 1)]
    # The second turn's prompt is the problem, the first turn and the tool's answer, exactly.
    assert engine.turn_prompts["right"][1] == (codec.decode_all(problem.prompt_ids) + "<tool_call>print(6*7)"
                                               "</tool_call><tool_response>42\n</tool_response>")
    wrong = plan_of["wrong"]
    assert turns_of(codec, wrong) == [("<tool_call>x = 6*7\nprint(x)</tool_call>", 1),
                                      ("<tool_response>42\n</tool_response>", 0),
                                      ("The answer is \\boxed{41}<eos>", 1)]
    recovers = plan_of["recovers"]
    runs = turns_of(codec, recovers)
    assert [m for _, m in runs] == [1, 0, 1, 0, 1]
    assert runs[0] == ("<tool_call>print(6*7/0)</tool_call>", 1)
    traceback = runs[1][0]  # the program's error comes back as text: feedback the policy reads
    assert traceback.startswith("<tool_response>Traceback (most recent call last):\n")
    assert traceback.endswith(f"\n{TRACEBACK_END}</tool_response>") and "main.py" in traceback
    assert runs[2:] == [("Oops.<tool_call>print(6*7)</tool_call>", 1), ("<tool_response>42\n</tool_response>", 0),
                        ("So \\boxed{42}<eos>", 1)]
    hangs = plan_of["hangs"]
    assert turns_of(codec, hangs) == [("<tool_call>while True:\n    pass</tool_call>", 1)]  # no observation

    ends = {p: (s.end_reason, s.finish_reason, s.turns, s.reward) for p, s in plan_of.items()}
    assert ends == {"right": ("answered", "stop", 2, None), "wrong": ("answered", "stop", 2, None),
                    "recovers": ("answered", "stop", 3, None),  # None: the verifier scored these
                    "hangs": ("tool_timeout", "abort", 1, 0.0)}  # the environment's defined 0
    # The sandbox's wall clock stopped the hang (2.2 s), before the tool's deadline (3.2 s) and the step's.
    assert 2.2 <= hangs.env_s < 3.2
    for s in group.sequences:
        policy = np.asarray(s.mask) == 1
        assert len(s.tokens) == len(s.mask) == len(s.logprobs) == len(s.versions)
        assert np.all(np.asarray(s.versions)[~policy] == -1) and np.all(np.asarray(s.logprobs)[~policy] == 0.0)
        assert np.all(np.asarray(s.versions)[policy] == 0) and np.all(np.asarray(s.logprobs)[policy] == -0.25)
        assert codec.decode_all(s.last_turn) == turns_of(codec, s)[-1][0]  # what the verifier read
    assert episodes.stats.end_reasons["answered"] == 3 and episodes.stats.end_reasons["tool_timeout"] == 1
    assert episodes.stats.observations_cut == 0 and episodes.stats.env_steps == 4 + 2 + 2 + 3 + 1  # openings, turns

    # On to the learner: the wire carries tokens, mask and rewards; the buffer's checks accept the group.
    back = parse_group(to_trajectory(group, rewards, 0, 0).to_wire())
    assert back.prompt_ids.tolist() == problem.prompt_ids.tolist()
    for s, r, reward in zip(group.sequences, back.responses, rewards):
        assert r.token_ids.tolist() == s.tokens and r.loss_mask.tolist() == s.mask and r.reward == reward
    assert back.details["turns_max"] == 3 and back.details["env_failures"] == 1
    assert back.details["env_tokens"] == sum(len(s.mask) - sum(s.mask) for s in group.sequences)
    assert timings["loop_s"] < 10.0


def test_the_python_tool_example_config_validates():
    """configs/files_python_tool.toml passes every check but its data files' existence (placeholders)."""
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "configs" / "files_python_tool.toml"
    config = load_config(str(path), [], check_files=False)
    env = config.task.env
    assert config.task.kind == "files" and (env.kind, env.tool, env.tool_enabled) == ("tool", "python", True)
    assert (env.call_start, env.call_end, env.observation_start, env.observation_end) == (
        "<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>")
    assert env.step_timeout_s >= (0.5 + 1.0) / 0.8  # the python tool's minimum (tasks/python_tool.py from_config)
    assert config.actors.max_response_tokens >= 4096
