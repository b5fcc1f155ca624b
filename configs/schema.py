"""Typed run configuration.

Every field has a docstring (shown by `launch.py run --help-config`). Unknown
keys, wrong types and out-of-range values are refused by pydantic before any
process starts; `configs.loader` turns those errors into messages that name the
key and what it accepts. Derived values are properties, never second fields.

This module imports only pydantic, so config errors are instant.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Section(BaseModel):
    # extra="forbid": a typo in a key is an error, not a silently ignored setting.
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, validate_assignment=True)


class RunConfig(_Section):
    name: str = Field("tiny", pattern=r"^[A-Za-z0-9_.-]+$")
    """Run name; outputs go to `<output_dir>/<name>/` (letters, digits, `_.-`)."""
    output_dir: str = "runs"
    """Directory that holds one folder per run."""
    seed: int = Field(0, ge=0)
    """Seed for data order, sampling and model init."""
    overwrite: bool = True
    """Reuse `<output_dir>/<name>/` if it exists (its old logs and metrics are deleted)."""
    cache_dir: str = ".cache/asyncor"
    """Where the locally built tiny model, tokenizer and warm start are cached."""
    max_wall_s: float = Field(1800.0, gt=0)
    """Hard deadline for the RL phase; the launcher stops the run (error) when it passes."""


class TinyModelConfig(_Section):
    """Shape of the locally built Qwen2-architecture model (used when `model.path` is empty)."""

    hidden_size: int = Field(128, ge=16)
    """Model width. `hidden_size / num_attention_heads` must be a head size vLLM-CPU accepts (32, 64, 80, 96, 112, 128, ...)."""
    num_layers: int = Field(2, ge=1)
    """Number of decoder layers."""
    num_attention_heads: int = Field(2, ge=1)
    """Query heads."""
    num_key_value_heads: int = Field(2, ge=1)
    """Key/value heads (grouped-query attention when smaller than the query heads)."""
    intermediate_size: int = Field(512, ge=16)
    """MLP width."""

    @model_validator(mode="after")
    def _check_heads(self) -> "TinyModelConfig":
        if self.hidden_size % self.num_attention_heads:
            raise ValueError("model.tiny.hidden_size must be divisible by model.tiny.num_attention_heads")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError("model.tiny.num_attention_heads must be a multiple of model.tiny.num_key_value_heads")
        head = self.hidden_size // self.num_attention_heads
        if head not in (32, 64, 80, 96, 112, 128, 256):
            raise ValueError(
                f"model.tiny head size hidden_size/num_attention_heads = {head}; "
                "vLLM's CPU attention accepts 32, 64, 80, 96, 112, 128 or 256"
            )
        return self


class ModelConfig(_Section):
    path: str = ""
    """Hugging Face model directory. Empty: build the tiny model of `model.tiny` locally (no download)."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Weights dtype for learner and actors (float32 is fastest on CPUs without AMX)."""
    attn_implementation: Literal["auto", "sdpa", "eager", "flash_attention_2"] = "auto"
    """Learner attention: auto = flash_attention_2 on CUDA when installed, else sdpa."""
    tiny: TinyModelConfig = Field(default_factory=TinyModelConfig)
    """Shape of the built-in tiny model."""


class TaskConfig(_Section):
    kind: Literal["arithmetic"] = "arithmetic"
    """Built-in task. Only the synthetic arithmetic task exists so far."""
    digits: int = Field(2, ge=1, le=9)
    """Largest operand has this many digits."""
    operations: list[Literal["+", "-", "*"]] = ["+"]
    """Operations drawn uniformly per problem."""
    train_size: int = Field(5000, ge=10)
    """Problems in the training split."""
    heldout_size: int = Field(256, ge=1)
    """Problems in the held-out split (evaluation)."""


class WarmStartConfig(_Section):
    enabled: bool = True
    """Supervised warm start on the task before RL (cached on disk, keyed by everything it depends on)."""
    steps: int = Field(600, ge=0)
    """Optimiser steps of supervised training."""
    batch_size: int = Field(64, ge=1)
    """Sequences per supervised step."""
    lr: float = Field(1e-3, gt=0)
    """AdamW learning rate of the warm start."""


class ActorsConfig(_Section):
    count: int = Field(1, ge=1, le=256)
    """Number of actor processes (vLLM engines)."""
    group_size: int = Field(8, ge=1)
    """Samples generated per prompt (the GRPO group)."""
    temperature: float = Field(1.0, gt=0)
    """Sampling temperature; the learner divides logits by the same value."""
    top_p: float = Field(1.0, gt=0, le=1)
    """Nucleus sampling (1.0 = off; anything else makes behaviour log-probs differ from the learner's)."""
    max_prompt_tokens: int = Field(64, ge=1)
    """Longest prompt the engine accepts (vLLM's max_model_len is this plus max_response_tokens)."""
    max_response_tokens: int = Field(16, ge=1)
    """Length limit of one response; longer responses end with finish reason `length`."""
    prompts_per_chunk: int = Field(8, ge=1)
    """Prompts generated per vLLM call; new weights are swapped in between chunks."""
    threads: int = Field(1, ge=1)
    """CPU threads per vLLM engine (CPU only)."""
    kv_cache_gib: float = Field(1.0, gt=0)
    """KV cache size per engine on CPU (VLLM_CPU_KVCACHE_SPACE)."""
    gpu_memory_utilization: float = Field(0.5, gt=0, le=1)
    """Fraction of device memory vLLM may use (GPU only; CPU uses `kv_cache_gib`)."""
    grant_wait_s: float = Field(30.0, gt=0)
    """How long an actor waits for newer weights a grant requires before giving the grant back."""


