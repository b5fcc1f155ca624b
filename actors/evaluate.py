"""Held-out evaluation with the actor engine, before, during and after RL.

One protocol everywhere, so the numbers form one curve:
  * greedy accuracy (one decoding per problem), and
  * avg@k at `eval.temperature` with `eval.samples_per_problem` samples per
    problem and the fixed sampling seed `eval.seed` (the same random stream
    every time), plus pass@k and avg@k per data source.

Who runs it:
  * `launch.py run` runs this module as a phase before RL (version 0) and
    after it (`final/`, the last version) when `eval.before_and_after`;
  * during RL, actor `eval.actor` runs `evaluate_engine` with its own engine
    every `eval.every_steps` versions (`due` says when; actors/worker.py).
Every result is also appended to metrics.jsonl as role "eval" with step =
the policy version evaluated (`eval/accuracy`, `eval/greedy_accuracy`,
`eval/pass_at_k`, `eval/accuracy/<data source>`, `eval/seconds`).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import dataclass

from asyncor.configs.loader import load_resolved
from asyncor.configs.schema import Config
from asyncor.telemetry import log as tlog
from asyncor.telemetry.role_summary import write_role_summary


@dataclass
class Heldout:
    """The held-out problems as the engine and the scorer need them (at most eval.max_problems)."""

    prompts: list  # token id arrays
    kinds: list[str]
    references: list
    sources: list[str]

    def __len__(self) -> int:
        return len(self.prompts)


def heldout(config: Config, codec, model_dir: str) -> Heldout:
    limit = config.eval.max_problems
    if config.task.kind != "files":
        from asyncor.tasks.builtin import make_splits

        _, problems = make_splits(config.task, config.run.seed)
        problems = problems[:limit]
        return Heldout([codec.encode_prompt(p.prompt) for p in problems], ["arithmetic"] * len(problems),
                       [p.answer for p in problems], ["arithmetic"] * len(problems))
    from asyncor.tasks.dataset import load_problems

    problems, ids, _ = load_problems(config.task.heldout_files, codec, model_dir, config.actors.max_prompt_tokens,
                                     config.task.format)
    problems, ids = problems[:limit], ids[:limit]
    return Heldout(ids, [p.kind for p in problems], [p.reference for p in problems],
                   [p.data_source for p in problems])


def response_tokens(config: Config) -> int:
    """Response length limit of evaluation: `eval.max_response_tokens`, else `actors.max_response_tokens`."""
    return config.eval.max_response_tokens or config.actors.max_response_tokens


def due(version: int, last_evaluated: int, every: int, final_version: int) -> bool:
    """Whether the actor evaluates after loading `version`: the first version it loads at or past each
    multiple of `every` (versions can be skipped: sync.every, or newer weights staged meanwhile).
    Version 0 and the final version are the before/after phases' (launcher/run.py)."""
    return every > 0 and 0 < version < final_version and version // every > last_evaluated // every


def evaluate_engine(config: Config, engine, codec, scorer, problems: Heldout) -> dict:
    from asyncor.studies.dataset_eval import rewards_per_problem, summarise

    cfg = config.eval
    max_tokens = response_tokens(config)

    def rewards(temperature: float, k: int):
        outputs = engine.generate(problems.prompts, k, temperature, 1.0, max_tokens, codec.eos_id, seed=cfg.seed)
        return rewards_per_problem(scorer, codec, problems.kinds, problems.references, outputs)

    start = time.perf_counter()
    greedy = rewards(0.0, 1)
    k = cfg.samples_per_problem if cfg.temperature > 0 else 1
    main = rewards(cfg.temperature, k) if cfg.temperature > 0 else greedy  # never decode greedily twice
    stats = summarise([{"data_source": s, "rewards": r} for s, r in zip(problems.sources, main)], k)
    return {"accuracy": stats["overall"][f"avg@{k}"], "n": len(problems), "samples_per_problem": k,
            "temperature": cfg.temperature, "greedy_accuracy": float(greedy.mean()),
            "pass_at_k": stats["overall"][f"pass@{k}"],
            "by_source": {s: row[f"avg@{k}"] for s, row in stats["by_source"].items()},
            "max_response_tokens": max_tokens, "seconds": time.perf_counter() - start}


def metrics_of(result: dict) -> dict:
    """The `eval/*` metrics of one result."""
    values = {"eval/accuracy": result["accuracy"], "eval/greedy_accuracy": result["greedy_accuracy"],
              "eval/pass_at_k": result["pass_at_k"], "eval/seconds": result["seconds"]}
    values.update({f"eval/accuracy/{source}": acc for source, acc in result["by_source"].items()})
    return values


def evaluate(config: Config, model_dir: str) -> dict:
    """Evaluate a saved policy directory with a fresh engine."""
    from asyncor.actors.engine import Engine
    from asyncor.tasks.codec import TextCodec
    from asyncor.tasks.scoring import Scorer

    codec = TextCodec(model_dir)
    problems = heldout(config, codec, model_dir)
    scorer = Scorer(config.actors.verifier_workers, config.actors.verifier_deadline_s,
                    needs_pool=config.task.kind == "files")
    try:
        engine = Engine(model_dir, config.model.dtype, config.run.seed,
                        config.actors.max_prompt_tokens + response_tokens(config), config.actors.gpu_memory_utilization,
                        config.actors.tensor_parallel_size)
        result = evaluate_engine(config, engine, codec, scorer, problems)
    finally:
        scorer.close()
    return {**result, "model": model_dir}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="asyncor held-out evaluation")
    parser.add_argument("--config", required=True, help="resolved config.json")
    parser.add_argument("--model", required=True, help="model directory to evaluate")
    parser.add_argument("--out", default=None, help="also write the result json here")
    parser.add_argument("--tag", default="eval", help="log name")
    parser.add_argument("--version", type=int, default=None,
                        help="policy version of --model: the result is also logged to metrics.jsonl at this step")
    args = parser.parse_args()
    cfg = load_resolved(args.config)
    tlog.setup(args.tag, cfg.run_dir)
    from asyncor.actors.engine import cpu_environment

    os.environ.update(cpu_environment(cfg.actors.kv_cache_gib, f"0-{(os.cpu_count() or 1) - 1}",
                                      os.path.join(os.path.abspath(cfg.run.cache_dir), "vllm")))
    result = evaluate(cfg, args.model)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)
    if args.version is not None:
        from asyncor.telemetry.metrics import MetricsWriter

        metrics = MetricsWriter(cfg.run_dir, "eval", cfg.net.telemetry_address)
        metrics.log({**metrics_of(result), "eval/version": args.version}, step=args.version)
        metrics.close()
    write_role_summary(cfg, args.tag, result)  # to the launcher (roles/<tag>.json)
    tlog.get(args.tag).info("eval_done", **result)
