"""The actor's vLLM engine: stream sequences with behaviour log-probs, load new weights.

Two ways in:
* streaming (the rollout loop, actors/rollout.py): `add` one request (one
  sequence, or a group's n sequences), `step` the engine once (one decoding
  step for every running sequence, prefills included), `abort`. This is vLLM's
  engine-level request API (`LLMEngine.add_request` / `step`), so requests
  join and leave the running batch at any step. A sequence added with
  `stream=True` reports its new tokens every step; otherwise only once, when
  its request finishes, with the policy version of every token from vLLM's own
  weight-version spans (`load_weights` labels each load): per-step outputs for
  hundreds of sequences cost the Python loop more than the decoding step
  itself on a small model;
* `generate` (held-out evaluation): a blocking call over a list of prompts,
  only while nothing is streaming (it would consume the stream's outputs). With a `progress`
  (telemetry/progress.py) it counts each request's samples as the request finishes, through vLLM's own
  progress-bar hook (`use_tqdm` given a tqdm class that draws nowhere), so one call keeps the whole batch.

The engine core runs in the actor's process (VLLM_ENABLE_V1_MULTIPROCESSING=0,
set by `cpu_environment` on CPU and CUDA alike; `load_weights` needs it with
tensor parallelism, docs/clusters.md). Weights are swapped with the worker's
`reload_weights`, which on CPU redoes vLLM-CPU's oneDNN prepacking and on CUDA
loads the tensors into the running model. KV computed by old weights is never
reused: every request's prefix-cache entries are salted by the version it
started on (`cache_salt`), and the cache is also reset after a load (which
vLLM refuses while sequences run). Log-probs are vLLM's *processed* log-probs,
i.e. after temperature scaling: exactly the behaviour policy the learner's
ratio needs.

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
    token_ids: np.ndarray  # (k,) int32 new tokens (1 per step when streamed, else all of them at the end)
    logprobs: np.ndarray  # (k,) float32 their behaviour log-probs
    finish_reason: str | None  # None while running, then stop | length
    versions: np.ndarray | None = None  # (k,) int32 policy version of each token (non-streamed sequences)
    cached_tokens: int = 0  # when finished: prompt tokens the prefix cache held


@dataclass
class Completion:
    token_ids: np.ndarray  # (T,) int32
    logprobs: np.ndarray  # (T,) float32
    finish_reason: str  # stop | length | abort


class Engine:
    def __init__(self, model_dir: str, dtype: str, seed: int, max_model_len: int, gpu_memory_utilization: float,
                 tensor_parallel_size: int = 1, version: int = 0, block_size: int | None = None):
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
            # k > 1: k worker processes, each holding a shard; `load_weights` reaches every one (collective_rpc).
            tensor_parallel_size=tensor_parallel_size,
            # Prefix-cache hits come in whole KV blocks: an episode's next turn reuses its earlier turns' KV only
            # block by block (actors.kv_block_size; None: vLLM's default, 128 tokens on CPU).
            **({"block_size": block_size} if block_size else {}),
        )

        self.engine = self.llm.llm_engine
        self.engine.set_weight_version(str(version))  # the version of the weights on disk (a checkpoint's, resumed)
        self.sizes: dict[str, int] = {}  # request id -> sequences in it, until reported

    # ------------------------------------------------------------------ streaming

    def add(self, request_id: str, prompt: np.ndarray, max_tokens: int, temperature: float, top_p: float,
            stop_token_id: int, salt: str, stream: bool = False, n: int = 1, seed: int | None = None,
            extra_stop_ids: tuple[int, ...] = ()) -> None:
        """Start `n` sequences of one prompt. `salt` separates prefix-cache entries: KV computed by one version's
        weights is never reused under another's (vLLM's `cache_salt`). `stream`: report tokens every step (one
        sequence per request). With n > 1 the sequences are reported together when the last one finishes, as
        `request_id/0` .. `request_id/{n-1}` (one request: vLLM prepares it once, not n times). `seed`: this
        request's own sampling seed (vLLM gives sequence i of n the seed `seed + i`); None: the engine's stream.
        `extra_stop_ids`: more tokens that end the request (an episode's turn-end tokens); like eos, the stop token
        is the last of its output."""
        if stream and n != 1:
            raise ValueError("a streamed request holds one sequence")
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt
        from vllm.sampling_params import RequestOutputKind

        params = SamplingParams(n=n, temperature=temperature, top_p=top_p, max_tokens=max_tokens, logprobs=0,
                                stop_token_ids=[stop_token_id, *extra_stop_ids], seed=seed,
                                output_kind=RequestOutputKind.DELTA if stream else RequestOutputKind.FINAL_ONLY)
        self.engine.add_request(request_id, TokensPrompt(prompt_token_ids=prompt.tolist(), cache_salt=salt), params)
        self.sizes[request_id] = n

    def step(self) -> list[Delta]:
        """One engine step; returns the streamed sequences' new tokens and every sequence that finished."""
        deltas = []
        for out in self.engine.step():
            n = self.sizes.pop(out.request_id, 1) if out.finished else 1
            for c in out.outputs:
                ids = np.asarray(c.token_ids, dtype=np.int32)
                lps = np.asarray([lp[t].logprob for t, lp in zip(c.token_ids, c.logprobs or [])], dtype=np.float32)
                reason, versions = None, None
                if out.finished:
                    reason = "length" if c.finish_reason == "length" else "stop"
                    if c.weight_versions:  # non-streamed: its whole output, with the version spans
                        versions = np.empty(len(ids), dtype=np.int32)
                        for span in c.weight_versions:
                            versions[span.start:span.end] = int(span.version)
                request_id = f"{out.request_id}/{c.index}" if n > 1 else out.request_id
                deltas.append(Delta(request_id, ids, lps, reason, versions,
                                    (out.num_cached_tokens or 0) if out.finished else 0))
        return deltas

    def abort(self, request_ids: list[str]) -> None:
        """Abort requests (a request of n sequences as a whole: by the id it was added with)."""
        self.engine.abort_request(list(request_ids))
        for request_id in request_ids:
            self.sizes.pop(request_id, None)

    def running(self) -> int:
        """Sequences in the engine now: a finished sequence of a request of n stops counting at once, though
        it is reported with its group."""
        return self.engine.get_num_unfinished_requests()

    # ------------------------------------------------------------------ blocking

    def generate(self, prompts: list[np.ndarray], n: int, temperature: float, top_p: float, max_tokens: int,
                 stop_token_id: int, seed: int | None = None, progress=None) -> list[list[Completion]]:
        import functools

        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        assert not self.sizes, "generate() would consume the streaming sequences' outputs"
        params = SamplingParams(n=n, temperature=temperature, top_p=top_p, max_tokens=max_tokens, logprobs=0,
                                stop_token_ids=[stop_token_id], seed=seed)
        outputs = self.llm.generate([TokensPrompt(prompt_token_ids=p.tolist()) for p in prompts], params,
                                    use_tqdm=functools.partial(counting_bar(), progress=progress)
                                    if progress is not None else False)
        groups = []
        for out in outputs:
            samples = []
            for c in out.outputs:
                ids = np.asarray(c.token_ids, dtype=np.int32)
                lps = np.asarray([lp[t].logprob for t, lp in zip(c.token_ids, c.logprobs)], dtype=np.float32)
                samples.append(Completion(ids, lps, "length" if c.finish_reason == "length" else "stop"))
            groups.append(samples)
        return groups

    def load_weights(self, named_tensors, version: int) -> None:
        """Load new weights between two steps; tokens sampled from now on are labelled `version`.

        With tensor_parallel_size > 1 the call runs on every worker, and each keeps its shard of the full
        tensors (tests/integration/test_tensor_parallel.py). That needs the engine core in this process
        (VLLM_ENABLE_V1_MULTIPROCESSING=0, `cpu_environment`): a separate core process's msgpack channel
        hands the workers each tensor as a plain list."""
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": list(named_tensors),
                                                          "is_checkpoint_format": True})
        self.engine.set_weight_version(str(version))
        # Fails (returns False) while sequences run; their salts keep old KV from being reused anyway.
        self.llm.reset_prefix_cache()


def counting_bar():
    """A tqdm class for vLLM's `LLM.generate(use_tqdm=...)` that draws nothing and hands every `update(n)` (a
    finished request's n samples) to the `progress` it is made with (telemetry/progress.py)."""
    import os

    from tqdm import tqdm

    class CountingBar(tqdm):
        def __init__(self, *args, progress, **kwargs):
            self._progress = progress
            kwargs.pop("file", None)
            self._sink = open(os.devnull, "w")
            super().__init__(*args, file=self._sink, mininterval=3600.0, **kwargs)

        def update(self, n=1):
            super().update(n)
            self._progress.update(n)

        def close(self):
            super().close()
            self._sink.close()

    return CountingBar

