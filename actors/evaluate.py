"""Held-out evaluation with the actor engine: accuracy of one decoding on the held-out split.

Used by `launch.py run` before and after RL (same decoding both times) and
usable on any saved policy directory. Writes `{"accuracy", "n", ...}` to `--out`.
"""

from __future__ import annotations

import argparse
import json
import os
import time

from configs.loader import load_resolved
from configs.schema import Config
from telemetry import log as tlog


def heldout(config: Config, codec, model_dir: str) -> tuple[list, list, list[str], list]:
    """(problems, prompt ids, kinds, references) of the held-out split, at most eval.max_problems."""
    if config.task.kind == "arithmetic":
        from tasks.arithmetic import make_splits

        _, problems = make_splits(config.task, config.run.seed)
        problems = problems[: config.eval.max_problems]
        return (problems, [codec.encode_prompt(p.prompt) for p in problems], ["arithmetic"] * len(problems),
                [p.answer for p in problems])
    from tasks.dataset import load_problems

    problems, ids, _ = load_problems(config.task.heldout_files, codec, model_dir, config.actors.max_prompt_tokens,
                                     config.task.format)
    problems, ids = problems[: config.eval.max_problems], ids[: config.eval.max_problems]
    return problems, ids, [p.kind for p in problems], [p.reference for p in problems]


def evaluate(config: Config, model_dir: str) -> dict:
    from actors.engine import Engine
    from tasks.codec import TextCodec
    from tasks.scoring import Sample, Scorer

    codec = TextCodec(model_dir)
    problems, prompts, kinds, references = heldout(config, codec, model_dir)
    scorer = Scorer(config.actors.verifier_workers, config.actors.verifier_deadline_s,
                    needs_pool=config.task.kind == "files")
    engine = Engine(model_dir, config.model.dtype, config.run.seed,
                    config.actors.max_prompt_tokens + config.actors.max_response_tokens, config.actors.gpu_memory_utilization)

    def accuracy(temperature: float, k: int) -> float:
        outputs = engine.generate(prompts, k, temperature, 1.0, config.actors.max_response_tokens, codec.eos_id,
                                  seed=config.eval.seed)
        rewards = scorer.score([Sample(kind, codec.decode(s.token_ids), ref, s.finish_reason == "length")
                                for kind, ref, samples in zip(kinds, references, outputs) for s in samples])
        return sum(rewards) / len(rewards)

    start = time.perf_counter()
    try:
        temperature = config.eval.temperature
        greedy = accuracy(0.0, 1)
        k = config.eval.samples_per_problem if temperature > 0 else 1
        main = accuracy(temperature, k) if temperature > 0 else greedy  # greedy is reported anyway: never decode twice
    finally:
        scorer.close()
    return {"accuracy": main, "n": len(problems), "samples_per_problem": k, "temperature": temperature,
            "greedy_accuracy": greedy, "model": model_dir, "seconds": time.perf_counter() - start}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="asyncor held-out evaluation")
    parser.add_argument("--config", required=True, help="resolved config.json")
    parser.add_argument("--model", required=True, help="model directory to evaluate")
    parser.add_argument("--out", required=True, help="where to write the result json")
    parser.add_argument("--tag", default="eval", help="log name")
    args = parser.parse_args()
    cfg = load_resolved(args.config)
    tlog.setup(args.tag, cfg.run_dir)
    from actors.engine import cpu_environment

    os.environ.update(cpu_environment(cfg.actors.kv_cache_gib, f"0-{(os.cpu_count() or 1) - 1}",
                                      os.path.join(os.path.abspath(cfg.run.cache_dir), "vllm")))
    result = evaluate(cfg, args.model)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    tlog.get(args.tag).info("eval_done", **result)
