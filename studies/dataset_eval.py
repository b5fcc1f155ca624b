"""`launch.py eval` and `launch.py filter`: sample a saved policy on local data files and score it.

eval: avg@k and pass@k of a saved policy on local data files.

K samples per problem from the actor engine (vLLM), scored by the verifier
pool (math / code), reported per data source and overall:
  avg@k  = mean correctness over all k samples (the report's protocol, e.g. AIME avg@32);
  pass@k = share of problems with at least one correct sample.
Writes `<out>/summary.json` and `<out>/problems.jsonl` (one line per problem:
id, source, kind, per-sample rewards, finish reasons, the first response's
first 2000 characters).
A response cut at the length limit scores 0 without being verified.
Progress: every request's samples are counted as it finishes, inside the one engine call (actors/engine.py),
and the samples done with an ETA are shown as they go
(telemetry/progress.py: a bar on an interactive terminal, else `progress` log lines on stdout).

Multi-turn (`--config` naming a run file whose [task.env] is a tool or an environment server): each sample is an
episode, run by the actor's own turns (actors/episodes.py) and scored as the actor scores it; the summary adds
turns per episode and end reasons, each problem's record its samples' turns. Without `--data`, the config's own
task is evaluated on its held-out split (e.g. `--config configs/calculator.toml`, with or without the tool:
`--set task.env.tool_enabled=false`).

filter (report §6.2, offline difficulty filter): N samples per problem; keep
the problems solved by 1..N-1 of them (drop the always- and never-solved),
write the kept original rows (same layout) and every problem's pass count
(`<out minus its extension>_pass_counts.jsonl`).
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass


from asyncor.actors.evaluate import score_completions, summarise
from asyncor.runtime.adapter_files import AdapterFileError
from asyncor.studies.export import find_weights, merged_model
from asyncor.tasks.dataset import DataError
from asyncor.telemetry import log as tlog
from asyncor.telemetry.progress import Progress


@dataclass
class EvalSettings:
    k: int = 4
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 1024
    max_prompt_tokens: int = 1024
    seed: int = 1234
    dtype: str = "auto"
    gpu_memory_utilization: float = 0.5
    workers: int = 2
    data_format: str = "auto"
    config: object = None  # configs.schema.Config of --config: its task (no --data) and its [task.env]


def sample_and_score(model_dir: str, data_paths: list[str], settings: EvalSettings, log=print):
    """(the data rows, per-problem records with k rewards each, timing info)."""
    from asyncor.actors.engine import Engine
    from asyncor.tasks.codec import TextCodec
    from asyncor.tasks.environments import make_environment
    from asyncor.tasks.scoring import Scorer
    from asyncor.tasks.task import file_problems, make_task

    start = time.perf_counter()
    codec = TextCodec(model_dir)
    max_prompt_tokens = settings.max_prompt_tokens
    with open(os.path.join(model_dir, "config.json")) as f:
        context = json.load(f).get("max_position_embeddings")
    if context and max_prompt_tokens + settings.max_tokens > context:
        max_prompt_tokens = context - settings.max_tokens
        if max_prompt_tokens < 1:
            raise ValueError(f"max_tokens {settings.max_tokens} leaves no room for a prompt in the model's "
                             f"{context}-token context")
        log(f"prompts limited to {max_prompt_tokens} tokens: the model's context is {context}")
    config = settings.config
    if data_paths:
        problems, rows, dropped = file_problems(data_paths, codec, model_dir, max_prompt_tokens, settings.data_format)
    else:  # the config's own task, its held-out split
        task = make_task(config, codec)
        problems, rows, dropped = task.heldout(config.eval.max_problems), None, 0
    log(f"{len(problems)} problems ({dropped} dropped: prompt longer than {max_prompt_tokens} tokens)")
    task_cfg = config.task if config is not None else None  # the config's task.reward scores, if it has one
    scorer = Scorer(settings.workers, needs_pool=any(p.kind != "arithmetic" for p in problems),
                    reward=task_cfg.reward if task_cfg else None,
                    reward_server=task_cfg.reward_server if task_cfg else None, phase="eval")
    env = make_environment(config, codec) if config is not None else None  # before vLLM (tool processes)
    try:
        engine = Engine(model_dir, settings.dtype, settings.seed, max_prompt_tokens + settings.max_tokens,
                        settings.gpu_memory_utilization, block_size=config.actors.kv_block_size if config else None)
        with Progress("sampling", len(problems) * settings.k, log=tlog.get("eval"), unit="samples") as progress:
            if env is None:  # in chunks of prompts, for progress: the same completions as one call
                outputs = engine.generate([p.prompt_ids for p in problems], settings.k, settings.temperature,
                                          settings.top_p, settings.max_tokens, codec.eos_id, seed=settings.seed,
                                          progress=progress)
                episodes = None
            else:
                from asyncor.actors.episodes import run_episodes

                groups, stats = run_episodes(engine, env, problems, settings.k, settings.temperature,
                                             settings.top_p, settings.max_tokens, codec.eos_id, codec.vocab_size,
                                             config.task.env.workers)
                outputs, episodes = [g.sequences for g in groups], stats.summary()
                progress.update(len(problems) * settings.k)  # one call: the episodes share the engine's stream
        gen_s = time.perf_counter() - start
        verify_start = time.perf_counter()
        rewards = _rewards(scorer, codec, problems, outputs, env is not None)
        verify_s = time.perf_counter() - verify_start
    finally:
        scorer.close()
        if env is not None:
            env.close()
    records = [{"id": p.id, "data_source": p.data_source, "kind": p.kind, "rewards": rewards[i].tolist(),
                "finish_reasons": [s.finish_reason for s in outputs[i]],
                "first_response": codec.decode(_ids(outputs[i][0]))[:2000]}
               for i, p in enumerate(problems)]
    if episodes is not None:
        for record, samples in zip(records, outputs):
            record["turns"] = [s.turns for s in samples]
            record["end_reasons"] = [s.end_reason for s in samples]
            record["first_response"] = codec.decode_all(samples[0].tokens)[:2000]
    info = {"model": model_dir, "data": data_paths, "dropped_long_prompts": dropped,
            "temperature": settings.temperature, "max_tokens": settings.max_tokens,
            "generate_s": gen_s, "verify_s": verify_s, "wall_s": time.perf_counter() - start}
    if episodes is not None:
        info["episodes"] = episodes
    return rows, records, info


def _ids(sample):
    return sample.token_ids if hasattr(sample, "token_ids") else sample.tokens


def _rewards(scorer, codec, problems, outputs, episodes: bool):
    """(problems, k) rewards: completions through `score_completions`; episodes as the actor's outbox scores them."""
    if not episodes:
        return score_completions(scorer, codec, problems, outputs)
    import numpy as np

    from asyncor.actors.outbox import score_groups
    from asyncor.actors.sequences import Group

    groups = [Group(samples[0].prompt, samples, 0.0) for samples in outputs]
    return np.asarray(score_groups(scorer, codec, groups), np.float64).reshape(len(outputs), -1)


