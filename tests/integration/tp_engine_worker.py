"""One vLLM engine with `--tp` tensor-parallel workers on the tiny policy: greedy log-probs before and after
loading perturbed weights through Engine.load_weights (the path broadcast weights take). Prints JSON.
Run as a script (vLLM spawns its tensor-parallel workers, which re-import __main__)."""

import argparse
import glob
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--tp", type=int, required=True)
    args = parser.parse_args()
    from asyncor.actors.engine import cpu_environment

    cores = "|".join(str(i % (os.cpu_count() or 1)) for i in range(args.tp))  # one OpenMP core per TP worker
    os.environ.update(cpu_environment(1, cores, os.path.join(ROOT, ".cache", "asyncor-tests", "vllm")))
    import torch
    from safetensors.torch import load_file
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    from asyncor.actors.engine import Engine

    engine = Engine(args.model, "float32", 0, 64, 0.3, tensor_parallel_size=args.tp)
    params = SamplingParams(max_tokens=6, temperature=0, logprobs=0)
    prompts = [TokensPrompt(prompt_token_ids=p) for p in ([5, 6, 7, 8], [9, 3, 4], [12, 13, 14, 15, 16])]

    def greedy():
        outs = engine.llm.generate(prompts, params, use_tqdm=False)
        return [[next(iter(d.values())).logprob for d in o.outputs[0].logprobs] for o in outs]

    before = greedy()
    state = load_file(glob.glob(os.path.join(args.model, "*.safetensors"))[0])
    # Every weight matrix changes, and differently per row, so a shard that kept its old rows shows.
    perturbed = {k: v * torch.linspace(0.7, 1.3, v.shape[0]).reshape(-1, 1) if v.dim() == 2 else v
                 for k, v in state.items()}
    engine.load_weights(perturbed.items(), 1)
    print(json.dumps({"tp": args.tp, "before": before, "after": greedy()}), flush=True)


if __name__ == "__main__":
    main()
