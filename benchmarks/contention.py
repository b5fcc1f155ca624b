"""How fast one core generates while the other core is busy: the ceiling on overlap on this machine.

    python benchmarks/contention.py

vLLM (in-process, its OpenMP thread bound to core 0) generates the tiny model's arithmetic groups, alone and
while a second process pinned to core 1 runs a float matmul loop (like the learner) or a pure-Python loop.
If the cores were independent the rates would match; the ratio is what an actor keeps of its speed beside a
learner, whatever the scheduling. Uses the tiny default's cached warm start (prepare/warm_start.py
`prepare_policy`: built first if no `launch.py run` has made it yet).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

LOADS = {
    "nothing": None,
    "float matmul loop (learner-like)": "import torch\ntorch.set_num_threads(1)\na = torch.randn(512, 512)\n"
                                        "while True:\n    a = (a @ a).tanh()",
    "pure-Python loop": "x = 0\nwhile True:\n    x += 1",
}


def main() -> None:
    from asyncor.actors.engine import cpu_environment

    os.environ.update(cpu_environment(1, "0", os.path.join(tempfile.gettempdir(), "asyncor-vllm-cache")))
    from asyncor.actors.engine import Engine
    from asyncor.configs.loader import load_config
    from asyncor.prepare.warm_start import prepare_policy
    from asyncor.tasks.codec import TextCodec

    config = load_config(None, [])
    model_dir = prepare_policy(config)
    codec = TextCodec(model_dir)
    engine = Engine(model_dir, config.model.dtype, 1, 64, 0.3)
    prompts = [codec.encode_prompt("12+34=")] * 32

    def rate(rounds: int = 6) -> float:
        start, tokens = time.perf_counter(), 0
        for _ in range(rounds):
            out = engine.generate(prompts, 8, 1.0, 1.0, 8, codec.eos_id)
            tokens += sum(len(s.token_ids) for g in out for s in g)
        return tokens / (time.perf_counter() - start)

    rate(2)  # warm-up
    print("\n| core 1 runs | tokens/s on core 0 | vs alone |")
    print("|---|---|---|")
    alone = None
    for name, code in LOADS.items():
        load = subprocess.Popen(["taskset", "-c", "1", sys.executable, "-c", code]) if code else None
        try:
            time.sleep(1.5 if load else 0)
            r = (rate() + rate()) / 2
        finally:
            if load:
                load.kill()
                load.wait()
        alone = alone or r
        print(f"| {name} | {r:.0f} | {r / alone:.2f}x |")


if __name__ == "__main__":
    main()
