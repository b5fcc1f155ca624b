import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def small_model_dir(tmp_path_factory):
    """A smaller tiny model (hidden 32, one head, MLP 48) with its tokenizer, built once per test module."""
    from asyncor.configs.schema import Config
    from asyncor.prepare.tiny_model import build_tiny_model

    config = Config.model_validate({"model": {"tiny": {"hidden_size": 32, "num_attention_heads": 1,
                                                       "num_key_value_heads": 1, "intermediate_size": 48}}})
    return build_tiny_model(config, str(tmp_path_factory.mktemp("tiny")))


def write_tokenizer_dir(path):
    """A model directory holding only the tiny tokenizer (what the buffer reads); returns `path`."""
    import json

    from asyncor.prepare.tiny_model import build_tokenizer

    path.mkdir(parents=True, exist_ok=True)
    build_tokenizer().save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<bos>", "eos_token": "<eos>"}))
    (path / "config.json").write_text(json.dumps({"eos_token_id": 2}))
    return path
