"""Typed run configuration.

Every field has a docstring (shown by `launch.py config`). Unknown
keys, wrong types and out-of-range values are refused by pydantic before any
process starts; `configs.loader` turns those errors into messages that name the
key and what it accepts. Derived values are properties, never second fields.

This module imports only pydantic, so config errors are instant.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from asyncor.configs.algorithms import ADVANTAGES, CORRECTIONS, LOSS_AGGS, OBJECTIVES, requirement_errors


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
    prepare_timeout_s: float = Field(1800.0, gt=0)
    """Deadline for preparing the policy (building the tiny model and its warm start, or checking model.path)."""
    eval_timeout_s: float = Field(900.0, gt=0)
    """Deadline for each held-out evaluation before and after RL (eval.before_and_after); long-context
    evaluations of large models need hours."""


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

    def architecture(self) -> dict:
        """The transformers Qwen2Config fields of this shape (the tokenizer adds vocab and special tokens)."""
        return {"model_type": "qwen2", "hidden_size": self.hidden_size, "intermediate_size": self.intermediate_size,
                "num_hidden_layers": self.num_layers, "num_attention_heads": self.num_attention_heads,
                "num_key_value_heads": self.num_key_value_heads, "max_position_embeddings": 256,
                "tie_word_embeddings": False}

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


class EnvConfig(_Section):
    """[task.env]: how an episode runs (docs/environments.md). "single" is one completion per sample, scored by the
    task's verifier; "tool" and "http" are multi-turn episodes: the policy's turn ends at `call_end` (or eos), the
    environment answers with an observation appended as context (never trained), until done, `max_turns` or the
    response token limit."""

    kind: Literal["single", "tool", "http", "custom"] = "single"
    """"single": one completion per sample. "tool": a turn ending in `call_end` runs `tool` on the text between
    `call_start` and `call_end`, and its output comes back between `observation_start` and `observation_end`; a
    turn ending in eos is the answer, scored by the task's verifier. "http": a gym-style server at `http_url`
    (`POST /reset`, `POST /step`, JSON) answers every turn (tasks/http_env.py). "custom": your own environment
    class, built by `factory` (docs/environments.md)."""
    factory: str = ""
    """kind = "custom": `module:function`, importable by every actor, called as `function(settings, codec)` (this
    [task.env] section and the policy's tokenizer, tasks/codec.py) and returning an Environment
    (tasks/environment.py)."""
    tool: Literal["calculator", "python"] = "calculator"
    """kind = "tool": "calculator" evaluates `a*b`, `a+b`, `a-b` of integers; "python" runs the code in the
    verifiers' sandbox (same limits and jail, docs/verifiers.md) and answers with what it printed."""
    tool_enabled: bool = True
    """false: every tool call is answered "unavailable" (`observation_start` + `?` + `observation_end`): the same
    episodes without the tool, e.g. to evaluate a policy with and without it."""
    call_start: str = "<tool_call>"
    """Text that opens a tool call in the policy's turn."""
    call_end: str = "</tool_call>"
    """Text that closes a tool call and ends the policy's turn; must be one token of the model's tokenizer (vLLM
    stops on token ids; the actor never decodes text while generating)."""
    observation_start: str = "<tool_response>"
    """Text before the tool's output in the observation."""
    observation_end: str = "</tool_response>"
    """Text after the tool's output in the observation."""
    max_turns: int = Field(4, ge=1, le=256)
    """Most policy turns per episode; an episode still calling tools at the last one ends with reason
    "turn_limit" and reward 0."""
    max_observation_tokens: int = Field(256, ge=1)
    """Longest observation appended in tokens; a longer one is cut to this (counted: "observation_cut")."""
    step_timeout_s: float = Field(10.0, gt=0)
    """Deadline of one environment step (a tool run, or an HTTP step with its retries); past it the episode ends
    with reason "env_timeout" and reward 0."""
    workers: int = Field(4, ge=1, le=256)
    """Environment steps run at once per actor (threads); an episode waiting for one frees its engine slot."""
    http_url: str = ""
    """kind = "http": the environment server's base URL, e.g. `http://127.0.0.1:8000`."""
    http_timeout_s: float = Field(5.0, gt=0)
    """kind = "http": deadline of one HTTP request."""
    http_retries: int = Field(2, ge=0, le=10)
    """kind = "http": requests retried after a connection error or timeout (within `step_timeout_s`)."""

    @property
    def multi_turn(self) -> bool:
        return self.kind != "single"

    @model_validator(mode="after")
    def _check(self) -> "EnvConfig":
        if self.kind == "http" and not self.http_url.startswith(("http://", "https://")):
            raise ValueError(f'kind = "http" needs http_url = "http://host:port" (got {self.http_url!r})')
        if self.kind == "tool" and not (self.call_start and self.call_end):
            raise ValueError('kind = "tool" needs call_start and call_end (the tool-call tags)')
        if self.kind == "custom" and (self.factory.count(":") != 1 or not all(self.factory.split(":"))):
            raise ValueError(f'kind = "custom" needs factory = "module:function" (got {self.factory!r})')
        return self


IMPORT_PATH = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$"


class RewardServerConfig(_Section):
    """[task.reward_server]: how a `task.reward` that is an http(s) URL is called (tasks/remote_reward.py,
    docs/rewards.md): batched POSTs, a deadline per request, retries with back-off, a cap on requests in flight."""

    batch_size: int = Field(32, ge=1)
    """Samples per request."""
    timeout_s: float = Field(30.0, gt=0)
    """Deadline of one request (connect + answer); past it the request is retried."""
    retries: int = Field(3, ge=0)
    """Tries after the first before the batch's samples score 0 (counted as `reward_failures`)."""
    backoff_s: float = Field(0.5, gt=0)
    """Wait before the first retry; doubled at each further one, with +-25 % jitter."""
    max_concurrency: int = Field(4, ge=1)
    """Requests in flight at once, per actor."""
    api_key_env: str | None = None
    """Name of an environment variable whose value is sent as `Authorization: Bearer <value>` (the key itself never
    goes into the config or the run directory)."""


class TaskConfig(_Section):
    kind: Literal["arithmetic", "repeat", "calculator", "files", "custom"] = "arithmetic"
    """"arithmetic": the built-in synthetic task (exact-answer reward). "repeat": `37*5=` -> `3737373737`, response
    lengths long-tailed up to `max_repeat` x `digits` tokens (tasks/repeat.py; for studying generation scheduling).
    "calculator": products too large for the tiny model to work out, `347*86=` -> `29842`, with a calculator tool
    (tasks/calculator.py; configs/calculator.toml). "files": math / code problems from `train_files` /
    `heldout_files`, rewarded by the math and code verifiers (docs/verifiers.md). "custom": your own task class,
    `source` (docs/custom_tasks.md)."""
    source: str | None = Field(None, pattern=IMPORT_PATH)
    """kind = "custom": the task, as "package.module:Class" (importable by every role: on PYTHONPATH or installed);
    called as Class(options) (docs/custom_tasks.md)."""
    options: dict = {}
    """kind = "custom": handed to the task's constructor as a dict (plain TOML values)."""
    reward: str | None = None
    """Score every answer with your reward instead of the task's own: "package.module:function", called in the
    verifier pool's processes as function(problem, response, metadata) -> float | (float, details); or the
    "http://" / "https://" URL of a reward server (task.reward_server). docs/rewards.md."""
    reward_server: RewardServerConfig = Field(default_factory=RewardServerConfig)
    """task.reward = a URL: how the server is called."""
    env: EnvConfig = Field(default_factory=EnvConfig)
    """How an episode runs: one completion, or turns with a tool or an environment server (docs/environments.md)."""
    train_files: list[str] = []
    """kind = "files": training data, local .jsonl / .parquet (verl or plain layout)."""
    heldout_files: list[str] = []
    """kind = "files": held-out data for evaluation before and after RL (and during it: eval.every_steps)."""
    format: Literal["auto", "verl", "plain"] = "auto"
    """kind = "files": row layout of the data files ("auto" tells them apart by their columns)."""
    digits: int = Field(2, ge=1, le=9)
    """Largest operand has this many digits."""
    operations: list[Literal["+", "-", "*"]] = ["+"]
    """Operations drawn uniformly per problem."""
    max_repeat: int = Field(24, ge=1)
    """kind = "repeat": most times a number is repeated (the tail of the length distribution; median 2)."""
    train_size: int = Field(5000, ge=10)
    """Problems in the training split."""
    heldout_size: int = Field(256, ge=1)
    """Problems in the held-out split (evaluation)."""

    @field_validator("train_files", "heldout_files")
    @classmethod
    def _absolute(cls, paths: list[str]) -> list[str]:
        import os

        return [os.path.abspath(p) for p in paths]  # every role resolves them the same way

    @model_validator(mode="after")
    def _check_files(self, info: ValidationInfo) -> "TaskConfig":
        import os

        if self.kind == "custom" and not self.source:
            raise ValueError('kind = "custom" needs task.source, the task as "package.module:Class"')
        if self.reward is not None and not (re.match(IMPORT_PATH, self.reward)
                                            or re.match(r"^https?://[^\s/]+", self.reward)):
            raise ValueError(f"task.reward = {self.reward!r}: give a function as \"package.module:function\" or a "
                             f"reward server's \"http://host:port/path\" URL")
        if self.kind == "files":
            if not self.train_files:
                raise ValueError('kind = "files" needs train_files (local .jsonl / .parquet paths)')
            check = not info.context or info.context.get("check_files", True)
            missing = [p for p in self.train_files + self.heldout_files if check and not os.path.isfile(p)]
            if missing:
                raise ValueError(f"data files not found: {missing}")
        return self


class WarmStartConfig(_Section):
    enabled: bool = True
    """Supervised warm start on the task before RL (cached on disk, keyed by everything it depends on)."""
    steps: int = Field(600, ge=0)
    """Optimiser steps of supervised training."""
    batch_size: int = Field(64, ge=1)
    """Sequences per supervised step."""
    lr: float = Field(1e-3, gt=0)
    """AdamW learning rate of the warm start."""
    tool_fraction: float = Field(0.3, ge=0.0, le=1.0)
    """task.kind = "calculator": share of warm-start examples that call the tool (the rest answer at once), so RL
    starts from a policy that sometimes calls it (tasks/calculator.py)."""


class ActorsConfig(_Section):
    count: int = Field(1, ge=1, le=256)
    """Number of actor processes (vLLM engines)."""
    tensor_parallel_size: int = Field(1, ge=1, le=64)
    """GPUs per vLLM engine (tensor parallelism within one node); weights received by broadcast reach every
    tensor-parallel worker, which loads its own shard. CPU engines run with 1."""
    group_size: int = Field(8, ge=1)
    """Samples generated per prompt (the GRPO group)."""
    temperature: float = Field(1.0, gt=0)
    """Sampling temperature; the learner divides logits by the same value."""
    top_p: float = Field(1.0, gt=0, le=1)
    """Nucleus sampling (1.0 = off; anything else makes behaviour log-probs differ from the learner's)."""
    kv_block_size: int | None = Field(None, ge=1, le=1024)
    """KV-cache block size in tokens (vLLM's `block_size`; unset: vLLM's default, 128 on CPU). Prefix-cache hits
    come in whole blocks, so a multi-turn episode's next turn reuses its earlier turns' KV only block by block:
    short episodes want small blocks (CPU: a multiple of 32)."""
    max_prompt_tokens: int = Field(64, ge=1)
    """Longest prompt the engine accepts (vLLM's max_model_len is this plus the largest max_response_tokens of
    any stage, or of evaluation on the evaluating actor). Longer prompts of data files are left out."""
    max_response_tokens: int = Field(16, ge=1)
    """Length limit of one response; longer responses end with finish reason `length`."""
    prompts_per_chunk: int = Field(8, ge=1)
    """update_mode = "chunk": prompts per grant, generated together; the next grant (and new weights) wait until
    the whole chunk is done. "inflight": sets the default of `inflight_sequences`."""
    update_mode: Literal["chunk", "inflight"] = "inflight"
    """When new weights enter the engine. "inflight": between two decoding steps, as soon as they arrive; running
    sequences continue on them (see `inflight_kv`) and every token records the version that sampled it; the engine
    is refilled with new prompts as sequences finish, so it stays full. "chunk": only once every running sequence
    has finished, and new prompts only then too (the old behaviour, kept for comparison)."""
    inflight_kv: Literal["keep", "recompute"] = "keep"
    """update_mode = "inflight": what running sequences do at a switch. "keep": continue on the KV cache the old
    weights computed (PipelineRL; free; later tokens see old-weight keys and values, and their behaviour log-probs
    are exactly what was sampled). "recompute": restart each on the new weights from prompt + tokens so far (one
    prefill per running sequence; later tokens are exactly the new version's)."""
    inflight_sequences: int = Field(0, ge=0)
    """update_mode = "inflight": sequences kept in the engine; new prompts are asked for as they finish.
    0 = prompts_per_chunk x the largest group size."""
    seeded_requests: bool = False
    """Give every generation request its own sampling seed, from run.seed, the request (prompt and sample) and
    the policy version: the same weights and prompt give the same samples whatever else runs in the engine, so a
    run resumed from a checkpoint (with buffer.max_staleness = 0) repeats the uninterrupted one. Costs one noise
    draw per request per decoding step (on GPUs vLLM then samples through PyTorch instead of FlashInfer). On CPUs,
    vLLM fails on a seeded request whose prefill is split over steps, which a multi-turn task's long later turns
    make likely: leave it off there."""
    probe: bool = False
    """After every weight load, generate 4 greedy tokens of a fixed prompt and log their summed log-prob as
    `actor/probe_logprob` (changes exactly when the engine's weights change: a check for weight sync)."""
    threads: int = Field(1, ge=1)
    """CPU threads per vLLM engine (CPU only)."""
    kv_cache_gib: float = Field(1.0, gt=0)
    """KV cache size per engine on CPU (VLLM_CPU_KVCACHE_SPACE)."""
    gpu_memory_utilization: float = Field(0.5, gt=0, le=1)
    """Fraction of device memory vLLM may use (GPU only; CPU uses `kv_cache_gib`)."""
    grant_wait_s: float = Field(30.0, gt=0)
    """How long an actor waits for newer weights a grant requires before giving the grant back."""
    verifier_workers: int = Field(2, ge=1)
    """task.kind = "files": verifier processes per actor (math-verify, sandboxed code runs)."""
    verifier_deadline_s: float = Field(40.0, gt=0)
    """Hard limit per verified sample; past it the worker is killed and the sample scores 0."""
    max_restarts: int = Field(3, ge=0)
    """How many times the launcher restarts one actor that exits with an error while the learner trains; the
    restarted actor rejoins the broadcast and gets the current weights before it generates. 0: any actor
    failure fails the run."""
    restart_backoff_s: float = Field(2.0, ge=0)
    """Wait before restarting a failed actor; doubles with each restart of the same actor (at most 60 s)."""


class BufferConfig(_Section):
    max_staleness: int = Field(2, ge=0)
    """η: the most policy versions a trained sample may lag the learner. 0 = synchronous on-policy."""
    stale_policy: Literal["drop", "train"] = "drop"
    """What happens to a stored group older than η when a batch is taken. "drop": it is dropped and counted
    (buffer/dropped_stale); "train": it is trained on anyway, and algo.correction handles it. Admission still
    bounds how much is generated ahead (η); the length bias of dropping is measured either way
    (buffer/dropped_len_mean against buffer/trained_len_mean)."""
    max_message_bytes: int = Field(64 * 2**20, ge=1024)
    """Messages larger than this are rejected (counted as `oversized`)."""
    max_groups: int = Field(4096, ge=1)
    """Hard cap on stored groups (admission keeps it far lower; a full buffer refuses, never evicts silently)."""


LORA_DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class LoraConfig(_Section):
    """[learner.lora]: train low-rank adapters instead of the full weights (peft; docs/lora.md). Only the adapter
    tensors are trainable, in the optimiser, broadcast to the actors and checkpointed; the base weights stay those
    of the policy the run started from. `launch.py run` checks the targets and the rank against the model before
    any process starts."""

    enabled: bool = False
    """Train LoRA adapters (true) or the full weights (false, the default)."""
    rank: int = Field(16, ge=1)
    """Adapter rank r: each targeted weight W (out x in) learns B (out x r) @ A (r x in). At most the smaller side
    of every targeted layer."""
    alpha: float = Field(32.0, gt=0)
    """Scaling numerator: the update is (alpha / rank) * B @ A (peft's `lora_alpha`)."""
    dropout: float = Field(0.0, ge=0, lt=1)
    """Dropout on the adapter's input while training (peft's `lora_dropout`)."""
    target_modules: list[str] = Field(default_factory=lambda: list(LORA_DEFAULT_TARGETS), min_length=1)
    """Names of the linear layers that get adapters, matched as the last part of a module's name in every decoder
    layer (the Qwen2 / Llama names by default: every attention and MLP projection). ["all-linear"]: every linear
    layer but lm_head. lm_head and the embeddings are refused: the fused log-prob kernel reads lm_head's weight
    as a plain matrix."""

    @field_validator("target_modules")
    @classmethod
    def _targets(cls, value: list[str]) -> list[str]:
        bad = [name for name in value
               if name in ("lm_head", "embed_tokens") or not re.fullmatch(r"[A-Za-z0-9_.-]+", name)]
        if bad:
            raise ValueError(f"{bad} cannot take an adapter: target linear layers inside the decoder (e.g. "
                             f"{list(LORA_DEFAULT_TARGETS)}, or [\"all-linear\"]); lm_head's weight is read as a plain "
                             "matrix by the fused log-prob kernel")
        if "all-linear" in value and len(value) > 1:
            raise ValueError("\"all-linear\" stands alone: it already targets every linear layer but lm_head")
        return value

    @property
    def scaling(self) -> float:
        """alpha / rank: what B @ A is multiplied by."""
        return self.alpha / self.rank


class LearnerConfig(_Section):
    steps: int = Field(60, ge=1)
    """Optimiser steps of RL, then the run ends."""
    prompts_per_step: int = Field(16, ge=1)
    """Groups (prompts) per optimiser step."""
    lr: float = Field(1e-3, ge=0)
    """AdamW learning rate. 0 freezes the weights while everything else runs (versions, broadcasts): a systems
    run that measures throughput and staleness on a fixed policy."""
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
    ranks: int = Field(1, ge=1)
    """Learner processes (torch.distributed; gloo on CPU, NCCL on CUDA, one GPU each). Above 1 the model is
    sharded with FSDP2 per decoder layer: parameters, gradients and AdamW state split across ranks, and each
    mini-batch's tokens split across ranks. Rank 0 talks to the buffer and the actors."""
    micro_batch_tokens: int = Field(16384, ge=1)
    """Token budget of one micro-batch (one forward/backward): prompt + response tokens with flash_attention_2,
    rows x row length otherwise (padding included; docs/learner.md). A mini-batch is cut into as many
    micro-batches as it needs and gradients are accumulated: one optimiser step per mini-batch. Must be at least
    the longest allowed sequence (actors.max_prompt_tokens + the largest max_response_tokens of any stage)."""
    packing: bool = True
    """Pack several sequences into each row, position ids restarting at 0 per sequence and attention kept inside
    each sequence: flash_attention_2 runs varlen on one row per micro-batch (no padding); sdpa / eager get the
    block-diagonal causal mask on rows as long as the micro-batch's longest sequence. false: one right-padded row
    per sequence with an attention mask (the baseline; wastes the padding's compute)."""
    activation_checkpointing: bool = False
    """Recompute each decoder layer's activations in the backward instead of keeping them (less memory, about
    one more forward of compute). For long contexts."""
    offload_optimizer: bool = False
    """Keep the sharded fp32 parameters, gradients and AdamW state in CPU memory and run the optimiser step there
    (FSDP2 CPUOffloadPolicy; CUDA only). For models whose optimiser state does not fit the GPUs."""
    master_dtype: Literal["float32", "bfloat16"] = "float32"
    """Dtype of the learner's master weights and AdamW state. Compute and what actors receive are model.dtype;
    float32 masters are what keeps small updates from rounding away. bfloat16 (AdamW without master weights) is
    refused: an update below 2^-8 of a weight rounds to nothing, so training stalls silently."""

    lora: LoraConfig = Field(default_factory=LoraConfig)
    """Low-rank adapters instead of full-weight training ([learner.lora], off by default)."""

    @field_validator("master_dtype")
    @classmethod
    def _fp32_masters(cls, value: str) -> str:
        if value != "float32":
            raise ValueError("bfloat16 master weights (AdamW without fp32 masters) are refused: bf16 keeps 8 bits of "
                             "mantissa, so any update smaller than 1/256 of a weight is lost and learning stalls "
                             "without an error. Keep learner.master_dtype = \"float32\" (model.dtype still sets "
                             "the compute and broadcast dtype).")
        return value


class SyncConfig(_Section):
    every: int = Field(1, ge=1)
    """Broadcast new weights every this many optimiser steps."""
    backend: Literal["auto", "gloo", "nccl"] = "auto"
    """Broadcast backend: auto = NCCL when learner and actors are on CUDA, gloo otherwise."""
    timeout_s: float = Field(120.0, gt=0)
    """Deadline for group set-up and for each broadcast. An actor that dies mid-broadcast costs the learner at
    most this long; then the group is rebuilt with the live actors (docs/reliability.md)."""
    max_failures: int = Field(3, ge=1)
    """Weight syncs that may fail in a row (an actor died, the group was rebuilt) before the learner gives up
    with an error; a sync that goes through resets the count."""
    rejoin_timeout_s: float = Field(600.0, gt=0)
    """How long an actor may be without a broadcast group (at start-up, or after a failed broadcast) before it
    fails; the launcher then restarts it (actors.max_restarts)."""
    bucket_mb: float = Field(256.0, gt=0)
    """Size of one broadcast bucket (MiB): parameters are gathered from the learner's shards and sent in buckets
    of this size, in model.dtype. Extra memory on any learner rank during a sync is one bucket plus the largest
    single tensor (a tensor larger than a bucket travels alone)."""


class NetConfig(_Section):
    host: str = "127.0.0.1"
    """Address of every role on one host: the buffer and learner bind it and everyone connects to it. On a
    cluster the launcher advertises each role's node instead (`buffer_host`, `learner_host`)."""
    bind_host: str | None = None
    """Address the buffer and learner bind (an IP, a host name, or "0.0.0.0" for every interface); None binds
    the address they are advertised at (`buffer_host` / `learner_host`, else `host`)."""
    buffer_host: str | None = None
    """Address actors and the learner reach the buffer at; None: `host`. Cluster launchers set it to the
    buffer's node."""
    learner_host: str | None = None
    """Address actors reach the learner at (weight announcements, the broadcast group's store) and learner
    ranks meet at; None: `host`. Cluster launchers set it to the learner's node."""
    launcher_host: str | None = None
    """Address of the launcher's telemetry collector: when set, roles send their metrics and final summary
    there as messages (the launcher is the only writer of metrics.jsonl and roles/); None: roles write those
    files themselves (roles started by hand). Set by `launch.py run`."""
    telemetry_port: int = Field(0, ge=0, le=65535)
    """Port of the launcher's telemetry collector (0 = pick a free port)."""
    buffer_actor_port: int = Field(0, ge=0, le=65535)
    """Buffer port for actors (0 = pick a free port)."""
    buffer_learner_port: int = Field(0, ge=0, le=65535)
    """Buffer port for the learner (0 = pick a free port)."""
    sync_port: int = Field(0, ge=0, le=65535)
    """Learner port announcing weight broadcasts to actors (0 = pick a free port)."""
    store_port: int = Field(0, ge=0, le=65535)
    """TCP store port of the broadcast group (0 = pick a free port)."""
    learner_port: int = Field(0, ge=0, le=65535)
    """Rendezvous port (MASTER_PORT) of the learner ranks' own process group (0 = pick a free port)."""
    request_timeout_s: float = Field(30.0, gt=0)
    """Deadline for one request/reply on a socket; past it the role fails with an error."""
    auth: Literal["auto", "curve", "off"] = "auto"
    """ZeroMQ CURVE on every ZeroMQ socket of the run (docs/security.md): every role gets a key pair of its own;
    a peer without one of the run's role keys can neither connect nor send, and a role speaks only under its own
    name. "auto": on when any server binds a non-loopback address (every cluster run), off for loopback-only
    runs, whose listeners (the torch.distributed stores too) all bind loopback. "off" on a non-loopback address
    is an explicit opt-out (warned)."""
    curve_keys: str = ""
    """Directory with `server.key_secret` (a ZeroMQ certificate, e.g. from zmq.auth.create_certificates, or the
    `keys/` of an earlier run) to use as the run's server key pair instead of a generated one; it is copied to
    `<run_dir>/keys/`. Each role's own pair is always generated for the run."""

    @property
    def telemetry_address(self) -> str | None:
        """The launcher's telemetry collector, or None when roles write their own files."""
        return f"tcp://{self.launcher_host}:{self.telemetry_port}" if self.launcher_host else None

    @property
    def buffer_address(self) -> str:
        """Where to reach the buffer."""
        return self.buffer_host or self.host

    @property
    def learner_address(self) -> str:
        """Where to reach the learner (rank 0)."""
        return self.learner_host or self.host

    def bind_address(self, advertised: str) -> str:
        """The IP a server advertised at `advertised` binds (ZeroMQ binds IPs and interfaces, not host names)."""
        import socket

        host = self.bind_host or advertised
        if host in ("0.0.0.0", "*"):
            return "*"
        try:
            return socket.gethostbyname(host)
        except OSError as exc:
            raise ValueError(f"net.bind_host / advertised address {host!r} does not resolve: {exc}") from None


class EvalConfig(_Section):
    before_and_after: bool = True
    """Measure held-out accuracy before and after RL."""
    temperature: float = Field(1.0, ge=0)
    """Evaluation sampling temperature (0 = greedy). The default, 1.0, is the default training temperature; it
    does not follow actors.temperature (set both for the paper's avg@k at the training temperature)."""
    samples_per_problem: int = Field(4, ge=1)
    """k of avg@k: samples per held-out problem (1 when greedy). Accuracy is the mean over all samples."""
    seed: int = Field(1234, ge=0)
    """Sampling seed of evaluation: the same random stream before and after RL."""
    max_problems: int = Field(256, ge=1)
    """Held-out problems evaluated (at most `task.heldout_size`)."""
    every_steps: int = Field(0, ge=0)
    """Also evaluate during RL, every M policy versions (0 = only before and after). Actor `eval.actor` runs
    the same protocol with its own engine at the first version it loads at or past each multiple of M and logs
    `eval/*` at that version; it generates no training data meanwhile (`actor/eval_s`)."""
    actor: int = Field(0, ge=0)
    """Which actor (0 .. actors.count-1) runs the evaluations during RL."""
    max_response_tokens: int | None = Field(None, ge=1)
    """Response length limit of evaluation (default: `actors.max_response_tokens`, the first stage's)."""


class EntropyControlConfig(_Section):
    mode: Literal["adaptive", "fixed", "off"] = "adaptive"
    """Entropy bonus α·H in the loss. "adaptive": the paper's controller (Eq. 3.2); "fixed": α = fixed_coef
    every step; "off": no bonus."""
    coef_init: float = Field(0.0, ge=0)
    """Adaptive: initial coefficient c_0 (released scripts: 0)."""
    delta: float = Field(1e-4, ge=0)
    """Adaptive: step Δ of c per training step (released scripts: 1e-4; the paper's text says 0.005)."""
    coef_min: float = Field(0.0, ge=0)
    """Adaptive: lower bound of c."""
    coef_max: float = Field(5e-3, ge=0)
    """Adaptive: upper bound of c (released scripts: 5e-3)."""
    target: float = Field(0.2, ge=0)
    """Adaptive: target entropy (nats per token). c grows while the batch entropy is below it, shrinks above;
    the bonus is active only at or below it."""
    fixed_coef: float = Field(0.0, ge=0)
    """Fixed: the coefficient α used every step."""

    @model_validator(mode="after")
    def _check_bounds(self) -> "EntropyControlConfig":
        if not self.coef_min <= self.coef_init <= self.coef_max:
            raise ValueError(f"need coef_min <= coef_init <= coef_max, got {self.coef_min}, {self.coef_init}, "
                             f"{self.coef_max}")
        return self


class RejectionConfig(_Section):
    enabled: bool = True
    """Drop groups whose rewards are all equal (all solved / none solved: zero advantage), counted as
    solve_all / solve_none."""
    refill: bool = True
    """True: dropped groups are replaced from the buffer so every step trains on learner.prompts_per_step
    groups. False: the step shrinks to the groups kept (the original code); a batch with none kept is discarded
    (its admission slots go back) and the learner waits for the next one."""


class OffPolicyConfig(_Section):
    minibatch_prompts: int = Field(0, ge=0)
    """D_T: groups per SGD mini-batch; 0 = learner.prompts_per_step (one mini-batch). Must divide
    learner.prompts_per_step (D_R)."""
    reuse: int = Field(1, ge=1)
    """N_reuse: passes over each rollout batch. SGD steps per training step N_SGD = (D_R / D_T) · N_reuse."""
    old_logprobs: Literal["behaviour", "recompute"] = "behaviour"
    """Denominator of the PPO ratio. "behaviour": the actors' vLLM log-probs μ; "recompute": the learner's
    log-probs before the step's first update, π_prox (what the original code does; the corrections need it)."""
    is_cap: float = Field(2.0, gt=0)
    """C, the upper bound on the behaviour importance weight π_prox/μ of algo.correction: where "tis" and
    "sequence" truncate, above which "mis" and "icepop" mask the token."""
    is_floor: float = Field(0.5, ge=0)
    """The lower bound of "icepop"'s two-sided mask: tokens with π_prox/μ below it are masked (IcePop: 0.5)."""

    @model_validator(mode="before")
    @classmethod
    def _moved_keys(cls, data):
        if isinstance(data, dict) and "correction" in data:
            raise ValueError("algo.off_policy.correction moved to algo.correction (its old 'decoupled' is now "
                             "correction 'mis', or objective 'decoupled' with correction 'mis')")
        return data


class StageConfig(_Section):
    start_step: int = Field(ge=1)
    """Training step (0-based learner version) at which this stage begins."""
    max_response_tokens: int | None = Field(None, ge=1)
    """Response length limit from this stage on (None: keep the previous stage's)."""
    prompts_per_step: int | None = Field(None, ge=1)
    """Groups per training step (D_R) from this stage on (None: keep)."""
    group_size: int | None = Field(None, ge=1)
    """Samples per prompt from this stage on (None: keep)."""


class GspoConfig(_Section):
    clip_low: float = Field(3e-4, gt=0, lt=1)
    """GSPO's sequence ratio floor is 1 - clip_low (Zheng et al. 2025 §5: 3e-4)."""
    clip_high: float = Field(4e-4, gt=0)
    """GSPO's sequence ratio ceiling is 1 + clip_high (the paper: 4e-4)."""


class CispoConfig(_Section):
    eps_high: float = Field(0.28, gt=0)
    """CISPO truncates the stop-gradient IS weight at 1 + eps_high. MiniMax-M1 tunes only this bound and gives
    no value; the default equals the clip-higher bound of DAPO."""
    eps_low: float = Field(1.0, gt=0, le=1)
    """... and floors it at 1 - eps_low; 1 = no floor (MiniMax-M1 sets no lower bound)."""


class M2poConfig(_Section):
    threshold: float = Field(0.04, gt=0)
    """τ_M2: M2PO masks the tokens with the largest (log π/μ)² until their mean over the rest of the
    mini-batch is at most this (Zheng et al. 2025: 0.04)."""


class SapoConfig(_Section):
    tau_pos: float = Field(1.0, gt=0)
    """Temperature of SAPO's soft gate on tokens with positive advantage (Gao et al. 2025: 1.0)."""
    tau_neg: float = Field(1.05, gt=0)
    """... and with negative advantage (the paper: 1.05, slightly sharper)."""


class AlgoConfig(_Section):
    objective: Literal[tuple(OBJECTIVES)] = "magic"
    """The policy objective (learner/objectives/, docs/objectives.md): "magic" the Skywork-OR1 token
    PPO-clip (clip-higher through learner.clip_eps_high); "gspo" / "gspo_token" sequence-ratio clip;
    "cispo" clipped stop-gradient IS weight on every token; "decoupled" AReaL's PPO against π_prox with the
    behaviour weight of algo.correction; "m2po" second-moment trust mask; "sapo" soft sigmoid gate."""
    advantage: Literal[tuple(ADVANTAGES)] = "grpo"
    """The advantage estimator (learner/advantages/): "grpo" group mean/std; "drgrpo" group mean only;
    "rloo" leave-one-out mean; "reinforce_pp" rewards normalised over the step's batch;
    "reinforce_pp_baseline" group mean subtracted, then normalised over the batch."""
    correction: Literal[tuple(CORRECTIONS)] = "none"
    """The rollout correction (learner/corrections/): a per-token weight from π_prox/μ, the learner's
    recomputed log-prob against the actors' (staleness and trainer-inference mismatch). "tis" truncated at
    off_policy.is_cap; "mis" masked above it; "icepop" masked outside [is_floor, is_cap]; "sequence" the
    sequence's product of ratios, truncated. All but "none" need off_policy.old_logprobs = "recompute"."""
    loss_agg: Literal[tuple(LOSS_AGGS)] = "token_mean"
    """Loss aggregation (learner/loss_aggs/): "token_mean" over all response tokens of the mini-batch (the
    paper; no per-response 1/|y|); "seq_mean_token_mean" the mean over responses of each one's token mean
    (GRPO); "seq_mean_token_sum_norm" each response's token sum over a constant, loss_agg_tokens (Dr.GRPO)."""
    loss_agg_tokens: int = Field(0, ge=0)
    """The constant of "seq_mean_token_sum_norm"; 0 = the largest max_response_tokens of any stage."""
    gspo: GspoConfig = Field(default_factory=GspoConfig)
    """GSPO's clip range (objective "gspo" and "gspo_token")."""
    cispo: CispoConfig = Field(default_factory=CispoConfig)
    """CISPO's IS-weight bounds."""
    m2po: M2poConfig = Field(default_factory=M2poConfig)
    """M2PO's second-moment threshold."""
    sapo: SapoConfig = Field(default_factory=SapoConfig)
    """SAPO's gate temperatures."""
    kl_coef: float = Field(0.0, ge=0)
    """β of a KL(π_θ || π_ref) penalty (k3 estimator) to the initial policy; 0 = off, as in the paper. A frozen
    reference copy is kept on the learner only when > 0."""
    truncation_mask: Literal["none", "before", "after"] = "none"
    """Responses cut at the length limit get reward 0. "before": they are left out of the group mean/std and
    get advantage 0 (Adv-Mask-Before); "after": they count in the statistics, then get 0 (Adv-Mask-After)."""
    entropy: EntropyControlConfig = Field(default_factory=EntropyControlConfig)
    """Entropy bonus and its adaptive controller."""
    rejection: RejectionConfig = Field(default_factory=RejectionConfig)
    """Rejection sampling of zero-advantage groups."""
    off_policy: OffPolicyConfig = Field(default_factory=OffPolicyConfig)
    """Mini-batches, reuse and importance corrections."""
    stages: list[StageConfig] = []
    """Later stages of a multi-stage schedule (stage 0 is actors.max_response_tokens, learner.prompts_per_step,
    actors.group_size). Applied while running: actors, buffer and learner switch at start_step."""
    online_filter: bool = True
    """At each stage boundary, drop from the prompt pool every prompt whose samples were all correct during
    the stage that ended (report §3.1)."""

    @model_validator(mode="before")
    @classmethod
    def _renamed_keys(cls, data):
        """Configs written before the registry (a resumed run's saved config, an old TOML) still load: their
        `algo.aggregation` and `algo.off_policy.correction` map onto the new keys, and a clash is an error."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        renamed = []
        if "aggregation" in data:
            renamed.append(("algo.aggregation", "algo.loss_agg", "loss_agg",
                            {"token": "token_mean", "sequence": "seq_mean_token_mean"}, data.pop("aggregation")))
        off_policy = data.get("off_policy")
        if isinstance(off_policy, dict) and "correction" in off_policy:
            off_policy = data["off_policy"] = dict(off_policy)
            renamed.append(("algo.off_policy.correction", "algo.correction", "correction",
                            {"none": "none", "tis": "tis", "decoupled": "mis"}, off_policy.pop("correction")))
        for old, new, key, values, value in renamed:
            if value not in values:
                raise ValueError(f"{old} (now {new}) must be one of {list(values)}, got {value!r}")
            if key in data and data[key] != values[value]:
                raise ValueError(f"{old} = {value!r} (the old name of {new}) clashes with {new} = {data[key]!r}: "
                                 f"set {new} only")
            data[key] = values[value]
        return data

    @model_validator(mode="after")
    def _check_requirements(self) -> "AlgoConfig":
        errors = requirement_errors(self.objective, self.correction, self.off_policy.old_logprobs)
        off = self.off_policy
        if self.correction == "icepop" and off.is_floor >= off.is_cap:
            errors.append(f"algo.correction = 'icepop' keeps tokens with is_floor <= π_prox/μ <= is_cap: "
                          f"algo.off_policy.is_floor ({off.is_floor}) must be below is_cap ({off.is_cap})")
        if errors:
            raise ValueError("; ".join(errors))
        return self

    @model_validator(mode="after")
    def _check_stages(self) -> "AlgoConfig":
        starts = [s.start_step for s in self.stages]
        if starts != sorted(set(starts)):
            raise ValueError(f"algo.stages: start_step values must be strictly increasing, got {starts}")
        return self


class CheckpointConfig(_Section):
    """Learner checkpoints under `<run_dir>/checkpoints/step_NNNNNN/` and how a run continues from one
    (docs/checkpoints.md)."""

    every_steps: int = Field(50, ge=0)
    """Write a checkpoint after every this many learner steps (0: only at the end of the run). The last step
    always writes one, so a finished run can be extended with `launch.py run --resume RUN_DIR --set
    learner.steps=N`."""
    keep: int = Field(2, ge=1)
    """Checkpoints kept; older ones are deleted once a newer one is complete."""
    resume_from: str = ""
    """A checkpoint directory this run continues from. Set by `launch.py run --resume`, not by hand: every
    role reads its part of that directory at start."""
    resume_overrides: list[str] = []
    """The `--set KEY=VALUE` overrides of every `launch.py run --resume` of this run so far, oldest first. Set
    by `--resume`, not by hand: the next `--resume` applies them again, then its own, on top of the config the
    run was launched with (docs/checkpoints.md)."""


class WandbConfig(_Section):
    """[telemetry.wandb]: the run in Weights & Biases (docs/trackers.md). Written by the launcher's telemetry
    collector on a thread of its own: a slow or failing tracker is logged and dropped, never stops the run."""

    enabled: bool = False
    """Log the run to W&B (needs the `wandb` package)."""
    project: str = "asyncor"
    """W&B project."""
    entity: str | None = None
    """W&B entity (team or user); None: your default entity."""
    mode: Literal["online", "offline"] = "online"
    """"offline" writes the run under `<run dir>/wandb/` only (`wandb sync` uploads it later)."""
    name: str | None = None
    """Display name of the W&B run; None: run.name."""
    group: str | None = None
    """W&B group; None: the sweep's name for a run of `launch.py sweep`, else no group."""
    tags: list[str] = []
    """Tags of the W&B run."""


class MlflowConfig(_Section):
    """[telemetry.mlflow]: the run in MLflow (docs/trackers.md). Written like [telemetry.wandb]: never blocks
    training; a failing tracker is logged and dropped."""

    enabled: bool = False
    """Log the run to MLflow (needs `mlflow-skinny`; a sqlite:// store also needs `sqlalchemy` and `alembic`)."""
    tracking_uri: str | None = None
    """MLflow tracking URI (`http://host:5000`, `sqlite:///path.db`); None: `sqlite:///<run.output_dir>/mlflow.db`,
    one store for every run of the output directory, artifacts under `<run.output_dir>/mlartifacts/`."""
    experiment: str = "asyncor"
    """MLflow experiment name."""
    name: str | None = None
    """MLflow run name; None: run.name."""
    group: str | None = None
    """Kept as the run's `group` tag; None: the sweep's name for a run of `launch.py sweep`."""
    tags: list[str] = []
    """Tags of the MLflow run (each becomes a tag with an empty value)."""


class TelemetryConfig(_Section):
    tensorboard: bool = True
    """Every metric also as TensorBoard events under runs/<name>/tensorboard/<role>/ (`tensorboard --logdir
    runs/`), written by the launcher as records arrive."""
    wandb: WandbConfig = Field(default_factory=WandbConfig)
    """Weights & Biases (off by default)."""
    mlflow: MlflowConfig = Field(default_factory=MlflowConfig)
    """MLflow (off by default)."""


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
    algo: AlgoConfig = Field(default_factory=AlgoConfig)
    """The RL objective (Skywork-OR1 recipe and its variants)."""
    sync: SyncConfig = Field(default_factory=SyncConfig)
    """Weight broadcast from learner to actors."""
    net: NetConfig = Field(default_factory=NetConfig)
    """Addresses, ports and request deadlines."""
    eval: EvalConfig = Field(default_factory=EvalConfig)
    """Held-out evaluation."""
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    """Checkpoints and resuming."""
    telemetry: TelemetryConfig = Field(default_factory=TelemetryConfig)
    """Metrics outputs besides metrics.jsonl."""

    @model_validator(mode="after")
    def _check_cross_fields(self) -> "Config":
        if self.task.kind == "files" and not self.task.heldout_files and (self.eval.before_and_after
                                                                          or self.eval.every_steps):
            raise ValueError('task.kind = "files" needs task.heldout_files to evaluate on (or eval.before_and_after '
                             '= false and eval.every_steps = 0 to train without evaluating)')
        if self.eval.every_steps and self.eval.actor >= self.actors.count:
            raise ValueError(f"eval.actor ({self.eval.actor}) must be below actors.count ({self.actors.count})")
        if self.task.kind != "files" and self.eval.max_problems > self.task.heldout_size:
            raise ValueError(
                f"eval.max_problems ({self.eval.max_problems}) exceeds task.heldout_size ({self.task.heldout_size})"
            )
        if self.buffer.max_staleness < self.sync.every - 1:
            raise ValueError(
                f"buffer.max_staleness ({self.buffer.max_staleness}) must be >= sync.every - 1 ({self.sync.every - 1}): "
                "actors only get weights every sync.every steps, so fresher data cannot exist"
            )
        from asyncor.configs.stages import stages

        minibatch = self.algo.off_policy.minibatch_prompts
        for stage in stages(self):
            where = "learner.prompts_per_step" if stage.index == 0 else f"algo.stages[{stage.index - 1}].prompts_per_step"
            if minibatch and stage.prompts_per_step % minibatch:
                raise ValueError(f"algo.off_policy.minibatch_prompts ({minibatch}) must divide {where} "
                                 f"({stage.prompts_per_step})")
        # Admission lets (η + 1) steps' groups exist at once; a smaller store would refuse ("full") groups the
        # budget already granted.
        window = (self.buffer.max_staleness + 1) * max(stage.prompts_per_step for stage in stages(self))
        if self.buffer.max_groups < window:
            raise ValueError(f"buffer.max_groups ({self.buffer.max_groups}) is below (buffer.max_staleness + 1) x "
                             f"the largest prompts_per_step = {window}, the groups admission lets exist at once; "
                             f"set it to at least {window}")
        largest_group = max(stage.group_size for stage in stages(self))
        if self.actors.update_mode == "inflight" and 0 < self.actors.inflight_sequences < largest_group:
            raise ValueError(f"actors.inflight_sequences ({self.actors.inflight_sequences}) is below the largest group "
                             f"size ({largest_group}): the engine would never have room for a group and the actor "
                             f"would wait for ever; set it to at least {largest_group}, or 0 (the default size)")
        longest = self.actors.max_prompt_tokens + max(stage.max_response_tokens for stage in stages(self))
        if self.learner.micro_batch_tokens < longest:
            raise ValueError(f"learner.micro_batch_tokens ({self.learner.micro_batch_tokens}) is below the longest "
                             f"allowed sequence, actors.max_prompt_tokens + max_response_tokens = {longest}: such a "
                             f"sequence could not fit in any micro-batch; set it to at least {longest}")
        if self.algo.stages and self.algo.stages[-1].start_step >= self.learner.steps:
            raise ValueError(f"algo.stages: a stage starts at step {self.algo.stages[-1].start_step}, but the run "
                             f"has only learner.steps = {self.learner.steps}")
        return self

    @property
    def policy_path(self) -> str:
        """The weights the policy starts from: the checkpoint's model when resuming, else `model.path`
        (which stays the starting policy: the KL reference, the tokenizer). With LoRA always `model.path`: the
        frozen base, under the adapter of `resume_adapter`."""
        import os

        if self.learner.lora.enabled:  # the base stays model.path; the checkpoint holds the adapter
            return self.model.path
        return os.path.join(self.checkpoint.resume_from, "model") if self.checkpoint.resume_from else self.model.path

    @property
    def resume_adapter(self) -> str:
        """With LoRA and resuming: the checkpoint's adapter directory (peft format) to start from; else ""."""
        import os

        if self.learner.lora.enabled and self.checkpoint.resume_from:
            return os.path.join(self.checkpoint.resume_from, "adapter")
        return ""

    @property
    def run_dir(self) -> str:
        """`<output_dir>/<name>`: everything this run writes."""
        import os

        return os.path.join(self.run.output_dir, self.run.name)