def evaluate_files(model_dir: str, data_paths: list[str], out_dir: str, settings: EvalSettings, log=print) -> dict:
    _, records, info = sample_and_score(model_dir, data_paths, settings, log)
    summary = {**summarise(records, settings.k), **info}
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "problems.jsonl"), "w") as f:
        for record in records:
            f.write(json.dumps(record) + "\n")
    with open(os.path.join(out_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    return summary


def filter_files(model_dir: str, data_paths: list[str], out_path: str, settings: EvalSettings, log=print) -> dict:
    """Keep the problems solved by 1..N-1 of N samples; returns the counts."""
    from asyncor.tasks.dataset import write_rows

    if not data_paths:
        raise ValueError("filter needs --data (the rows it keeps)")
    problems, records, info = sample_and_score(model_dir, data_paths, settings, log)
    n = settings.k
    passes = [int(sum(r > 0 for r in rec["rewards"])) for rec in records]
    kept = [p for p, c in zip(problems, passes) if 0 < c < n]
    write_rows(out_path, [p.row for p in kept])
    counts_path = os.path.splitext(out_path)[0] + "_pass_counts.jsonl"
    with open(counts_path, "w") as f:
        for problem, count in zip(problems, passes):
            f.write(json.dumps({"id": problem.id, "data_source": problem.data_source, "passes": count, "samples": n,
                                "kept": 0 < count < n}) + "\n")
    result = {"problems": len(problems), "kept": len(kept), "never_solved": passes.count(0),
              "always_solved": passes.count(n), "samples": n, "out": out_path, "pass_counts": counts_path, **info}
    return result


def _checked_settings(args, k: int) -> EvalSettings | None:
    """The sampling settings of `eval` / `filter`, or None after printing what is wrong with the command line."""
    try:
        find_weights(args.model)
    except ValueError as exc:
        print(f"error: --model {exc}", file=sys.stderr)
        return None
    missing = [path for path in args.data if not os.path.isfile(path)]
    if missing:
        print(f"error: --data {' '.join(missing)}: no such file", file=sys.stderr)
        return None
    config = None
    if args.config is not None or args.set:
        from asyncor.configs.loader import ConfigError, load_config

        try:
            config = load_config(args.config, args.set, check_files=False)
        except ConfigError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return None
    if not args.data and config is None:
        print("error: give --data (files to evaluate on) or --config (a task with a held-out split)", file=sys.stderr)
        return None
    if k < 1 or args.temperature < 0 or args.max_tokens < 1:
        print("error: --k / --samples and --max-tokens must be >= 1 and --temperature >= 0", file=sys.stderr)
        return None
    if args.temperature == 0 and k > 1:
        print(f"error: --temperature 0 is greedy decoding, one answer per problem: use --k 1 (not {k})",
              file=sys.stderr)
        return None
    from asyncor.actors.engine import cpu_environment

    cache = os.path.abspath(os.path.join(".cache", "asyncor", "vllm"))
    for key, value in cpu_environment(1.0, f"0-{(os.cpu_count() or 1) - 1}", cache).items():
        os.environ.setdefault(key, value)  # before vLLM is imported
    return EvalSettings(k=k, temperature=args.temperature, max_tokens=args.max_tokens,
                        max_prompt_tokens=args.max_prompt_tokens, seed=args.seed, workers=args.workers,
                        data_format=args.format, config=config)


def eval_command(args) -> int:
    """`launch.py eval`: avg@k and pass@k per data source, printed and written under `--out`."""
    settings = _checked_settings(args, args.k)
    if settings is None:
        return 2
    out = args.out or os.path.join(args.model, "eval")
    try:
        with merged_model(args.model, args.base or "") as model_dir:  # a LoRA adapter: merged into its base first
            summary = evaluate_files(model_dir, args.data, out, settings)
    except (DataError, ValueError, AdapterFileError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    k = summary["k"]
    print(f"{'data source':<28} {'n':>5} {f'avg@{k}':>8} {f'pass@{k}':>8}")
    for source, row in [*summary["by_source"].items(), ("overall", summary["overall"])]:
        print(f"{source:<28} {row['n']:>5} {row[f'avg@{k}']:>8.3f} {row[f'pass@{k}']:>8.3f}")
    if "episodes" in summary:
        e = summary["episodes"]
        ends = ", ".join(f"{k} {v}" for k, v in e["end_reasons"].items() if v)
        print(f"episodes: {e['turns_mean']:.2f} turns each ({e['turns']}); ended: {ends}")
    print(f"per-problem results: {os.path.join(out, 'problems.jsonl')}; summary: {os.path.join(out, 'summary.json')}")
    return 0


def filter_command(args) -> int:
    """`launch.py filter`: the rows solved by 1..N-1 of N samples, written to `--out`."""
    settings = _checked_settings(args, args.samples)
    if settings is None:
        return 2
    try:
        with merged_model(args.model, args.base or "") as model_dir:
            result = filter_files(model_dir, args.data, args.out, settings)
    except (DataError, ValueError, AdapterFileError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"kept {result['kept']} of {result['problems']} problems (never solved {result['never_solved']}, "
          f"always solved {result['always_solved']}, of {settings.k} samples each)")
    print(f"kept rows: {result['out']}; pass counts: {result['pass_counts']}")
    return 0
