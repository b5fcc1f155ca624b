"""Real vLLM under the actor's decode loop, for tests/integration/test_streaming.py (run as its own process).

`order`: one grant of prompts streamed through the loop on a randomly initialised tiny model (its EOS comes
at random, so lengths vary); writes, per group, the engine step at which it was handed on and its lengths.
`switch`: new weights (the same model, perturbed) arrive after a few decoding steps, update_mode "inflight" with
--kv keep or recompute; writes every token's version and behaviour log-prob next to the log-prob a
transformers forward pass gives it under version 0's and version 1's weights (prompt + the tokens before it).
"""

import argparse
import json
import os

import numpy as np

from asyncor.actors.engine import cpu_environment


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--scenario", choices=["order", "switch"], required=True)
    parser.add_argument("--kv", choices=["keep", "recompute"], default="keep")
    parser.add_argument("--work", required=True)
    args = parser.parse_args()
    os.environ.update(cpu_environment(1, "0-1", os.path.join(args.work, "vllm")))

    import torch

    from asyncor.actors.buffer_link import Grant
    from asyncor.wire.messages import Stop, WaitReply
    from asyncor.actors.engine import Engine
    from asyncor.actors.refill import RefillRule
    from asyncor.actors.rollout import Rollout, RolloutSettings
    from asyncor.actors.sequences import Prompt
    from asyncor.configs.loader import load_config
    from asyncor.prepare.tiny_model import build_tiny_model
    from asyncor.tasks.codec import TextCodec

    model_dir = build_tiny_model(load_config(None, []), os.path.join(args.work, "model"))
    codec = TextCodec(model_dir)
    engine = Engine(model_dir, "float32", seed=3, max_model_len=96, gpu_memory_utilization=0.3)
    prompts = [Prompt(i, codec.encode_prompt(text), "arithmetic", "0")
               for i, text in enumerate(["12+34=", "5+6=", "77+8=", "1+2=", "40+40=", "9+99="])]

    class Link:
        def __init__(self):
            self.left, self.out = list(prompts), 0

        def ask(self, max_prompts, version, hold_s=0.0):
            if not self.left:
                return Stop() if self.out == 0 else WaitReply(retry_s=0.0)
            take, self.left = self.left, []
            self.out = len(take)
            return Grant(take, 0, 4, 40)

    class Outbox:
        def __init__(self):
            self.groups = []

        def put(self, group, timeout_s):
            self.groups.append((engine_steps(), group))
            link.out -= 1

    class Staged:
        def __init__(self, version, tensors):
            self.version, self.tensors, self.recv_s = version, tensors, 0.0

    class Weights:
        def __init__(self, after_step, tensors):
            self.after_step, self.tensors = after_step, tensors

        def take(self):
            if self.tensors is not None and rollout.stats["steps"] >= self.after_step:
                staged, self.tensors = Staged(1, self.tensors), None
                return staged
            return None

        def wait_for(self, version, timeout_s):
            return None

    def engine_steps():
        return rollout.stats["steps"] + 1  # 1-based number of the step being processed

    class Log:
        def warning(self, *a, **k):
            pass

        info = error = warning

    from safetensors.torch import load_file

    v0 = load_file(os.path.join(model_dir, "model.safetensors"))
    gen = torch.Generator().manual_seed(0)
    v1 = {k: t + 0.3 * t.std() * torch.randn(t.shape, generator=gen) if t.ndim == 2 else t for k, t in v0.items()}
    link, outbox = Link(), Outbox()
    weights = Weights(6, list(v1.items()) if args.scenario == "switch" else None)
    settings = RolloutSettings(refill=RefillRule("inflight", target_sequences=24), inflight_kv=args.kv, group_size=4,
                               temperature=1.0, stop_token_id=codec.eos_id, metrics_every_s=1e9)
    rollout = Rollout(engine, link, weights, outbox, settings, Log())
    rollout.run()

    out = {"groups": [{"step": step, "lengths": [len(s.tokens) for s in g.sequences]} for step, g in outbox.groups]}
    if args.scenario == "switch":
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
        tokens = []
        for version, state in ((0, v0), (1, v1)):
            model.load_state_dict(state, strict=False)
            for _, g in outbox.groups:
                for i, s in enumerate(g.sequences):
                    ids = torch.tensor(np.concatenate([g.prompt.token_ids, s.tokens]))[None]
                    with torch.no_grad():
                        logp = torch.log_softmax(model(ids).logits[0].double(), -1)
                    P = len(g.prompt.token_ids)
                    ref = logp[P - 1:-1].gather(-1, torch.tensor(s.tokens)[:, None])[:, 0].tolist()
                    if version == 0:
                        tokens.append({"versions": s.versions, "behaviour": s.logprobs, "v0": ref})
                    else:
                        tokens[len([t for t in tokens if "v1" in t])]["v1"] = ref
        out["sequences"] = tokens
        out["restarted"] = rollout.stats["restarted"]
    with open(os.path.join(args.work, "out.json"), "w") as f:
        json.dump(out, f)


if __name__ == "__main__":
    main()
