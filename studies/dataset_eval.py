"""`launch.py eval` and `launch.py filter`: sample a saved policy on local data files and score it.

eval: avg@k and pass@k of a saved policy on local data files.

K samples per problem from the actor engine (vLLM), scored by the verifier
pool (math / code), reported per data source and overall:
  avg@k  = mean correctness over all k samples (the report's protocol, e.g. AIME avg@32);
  pass@k = share of problems with at least one correct sample.
Writes `<out>/summary.json` and `<out>/problems.jsonl` (one line per problem:
id, source, kind, per-sample rewards, finish reasons, the first response).
A response cut at the length limit scores 0 without being verified.

filter (report §6.2, offline difficulty filter): N samples per problem; keep
the problems solved by 1..N-1 of them (drop the always- and never-solved),
write the kept original rows (same layout) and every problem's pass count.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass

import numpy as np


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


def summarise(records: list[dict], k: int) -> dict:
    """Per data source and overall avg@k / pass@k from per-problem records."""
    def stats(rows):
        rewards = np.array([r["rewards"] for r in rows], dtype=np.float64)
        return {"n": len(rows), f"avg@{k}": float(rewards.mean()), f"pass@{k}": float((rewards > 0).any(axis=1).mean())}

    sources = sorted({r["data_source"] for r in records})
    return {"k": k, "overall": stats(records),
            "by_source": {s: stats([r for r in records if r["data_source"] == s]) for s in sources}}


def rewards_per_problem(scorer, codec, kinds: list[str], references: list, outputs) -> np.ndarray:
    """(problems, k) rewards of the engine's outputs, through the Scorer (truncated samples score 0)."""
    from asyncor.tasks.scoring import Sample

    flat = scorer.score([Sample(kind, codec.decode(s.token_ids), ref, s.finish_reason == "length")
                         for kind, ref, samples in zip(kinds, references, outputs) for s in samples])
    return np.asarray(flat, dtype=np.float64).reshape(len(outputs), -1)


def sample_and_score(model_dir: str, data_paths: list[str], settings: EvalSettings, log=print):
    """(problems, per-problem records with k rewards each, timing info)."""
    from asyncor.actors.engine import Engine
    from asyncor.tasks.codec import TextCodec
    from asyncor.tasks.dataset import load_problems
    from asyncor.tasks.scoring import Scorer

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
    problems, prompt_ids, dropped = load_problems(data_paths, codec, model_dir, max_prompt_tokens,
                                                  settings.data_format)
    log(f"{len(problems)} problems ({dropped} dropped: prompt longer than {max_prompt_tokens} tokens)")
    engine = Engine(model_dir, settings.dtype, settings.seed, max_prompt_tokens + settings.max_tokens,
                    settings.gpu_memory_utilization)
    outputs = engine.generate(prompt_ids, settings.k, settings.temperature, settings.top_p, settings.max_tokens,
                              codec.eos_id, seed=settings.seed)
    gen_s = time.perf_counter() - start
    scorer = Scorer(settings.workers, needs_pool=True)
    try:
        verify_start = time.perf_counter()
        rewards = rewards_per_problem(scorer, codec, [p.kind for p in problems], [p.reference for p in problems],
                                      outputs)
        verify_s = time.perf_counter() - verify_start
    finally:
        scorer.close()
    records = [{"id": p.id, "data_source": p.data_source, "kind": p.kind, "rewards": rewards[i].tolist(),
                "finish_reasons": [s.finish_reason for s in outputs[i]],
                "first_response": codec.decode(outputs[i][0].token_ids)[:2000]}
               for i, p in enumerate(problems)]
    info = {"model": model_dir, "data": data_paths, "dropped_long_prompts": dropped,
            "temperature": settings.temperature, "max_tokens": settings.max_tokens,
            "generate_s": gen_s, "verify_s": verify_s, "wall_s": time.perf_counter() - start}
    return problems, records, info


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
