"""Evaluation with the actor engine: k samples per problem, scored, summarised as avg@k and pass@k.

One evaluation path: the held-out protocol below and `launch.py eval` / `filter` (studies/dataset_eval.py) both
generate k completions per problem with the engine, score them with `score_completions` (the task's verifiers,
tasks/scoring.py; a response cut at the length limit scores 0) and summarise them with `summarise`.

The held-out protocol is the same everywhere, so the numbers form one curve:
  * greedy accuracy (one decoding per problem), and
  * avg@k at `eval.temperature` with `eval.samples_per_problem` samples per
    problem and the fixed sampling seed `eval.seed` (the same random stream
    every time), plus pass@k and avg@k per data source,
on the task's first `eval.max_problems` held-out problems (tasks/task.py). Who runs it:
  * `launch.py run` runs this module as a phase before RL (version 0) and
    after it (`final/`, the last version) when `eval.before_and_after`;
  * during RL, actor `eval.actor` runs `evaluate_engine` with its own engine
    every `eval.every_steps` versions (`due` says when; actors/worker.py).
Every result is also appended to metrics.jsonl as role "eval" with step =
the policy version evaluated (`eval/accuracy`, `eval/greedy_accuracy`,
`eval/pass_at_k`, `eval/accuracy/<data source>`, `eval/seconds`).

Progress: every request's samples are counted as it finishes, inside the one `engine.generate` call (vLLM's
progress hook, actors/engine.py), and the samples done so far, with an ETA, are
logged as `progress` lines (telemetry/progress.py) that the launcher shows while it waits for the phase.
A multi-turn task's episodes run in one call per temperature (they share the engine's seeded stream), so they
are counted when each pass ends.
"""

from __future__ import annotations

import os
import time

import numpy as np

from asyncor.configs.schema import Config
from asyncor.telemetry import log as tlog
from asyncor.telemetry.progress import Progress
from asyncor.runtime.role_summary import write_role_summary
from asyncor.runtime.run_dir import RunDir


def response_tokens(config: Config) -> int:
    """Response length limit of evaluation: `eval.max_response_tokens`, else `actors.max_response_tokens`."""
    return config.eval.max_response_tokens or config.actors.max_response_tokens


def due(version: int, last_evaluated: int, every: int, final_version: int) -> bool:
    """Whether the actor evaluates after loading `version`: the first version it loads at or past each
    multiple of `every` (versions can be skipped: sync.every, or newer weights staged meanwhile).
    Version 0 and the final version are the before/after phases' (launcher/run.py)."""
    return every > 0 and 0 < version < final_version and version // every > last_evaluated // every


def summarise(records: list[dict], k: int) -> dict:
    """Per data source and overall avg@k / pass@k from per-problem records."""
    def stats(rows):
        rewards = np.array([r["rewards"] for r in rows], dtype=np.float64)
        return {"n": len(rows), f"avg@{k}": float(rewards.mean()), f"pass@{k}": float((rewards > 0).any(axis=1).mean())}

    sources = sorted({r["data_source"] for r in records})
    return {"k": k, "overall": stats(records),
            "by_source": {s: stats([r for r in records if r["data_source"] == s]) for s in sources}}


def score_completions(scorer, codec, problems: list, outputs: list) -> np.ndarray:
    """(problems, k) rewards of the engine's k completions of each problem (tasks/task.py Problem), through the
    task's verifiers; a completion cut at the length limit scores 0."""
    from asyncor.tasks.scoring import Sample

    prompts = [codec.decode(p.prompt_ids) if scorer.reward else "" for p in problems]  # a user reward reads it
    flat = scorer.score([Sample(p.kind, codec.decode(c.token_ids), p.reference, c.finish_reason == "length",
                                text, p.id)
                         for p, text, completions in zip(problems, prompts, outputs) for c in completions])
    return np.asarray(flat, dtype=np.float64).reshape(len(outputs), -1)


def episode_rewards(config: Config, engine, codec, scorer, problems: list, env, temperature: float, k: int
                    ) -> tuple[np.ndarray, dict]:
    """(problems, k) rewards of `k` episodes of each problem (a multi-turn task), and their tallies (turns used,
    end reasons): the rollout's own turns (actors/episodes.py), scored as the outbox scores them."""
    from asyncor.actors.episodes import run_episodes
    from asyncor.actors.outbox import score_groups

    groups, stats = run_episodes(engine, env, problems, k, temperature, 1.0, response_tokens(config), codec.eos_id,
                                 codec.vocab_size, config.task.env.workers)
    rewards = np.asarray(score_groups(scorer, codec, groups), dtype=np.float64).reshape(len(problems), k)
    return rewards, stats.summary()


