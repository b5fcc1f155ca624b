"""Prompt/response text <-> token ids with a model directory's `tokenizer.json`.

Uses the `tokenizers` library directly (fast import, no transformers), so the
buffer and the verifiers can run without torch.
"""

from __future__ import annotations

import json
import os

import numpy as np


class TextCodec:
    def __init__(self, model_dir: str):
        from tokenizers import Tokenizer

        self.tok = Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
        cfg_path = os.path.join(model_dir, "tokenizer_config.json")
        cfg = {}
        if os.path.exists(cfg_path):
            with open(cfg_path) as f:
                cfg = json.load(f)
        with open(os.path.join(model_dir, "config.json")) as f:
            gen_cfg = json.load(f)
        bos = cfg.get("bos_token")
        self.bos_id = self.tok.token_to_id(bos) if isinstance(bos, str) else None
        eos = cfg.get("eos_token")
        self.eos_id = self.tok.token_to_id(eos) if isinstance(eos, str) else gen_cfg.get("eos_token_id")
        if self.eos_id is None:
            raise ValueError(f"{model_dir}: no eos token in tokenizer_config.json or config.json")
        # Token ids the model can embed: its embedding rows (config.json), else the tokenizer's vocabulary.
        vocab = gen_cfg.get("vocab_size")
        self.vocab_size = vocab if isinstance(vocab, int) and vocab > 0 else self.tok.get_vocab_size(with_added_tokens=True)

    def encode_prompt(self, text: str) -> np.ndarray:
        ids = self.tok.encode(text, add_special_tokens=False).ids
        if self.bos_id is not None:
            ids = [self.bos_id] + ids
        return np.asarray(ids, dtype=np.int32)

    def encode_response(self, text: str) -> np.ndarray:
        """Response ids ending with eos (used by the supervised warm start)."""
        return np.asarray(self.tok.encode(text, add_special_tokens=False).ids + [self.eos_id], dtype=np.int32)

    def encode_text(self, text: str) -> np.ndarray:
        """Text as tokens, nothing added (an environment's observation, a tool-call tag)."""
        return np.asarray(self.tok.encode(text, add_special_tokens=False).ids, dtype=np.int32)

    def decode_all(self, ids) -> str:
        """Tokens as text, special tokens kept (a tool call's tags may be special tokens)."""
        return self.tok.decode([int(i) for i in ids], skip_special_tokens=False)

    def decode(self, ids) -> str:
        return self.tok.decode([int(i) for i in ids], skip_special_tokens=True)
