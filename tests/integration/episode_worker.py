"""Real vLLM under the actor's decode loop with multi-turn episodes, for tests/integration/test_episodes_vllm.py.

A randomly initialised tiny model (the calculator task's vocabulary) runs episodes of a test environment whose
turns end at any digit (so a random policy ends turns often) and which answers every turn with a fixed
observation until the fourth turn. The engine is wrapped to record every request it is given (the prompt of
each turn) and every output it returns. The finished groups then go the whole way to the learner: `to_trajectory`
-> wire -> `parse_group` -> `minibatch` -> `micro_batch`, and a transformers forward under the engine's weights
gives the learner's log-probs of the trained tokens. With --switch, new weights arrive after a few decoding steps
(update_mode "inflight", KV kept). Writes out.json for the test.
"""

import argparse
import json
import os

import numpy as np

from asyncor.actors.engine import cpu_environment

TURNS = 4
OBSERVATION = "[12]"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--work", required=True)
    parser.add_argument("--switch", action="store_true")
    args = parser.parse_args()
    os.environ.update(cpu_environment(1, "0-1", os.path.join(args.work, "vllm")))

    import torch

    from asyncor.actors.engine import Engine
    from asyncor.actors.episodes import Episodes
    from asyncor.actors.outbox import to_trajectory
    from asyncor.actors.refill import RefillRule
    from asyncor.actors.rollout import Rollout, RolloutSettings
    from asyncor.actors.sequences import Prompt
    from asyncor.configs.loader import load_config
    from asyncor.learner.batch import micro_batch, minibatch
    from asyncor.learner.variants import algorithm
    from asyncor.prepare.tiny_model import build_tiny_model
    from asyncor.tasks.codec import TextCodec
    from asyncor.tasks.environment import Observation
    from asyncor.wire.trajectory import parse_group
    from tests.unit.test_episodes import Link, Log, Outbox  # the loop's fakes

    config = load_config(None, ["task.kind=calculator"])
    model_dir = build_tiny_model(config, os.path.join(args.work, "model"))
    codec = TextCodec(model_dir)
    digits = tuple(int(codec.encode_text(str(d))[0]) for d in range(10))
    observation = codec.encode_text(OBSERVATION)

    class Episode:
        def __init__(self):
            self.turns = 0

        def start(self):
            return np.zeros(0, np.int32)

        def step(self, turn_ids):
            self.turns += 1
            if self.turns >= TURNS or int(turn_ids[-1]) == codec.eos_id:
                return Observation(done=True, reward=float(self.turns), reason="answered")
            return Observation(observation)

        def close(self):
            pass

    class Environment:
        turn_end_ids, max_turns, max_observation_tokens, step_timeout_s, inline = digits, TURNS + 1, 8, 10.0, False

        def open(self, problem):
            return Episode()

        def close(self):
            pass

    class Recorder(Engine):
        """The engine, with every request and every output written down."""

        requests, outputs = {}, {}

        def add(self, request_id, prompt, max_tokens, *a, **k):
            self.requests[request_id] = np.asarray(prompt).tolist()
            super().add(request_id, prompt, max_tokens, *a, **k)

        def step(self):
            deltas = super().step()
            for d in deltas:
                out = self.outputs.setdefault(d.request_id, {"ids": [], "logprobs": []})
                out["ids"] += d.token_ids.tolist()
                out["logprobs"] += d.logprobs.tolist()
            return deltas

    engine = Recorder(model_dir, "float32", seed=5, max_model_len=160, gpu_memory_utilization=0.3,
                      block_size=32)
    # Prompts of 37 tokens: a later turn finds at least the first 32-token KV block in the prefix cache.
    prompts = [Prompt(i, codec.encode_prompt(text * 6), "arithmetic", "0")
               for i, text in enumerate(["12*34=", "56*78=", "91*23="])]

    class Staged:
        def __init__(self, version, tensors):
            self.version, self.tensors, self.recv_s = version, tensors, 0.0

    from safetensors.torch import load_file

    v0 = load_file(os.path.join(model_dir, "model.safetensors"))
    gen = torch.Generator().manual_seed(0)
    v1 = {k: t + 0.3 * t.std() * torch.randn(t.shape, generator=gen) if t.ndim == 2 else t for k, t in v0.items()}

    class Weights:
        pending = list(v1.items()) if args.switch else None

        def take(self):
            if self.pending is not None and rollout.stats["steps"] >= 6:
                staged, Weights.pending = Staged(1, self.pending), None
                return staged
            return None

        def wait_for(self, version, timeout_s):
            return None

    link = Link(prompts=prompts, n=4, max_tokens=96)
    outbox = Outbox(link)
    episodes = Episodes(Environment(), codec.vocab_size, codec.eos_id, workers=2)
    settings = RolloutSettings(refill=RefillRule("inflight", target_sequences=12), inflight_kv="keep", group_size=4,
                               temperature=1.0, stop_token_id=codec.eos_id, metrics_every_s=1e9)
    rollout = Rollout(engine, link, Weights(), outbox, settings, Log(), episodes=episodes)
    rollout.run()

    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    loss_agg = algorithm(load_config(None, []).algo).loss_agg
    sequences = []
    for version, state in ((0, v0), (1, v1)) if args.switch else ((0, v0),):
        model.load_state_dict(state, strict=False)
        for g in outbox.groups:
            back = parse_group(to_trajectory(g, [0.0] * len(g.sequences), 0, g.prompt.prompt_id).to_wire())
            mb = minibatch([back], [np.zeros(len(back.responses))], loss_agg)
            for s, resp, ts in zip(g.sequences, back.responses, mb.sequences):
                mb1 = micro_batch([[ts]], packing=True, pad_id=0)
                with torch.no_grad():
                    logp = torch.log_softmax(model(mb1.input_ids_BT, position_ids=mb1.position_ids_BT).logits[0]
                                             .double(), -1)
                learner = logp[mb1.col_N, mb1.target_N].tolist()
                if version == 1:
                    sequences[len([x for x in sequences if "learner_v1" in x])]["learner_v1"] = learner
                    continue
                requests = [{"prompt": engine.requests[r], **engine.outputs[r]} for r in engine.requests
                            if r in engine.outputs and r.split("-r")[0] == f"p{g.prompt.prompt_id}"]
                sequences.append({
                    "prompt": g.prompt.token_ids.tolist(), "tokens": s.tokens, "mask": s.mask, "turns": s.turns,
                    "versions": s.versions, "logprobs": s.logprobs, "end_reason": s.end_reason,
                    "engine_requests": requests, "learner_ids": mb1.input_ids_BT[0].tolist(),
                    "learner_targets": mb1.target_N.tolist(), "learner_behaviour": mb1.behaviour_logprob_N.tolist(),
                    "wire_mask": resp.loss_mask.tolist(), "learner": learner})
    out = {"sequences": sequences, "observation": observation.tolist(), "eos": codec.eos_id, "digits": list(digits),
           "stats": episodes.stats.summary()}
    with open(os.path.join(args.work, "out.json"), "w") as f:
        json.dump(out, f)


if __name__ == "__main__":
    main()
