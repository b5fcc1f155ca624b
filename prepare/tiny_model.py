"""Build the tiny default policy locally: a character tokenizer and a randomly
initialised Qwen2-architecture model, saved as an ordinary Hugging Face
directory (config.json, model.safetensors, tokenizer.json) that vLLM and
transformers both load. Nothing is downloaded.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil

from asyncor.configs.schema import Config
from asyncor.tasks.arithmetic import CHARACTERS, SPECIAL_TOKENS


def task_characters(kind: str = "arithmetic") -> list[str]:
    """The characters of a built-in task's text: the tool task adds its tags (tasks/calculator.py)."""
    if kind == "calculator":
        from asyncor.tasks.calculator import characters

        return characters()
    return CHARACTERS


def build_tokenizer(characters: list[str] = CHARACTERS):
    """One token per character of the task, plus <pad>, <bos>, <eos>."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + characters)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens(SPECIAL_TOKENS)
    return tok


def tiny_model_key(config: Config) -> str:
    blob = json.dumps({"tiny": config.model.tiny.model_dump(), "dtype": config.model.dtype, "seed": config.run.seed,
                       "vocab": SPECIAL_TOKENS + task_characters(config.task.kind)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def build_tiny_model(config: Config, out_dir: str) -> str:
    """Write a fresh tiny model + tokenizer to `out_dir` (atomically) and return it."""
    import torch
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    tok = build_tokenizer(task_characters(config.task.kind))
    t = config.model.tiny
    vocab_size = tok.get_vocab_size()
    shape = {k: v for k, v in t.architecture().items() if k != "model_type"}
    model_config = Qwen2Config(
        vocab_size=vocab_size,
        **shape,
        bos_token_id=tok.token_to_id("<bos>"),
        eos_token_id=tok.token_to_id("<eos>"),
        pad_token_id=tok.token_to_id("<pad>"),
        torch_dtype=config.model.dtype,
    )
    torch.manual_seed(config.run.seed)
    model = Qwen2ForCausalLM(model_config).to(getattr(torch, config.model.dtype))
    tmp = out_dir + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>")
    hf_tok.save_pretrained(tmp)
    os.replace(tmp, out_dir)
    return out_dir