def evaluate_engine(config: Config, engine, codec, scorer, problems: list, env=None) -> dict:
    """The held-out protocol on the weights in `engine`; `env`: a multi-turn task's environment
    (tasks/environment.py), whose episodes are run instead of single completions. Its progress (samples
    generated, greedy and sampled) is logged as `progress` lines (telemetry/progress.py)."""
    cfg = config.eval
    max_tokens = response_tokens(config)
    episodes: dict = {}
    k = cfg.samples_per_problem if cfg.temperature > 0 else 1
    progress = Progress("evaluation", len(problems) * (1 + k if cfg.temperature > 0 else 1), log=tlog.get("eval"),
                        unit="samples")

    def rewards(temperature: float, k: int) -> np.ndarray:
        progress.fields["decoding"] = "greedy" if temperature == 0 else f"{k} samples at T={temperature:g}"
        if env is not None:
            r, episodes[temperature] = episode_rewards(config, engine, codec, scorer, problems, env, temperature, k)
            progress.update(len(problems) * k)  # one call: its episodes share the engine's seeded stream
            return r
        outputs = engine.generate([p.prompt_ids for p in problems], k, temperature, 1.0, max_tokens, codec.eos_id,
                                  seed=cfg.seed, progress=progress)
        return score_completions(scorer, codec, problems, outputs)

    start = time.perf_counter()
    with progress:
        greedy = rewards(0.0, 1)
        main = rewards(cfg.temperature, k) if cfg.temperature > 0 else greedy  # never decode greedily twice
    stats = summarise([{"data_source": p.data_source, "rewards": r} for p, r in zip(problems, main)], k)
    extra = {}
    if env is not None:  # turns used, at the main temperature
        e = episodes[cfg.temperature if cfg.temperature > 0 else 0.0]
        extra = {"turns_mean": e["turns_mean"], "turns": e["turns"], "end_reasons": e["end_reasons"]}
    return {**extra, "accuracy": stats["overall"][f"avg@{k}"], "n": len(problems), "samples_per_problem": k,
            "temperature": cfg.temperature, "greedy_accuracy": float(greedy.mean()),
            "pass_at_k": stats["overall"][f"pass@{k}"],
            "by_source": {s: row[f"avg@{k}"] for s, row in stats["by_source"].items()},
            "max_response_tokens": max_tokens, "seconds": time.perf_counter() - start}


def metrics_of(result: dict) -> dict:
    """The `eval/*` metrics of one result."""
    values = {"eval/accuracy": result["accuracy"], "eval/greedy_accuracy": result["greedy_accuracy"],
              "eval/pass_at_k": result["pass_at_k"], "eval/seconds": result["seconds"]}
    if "turns_mean" in result:
        values["eval/turns_mean"] = result["turns_mean"]
    values.update({f"eval/accuracy/{source}": acc for source, acc in result["by_source"].items()})
    return values


def evaluate(config: Config, model_dir: str) -> dict:
    """Evaluate a saved policy directory with a fresh engine."""
    from asyncor.actors.engine import Engine
    from asyncor.tasks.codec import TextCodec
    from asyncor.tasks.environments import make_environment
    from asyncor.tasks.scoring import make_scorer
    from asyncor.tasks.task import make_task

    codec = TextCodec(model_dir)
    task = make_task(config, codec)
    problems = task.heldout(config.eval.max_problems)
    scorer = make_scorer(config, task.needs_verifier_pool, phase="eval")
    env = None
    try:
        env = make_environment(config, codec)  # before vLLM: a tool's sandbox processes are spawned
        engine = Engine(model_dir, config.model.dtype, config.run.seed,
                        config.actors.max_prompt_tokens + response_tokens(config), config.actors.gpu_memory_utilization,
                        config.actors.tensor_parallel_size, block_size=config.actors.kv_block_size)
        result = evaluate_engine(config, engine, codec, scorer, problems, env)
    finally:
        scorer.close()
        if env is not None:
            env.close()
    return {**result, "model": model_dir}



def main(config: Config, model: str, tag: str, version: int | None) -> None:
    """The evaluation phase before or after RL (launcher/run.py): `model` on the held-out split, logged as
    `eval/*` at `version` and sent to the launcher as roles/<tag>.json."""
    from asyncor.actors.engine import cpu_environment

    os.environ.update(cpu_environment(config.actors.kv_cache_gib, f"0-{(os.cpu_count() or 1) - 1}",
                                      os.path.join(os.path.abspath(config.run.cache_dir), "vllm")))
    result = evaluate(config, model)
    if version is not None:
        from asyncor.telemetry.metrics import MetricsWriter

        metrics = MetricsWriter(RunDir(config.run_dir).metrics, "eval", config.net.telemetry_address)
        metrics.log({**metrics_of(result), "eval/version": version}, step=version)
        metrics.close()
    write_role_summary(config, tag, result)  # to the launcher (roles/<tag>.json)
    tlog.get(tag).info("eval_done", **result)


if __name__ == "__main__":  # `python -m asyncor.actors.evaluate` (not a spawned verifier's re-import)
    from asyncor.runtime.entry import Option, run_role

    run_role(main, lambda args: args.tag, [
        Option("--model", "model", {"required": True, "help": "model directory to evaluate"}),
        Option("--tag", "tag", {"default": "eval", "help": "role name: eval_before, eval_after"}),
        Option("--version", "version", {"type": int, "default": None,
                                        "help": "policy version of --model: the result is also logged to "
                                                "metrics.jsonl at this step"})])
