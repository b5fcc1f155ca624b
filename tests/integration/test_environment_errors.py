"""Environment errors (issue 14, item 9): each is a clear message naming what to change, before any role
starts, with nothing left running."""

import json
import os
import socket
import subprocess
import sys

import pytest

from tests.integration.test_pipeline import children_of

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def launch(tmp_path, *overrides):
    args = [sys.executable, "launch.py", "run", "--set", f"run.output_dir={tmp_path}", "--set", "run.name=env",
            "--set", "eval.before_and_after=false"]
    for item in overrides:
        args += ["--set", item]
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=120)


def broken_model(tmp_path, what):
    model = tmp_path / "model"
    model.mkdir()
    if what == "bad json":
        (model / "config.json").write_text("{")
    elif what == "no weights":
        (model / "config.json").write_text(json.dumps({"model_type": "qwen2"}))
        (model / "tokenizer.json").write_text("{}")
    return str(model)


@pytest.mark.parametrize("case, expected", [
    ("run dir", "run.output_dir / run.name: cannot write the run directory"),
    ("missing model", "model.path = '/no/such/model': no such directory"),
    ("bad json", "config.json does not parse"),
    ("no weights", "no weights (*.safetensors or *.bin)"),
    ("port in use", "the port is not free"),
    ("kv cache", "needs 100000.0 GiB for KV caches"),
])
def test_environment_errors_are_named_before_anything_starts(tmp_path, case, expected):
    overrides, held = [], None
    if case == "run dir":
        (tmp_path / "a_file").write_text("")
        overrides = [f"run.output_dir={tmp_path / 'a_file'}"]
    elif case == "missing model":
        overrides = ["model.path=/no/such/model"]
    elif case in ("bad json", "no weights"):
        overrides = [f"model.path={broken_model(tmp_path, case)}"]
    elif case == "port in use":
        held = socket.socket()
        held.bind(("127.0.0.1", 0))
        held.listen()
        overrides = [f"net.buffer_actor_port={held.getsockname()[1]}"]
    elif case == "kv cache":
        overrides = ["actors.kv_cache_gib=100000"]
    try:
        proc = launch(tmp_path, *overrides)
    finally:
        if held is not None:
            held.close()
    assert proc.returncode == 1 and expected in proc.stderr, proc.stdout[-1500:] + proc.stderr[-1500:]
    assert "Traceback" not in proc.stderr and "preparing the policy" not in proc.stdout  # nothing started
    assert not children_of(os.path.join(tmp_path, "env"))
