"""Chunked vs streaming generation with in-flight weight updates, on long-tailed response lengths.

    python benchmarks/generation.py                       # repeat task, 30 steps, both modes
    python benchmarks/generation.py --steps 20 --set actors.inflight_kv=recompute
    python benchmarks/generation.py --engine-only         # the engine alone, no learner, no buffer

Runs `launch.py run` once per `actors.update_mode` with the same config and seeds, on the built-in "repeat"
task (tasks/repeat.py: response lengths from a few tokens to ~90, median ~10), evaluations off:
  * "chunk": one vLLM batch of `prompts_per_chunk` prompts at a time; the next grant and new weights wait
    until its longest sequence ends (the engine runs emptier and emptier towards the end of every chunk);
  * "inflight": the engine is refilled as sequences finish and new weights are loaded between decoding steps.
For each it prints the actor's throughput (tokens generated per second of the actor's wall time and per second
of engine stepping), the engine's mean occupancy (running sequences / target, averaged over steps) and its
course over the run, the time from a broadcast's arrival to the first token sampled on those weights, and the
learner's time waiting for batches. The ratio row is inflight over chunk.

Then the engine alone on one core (no learner beside it, no buffer): the same prompts of the same task
generated three ways, tokens per second of wall time: chunks through vLLM's blocking `generate` (the old
actor), the decode loop with one request per group reporting at its end ("keep"), and the decode loop with one
streamed request per sample ("recompute", no weight switch): the loop's own overhead and what refilling gains
without the learner's contention.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
TASK = ["task.kind=\"repeat\"", "task.digits=3", "task.max_repeat=30", "task.train_size=3000",
        "actors.max_response_tokens=96"]


def run(mode: str, args, out: str) -> str:
    name = f"generation_{mode}"
    cmd = [sys.executable, str(ROOT / "launch.py"), "run", "--set", f"run.name={name}", "--set",
           f"run.output_dir={out}", "--set", f"actors.update_mode=\"{mode}\"", "--set", f"learner.steps={args.steps}",
           "--set", "eval.before_and_after=false", "--set", "eval.every_steps=0"]
    for override in TASK + args.set:
        cmd += ["--set", override]
    print(f"running {mode}: {' '.join(cmd[1:])}", flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    return os.path.join(out, name)


def read(run_dir: str) -> dict:
    with open(os.path.join(run_dir, "summary.json")) as f:
        summary = json.load(f)
    with open(os.path.join(run_dir, "roles", "actor0.json")) as f:
        actor = json.load(f)
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    occupancy = [r["actor/occupancy"] for r in records if r.get("actor/occupancy") is not None]
    learner = summary["time"]["learner"]
    return {
        "wall": summary["wall_s"], "actor": actor, "occupancy": occupancy,
        "learner_wait": learner.get("waiting_for_batch", 0.0), "learner_wall": learner["wall"],
    }


def course(values: list[float], parts: int = 5) -> str:
    """Mean of each fifth of the run: how occupancy evolves."""
    if not values:
        return "-"
    size = max(len(values) // parts, 1)
    return " ".join(f"{sum(values[i:i + size]) / len(values[i:i + size]):.2f}" for i in range(0, len(values), size))


def engine_only(args) -> None:
    from asyncor.actors.engine import cpu_environment

    os.environ.update(cpu_environment(1, "0", os.path.join(tempfile.gettempdir(), "asyncor-vllm-cache")))
    from asyncor.actors.buffer_link import Grant
    from asyncor.wire.messages import Stop, WaitReply
    from asyncor.actors.engine import Engine
    from asyncor.actors.refill import RefillRule
    from asyncor.actors.rollout import Rollout, RolloutSettings
    from asyncor.actors.sequences import Prompt
    from asyncor.configs.loader import load_config
    from asyncor.configs.stages import max_over_stages
    from asyncor.prepare.warm_start import prepare_policy
    from asyncor.tasks.builtin import make_splits
    from asyncor.tasks.codec import TextCodec

    config = load_config(None, TASK + args.set)
    a = config.actors
    model_dir = prepare_policy(config)
    codec = TextCodec(model_dir)
    engine = Engine(model_dir, config.model.dtype, config.run.seed, a.max_prompt_tokens + a.max_response_tokens, 0.3)
    train, _ = make_splits(config.task, config.run.seed)
    prompts = [codec.encode_prompt(p.prompt) for p in train[:args.prompts]]
    # The actor's rule and engine size, always in flight here (the chunked way is vLLM's blocking generate).
    refill = replace(RefillRule.from_config(a, max_over_stages(config, "group_size")), update_mode="inflight")
    target = refill.target_sequences

    def chunked(prompts: list) -> int:
        tokens = 0
        for i in range(0, len(prompts), a.prompts_per_chunk):
            out = engine.generate(prompts[i:i + a.prompts_per_chunk], a.group_size, a.temperature, a.top_p,
                                  a.max_response_tokens, codec.eos_id)
            tokens += sum(len(s.token_ids) for g in out for s in g)
        return tokens

    def looped(kv: str, prompts: list) -> int:
        class Link:
            left, out, granted = list(prompts), 0, 0

            def ask(self, k, version, hold_s=0.0):
                if not self.left:
                    return Stop() if self.out == 0 else WaitReply(retry_s=0.0)
                take, self.left = self.left[:k], self.left[k:]
                grant = [Prompt(self.granted + i, p, "arithmetic", "") for i, p in enumerate(take)]
                self.out, self.granted = self.out + len(take), self.granted + len(take)
                return Grant(grant, 0, a.group_size, a.max_response_tokens)

        class Outbox:
            def put(self, group, timeout_s):
                link.out -= 1

        class Weights:
            def take(self):
                return None

            def wait_for(self, version, timeout_s):
                return None

        class Log:
            def warning(self, *_, **__):
                pass

        link = Link()
        rollout = Rollout(engine, link, Weights(), Outbox(), RolloutSettings(
            refill=refill, inflight_kv=kv, group_size=a.group_size,
            temperature=a.temperature, top_p=a.top_p, stop_token_id=codec.eos_id, metrics_every_s=1e9), Log())
        rollout.run()
        return rollout.stats["tokens"]

    ways = {"chunked generate (old actor)": chunked,
            "loop, request per group (keep)": lambda ps: looped("keep", ps),
            "loop, streamed per sample (recompute)": lambda ps: looped("recompute", ps)}
    for way in ways.values():  # warm-up: the first batches are several times slower
        way(prompts[:a.prompts_per_chunk])
    print(f"\nengine alone: {len(prompts)} prompts x {a.group_size} samples, {target} sequences in flight for the "
          f"loop, chunks of {a.prompts_per_chunk} prompts for generate\n")
    print("| way | tokens | wall s | tokens/s | vs chunked |")
    print("|---|---|---|---|---|")
    base = None
    for name, way in ways.items():
        start = time.perf_counter()
        tokens = way(prompts)
        wall = time.perf_counter() - start
        base = base or tokens / wall
        print(f"| {name} | {tokens} | {wall:.1f} | {tokens / wall:.0f} | {tokens / wall / base:.2f}x |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--set", action="append", default=[], help="extra config override (repeatable)")
    parser.add_argument("--engine-only", action="store_true", help="only the engine-alone comparison")
    parser.add_argument("--prompts", type=int, default=512, help="prompts for the engine-alone comparison")
    args = parser.parse_args()
    if args.engine_only:
        engine_only(args)
        return
    out = tempfile.mkdtemp(prefix="asyncor-generation-")
    results = {mode: read(run(mode, args, out)) for mode in ("chunk", "inflight")}

    print("\n| update_mode | RL wall s | actor tok/s (wall) | engine tok/s (stepping) | occupancy mean | "
          "occupancy by fifth of the run | weights -> first token s | learner waiting for batch |")
    print("|---|---|---|---|---|---|---|---|")
    rows = {}
    for mode, r in results.items():
        a = r["actor"]
        tok_wall = a["tokens_generated"] / a["wall_s"]
        occ = sum(r["occupancy"]) / len(r["occupancy"]) if r["occupancy"] else 0.0
        rows[mode] = (r["wall"], tok_wall, a["gen_tokens_per_s"], occ, a["first_token_s_mean"], r["learner_wait"])
        print(f"| {mode} | {r['wall']:.0f} | {tok_wall:.0f} | {a['gen_tokens_per_s']:.0f} | {occ:.2f} | "
              f"{course(r['occupancy'])} | {a['first_token_s_mean']:.3f} | "
              f"{r['learner_wait']:.0f} s ({r['learner_wait'] / r['learner_wall']:.0%}) |")
    c, i = rows["chunk"], rows["inflight"]
    print(f"| inflight / chunk | {i[0] / c[0]:.2f}x | {i[1] / c[1]:.2f}x | {i[2] / c[2]:.2f}x | {i[3] / c[3]:.2f}x | | "
          f"{i[4] / c[4] if c[4] else 0:.3f}x | {i[5] / c[5] if c[5] else 0:.2f}x |")
    print(f"\nrun directories: {out}")
    engine_only(args)


if __name__ == "__main__":
    main()
