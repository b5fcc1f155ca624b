import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def write_tokenizer_dir(path):
    """A model directory holding only the tiny tokenizer (what the buffer reads); returns `path`."""
    import json

    from asyncor.prepare.tiny_model import build_tokenizer

    path.mkdir(parents=True, exist_ok=True)
    build_tokenizer().save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<bos>", "eos_token": "<eos>"}))
    (path / "config.json").write_text(json.dumps({"eos_token_id": 2}))
    return path