class BufferConfig(_Section):
    max_staleness: int = Field(2, ge=0)
    """η: the most policy versions a trained sample may lag the learner. 0 = synchronous on-policy."""
    max_message_bytes: int = Field(64 * 2**20, ge=1024)
    """Messages larger than this are rejected (counted as `oversized`)."""
    max_groups: int = Field(4096, ge=1)
    """Hard cap on stored groups (admission keeps it far lower; a full buffer refuses, never evicts silently)."""


class LearnerConfig(_Section):
    steps: int = Field(60, ge=1)
    """Optimiser steps of RL, then the run ends."""
    prompts_per_step: int = Field(16, ge=1)
    """Groups (prompts) per optimiser step."""
    lr: float = Field(1e-3, gt=0)
    """AdamW learning rate."""
    weight_decay: float = Field(0.0, ge=0)
    """AdamW weight decay."""
    grad_clip: float = Field(1.0, gt=0)
    """Global gradient-norm clip."""
    clip_eps_low: float = Field(0.2, gt=0, lt=1)
    """PPO clip: ratio floor is 1 - clip_eps_low."""
    clip_eps_high: float = Field(0.2, gt=0)
    """PPO clip: ratio ceiling is 1 + clip_eps_high (clip-higher when > clip_eps_low)."""
    threads: int = Field(1, ge=1)
    """torch CPU threads of the learner."""
    batch_wait_s: float = Field(600.0, gt=0)
    """Deadline for one batch to arrive; past it the learner fails with an error."""
    logprob_impl: Literal["auto", "triton", "torch"] = "auto"
    """Log-prob + entropy implementation (kernels/): "triton" = fused kernels (CUDA), "torch" = chunked
    torch, "auto" = triton on CUDA and torch elsewhere. Used for the loss and the entropy metric."""
    logprob_chunk: int = Field(4096, ge=1)
    """Tokens per chunk of the torch log-prob path (bounds the logits held at once)."""


class SyncConfig(_Section):
    every: int = Field(1, ge=1)
    """Broadcast new weights every this many optimiser steps."""
    backend: Literal["auto", "gloo", "nccl"] = "auto"
    """Broadcast backend: auto = NCCL when learner and actors are on CUDA, gloo otherwise."""
    timeout_s: float = Field(120.0, gt=0)
    """Deadline for group set-up and for each broadcast."""


class NetConfig(_Section):
    host: str = "127.0.0.1"
    """Address the buffer and learner bind and everyone connects to."""
    buffer_actor_port: int = Field(0, ge=0, le=65535)
    """Buffer port for actors (0 = pick a free port)."""
    buffer_learner_port: int = Field(0, ge=0, le=65535)
    """Buffer port for the learner (0 = pick a free port)."""
    sync_port: int = Field(0, ge=0, le=65535)
    """Learner port announcing weight broadcasts to actors (0 = pick a free port)."""
    store_port: int = Field(0, ge=0, le=65535)
    """TCP store port of the broadcast group (0 = pick a free port)."""
    request_timeout_s: float = Field(30.0, gt=0)
    """Deadline for one request/reply on a socket; past it the role fails with an error."""


class EvalConfig(_Section):
    before_and_after: bool = True
    """Measure held-out accuracy before and after RL."""
    temperature: float = Field(1.0, ge=0)
    """Evaluation sampling temperature (0 = greedy). Default: the training temperature, as the paper's avg@k."""
    samples_per_problem: int = Field(4, ge=1)
    """k of avg@k: samples per held-out problem (1 when greedy). Accuracy is the mean over all samples."""
    seed: int = Field(1234, ge=0)
    """Sampling seed of evaluation: the same random stream before and after RL."""
    max_problems: int = Field(256, ge=1)
    """Held-out problems evaluated (at most `task.heldout_size`)."""


class Config(_Section):
    run: RunConfig = Field(default_factory=RunConfig)
    """Run identity and outputs."""
    model: ModelConfig = Field(default_factory=ModelConfig)
    """Policy model."""
    task: TaskConfig = Field(default_factory=TaskConfig)
    """Training and evaluation data."""
    warm_start: WarmStartConfig = Field(default_factory=WarmStartConfig)
    """Supervised warm start before RL."""
    actors: ActorsConfig = Field(default_factory=ActorsConfig)
    """Generation workers."""
    buffer: BufferConfig = Field(default_factory=BufferConfig)
    """Replay buffer and staleness bound."""
    learner: LearnerConfig = Field(default_factory=LearnerConfig)
    """Optimisation."""
    sync: SyncConfig = Field(default_factory=SyncConfig)
    """Weight broadcast from learner to actors."""
    net: NetConfig = Field(default_factory=NetConfig)
    """Addresses, ports and request deadlines."""
    eval: EvalConfig = Field(default_factory=EvalConfig)
    """Held-out evaluation."""

    @model_validator(mode="after")
    def _check_cross_fields(self) -> "Config":
        if self.eval.max_problems > self.task.heldout_size:
            raise ValueError(
                f"eval.max_problems ({self.eval.max_problems}) exceeds task.heldout_size ({self.task.heldout_size})"
            )
        if self.buffer.max_staleness < self.sync.every - 1:
            raise ValueError(
                f"buffer.max_staleness ({self.buffer.max_staleness}) must be >= sync.every - 1 ({self.sync.every - 1}): "
                "actors only get weights every sync.every steps, so fresher data cannot exist"
            )
        return self

    @property
    def run_dir(self) -> str:
        """`<output_dir>/<name>`: everything this run writes."""
        import os

        return os.path.join(self.run.output_dir, self.run.name)
