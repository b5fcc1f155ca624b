"""One learner rank for tests/integration/test_sharded_learner.py (run as a real process, 1 or 2 of them).

`step`: one training step of a small Qwen2 model on fixed groups, for each case and each micro-batch setting,
then for each algorithm of `SWEEP` (every objective, advantage estimator, rollout correction and loss aggregation
of configs/algorithms.py at least once) and each --sweep setting, all in this one process; rank 0 writes the
weight change (SGD with lr 1: the gradient, summed over the step's SGD steps) and the step's metrics to --out.
`publish`: every rank publishes the weights (learner/weight_sync.py) to one receiver the test runs; rank 0 writes
the full fp32 weights to --out.
`lora`: the `step` cases with LoRA adapters ([learner.lora], learner/lora.py) on the same model: rank 0 writes the
adapters' change, whether any base weight moved, and the metrics; then every rank publishes the adapter (version 7)
to one receiver that merges it (runtime/adapter.py), and rank 0 writes the adapter to --out; the adapter is loaded
back into fresh (sharded) adapters as a resume does, which must be exact.
"""

import argparse
import json
import os

import numpy as np
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from asyncor.wire.trajectory import Response, TrajectoryGroup
from asyncor.configs.schema import AlgoConfig
from asyncor.learner.entropy_control import make_entropy_control
from asyncor.learner.model import Policy
from asyncor.learner.parallel import full_tensor, init_ranks, parallelize, release
from asyncor.learner.update import UpdateSettings, train_step
from asyncor.learner.weight_sync import publish
from asyncor.sync.broadcaster import WeightBroadcaster
from asyncor.wire.zeromq import ZmqTransport

VOCAB = 29  # odd sizes everywhere


def small_policy(seed=0):
    torch.manual_seed(seed)
    cfg = Qwen2Config(vocab_size=VOCAB, hidden_size=36, intermediate_size=52, num_hidden_layers=3,
                      num_attention_heads=3, num_key_value_heads=1, max_position_embeddings=64, pad_token_id=0)
    return Policy(Qwen2ForCausalLM(cfg), temperature=0.9, impl="torch", chunk=7)


def groups(case):
    rng = np.random.default_rng(7)
    if case == "lonely":  # one response: with 2 ranks, one of them has nothing but a filler
        sizes = [[9]]
    else:  # long-tailed lengths, uneven groups
        sizes = [[2, 11, 3, 5], [17, 1, 4, 6], [3, 3, 25, 2]]
    out = []
    for i, lens in enumerate(sizes):
        responses = [Response(rng.integers(1, VOCAB, n).astype(np.int32),
                              (-np.log(VOCAB) + rng.normal(0, 0.1, n)).astype(np.float32), 0,
                              "length" if n > 20 else "stop", float(j % 2)) for j, n in enumerate(lens)]
        out.append(TrajectoryGroup(i, rng.integers(1, VOCAB, 3 + i).astype(np.int32), responses, 0, i, 0.0))
    return out


def algo(loss_agg):
    return AlgoConfig(loss_agg=loss_agg, kl_coef=0.1, entropy={"mode": "fixed", "fixed_coef": 0.05}, correction="tis",
                      off_policy={"old_logprobs": "recompute", "is_cap": 1.1})


# Every objective once, with every advantage estimator, correction and loss_agg in turn (configs/algorithms.py).
# Two mini-batches (2 + 1 groups): the second is trained one SGD step past π_prox, so clips and masks act, and the
# corrections' weights and M2PO's mask are gathered over both ranks for each mini-batch.
SWEEP = {
    "magic": dict(advantage="grpo", correction="icepop", loss_agg="seq_mean_token_sum_norm"),
    "gspo": dict(advantage="drgrpo", correction="tis", loss_agg="seq_mean_token_mean"),
    "gspo_token": dict(advantage="rloo", correction="sequence", loss_agg="token_mean"),
    "cispo": dict(advantage="reinforce_pp", correction="mis", loss_agg="seq_mean_token_sum_norm"),
    "decoupled": dict(advantage="reinforce_pp_baseline", correction="mis", loss_agg="token_mean"),
    "m2po": dict(advantage="grpo", correction="icepop", loss_agg="seq_mean_token_mean"),
    "sapo": dict(advantage="drgrpo", correction="none", loss_agg="token_mean", old_logprobs="behaviour"),
}
SWEEP_STALENESS = [2, 0, 3]  # one per group of the "uneven" case


def sweep_algo(objective):
    kw = dict(SWEEP[objective])
    old_logprobs = kw.pop("old_logprobs", "recompute")
    return AlgoConfig(objective=objective, **kw, loss_agg_tokens=23, entropy={"mode": "fixed", "fixed_coef": 0.05},
                      gspo={"clip_low": 0.02, "clip_high": 0.03}, m2po={"threshold": 0.01},
                      off_policy={"old_logprobs": old_logprobs, "is_cap": 1.1, "is_floor": 0.9,
                                  "minibatch_prompts": 2})


def one_step(ranks, out, key, a, case, tokens, layout, checkpointing, with_reference, staleness=None):
    policy = parallelize(small_policy(), ranks, torch.float32, activation_checkpointing=checkpointing)
    start = {n: full_tensor(p.detach()).clone() for n, p in policy.lm.named_parameters()}
    # A different policy from the trained one: KL and its gradient > 0.
    reference = parallelize(small_policy(seed=1), ranks, torch.float32).eval().requires_grad_(False) \
        if with_reference else None
    settings = UpdateSettings(a, 0.2, 0.2, grad_clip=1e9, pad_id=0, micro_batch_tokens=tokens, layout=layout)
    opt = torch.optim.SGD(policy.parameters(), lr=1.0)
    m = train_step(policy, opt, groups(case), settings, make_entropy_control(a.entropy), ranks, reference, staleness)
    grads = {n: (start[n] - full_tensor(p.detach())).numpy() for n, p in policy.lm.named_parameters()}
    if ranks.main:
        np.savez(os.path.join(out, f"grad-{key}-r{ranks.world}.npz"), **grads)
    return m


def step(ranks, out, variants, sweep):
    results = {}
    for case, loss_agg in (("uneven", "token_mean"), ("uneven", "seq_mean_token_mean"), ("lonely", "token_mean")):
        for tokens, layout, checkpointing in variants:
            key = f"{case}-{loss_agg}-{tokens}-{layout}" + ("-ckpt" if checkpointing else "")
            results[key] = one_step(ranks, out, key, algo(loss_agg), case, tokens, layout, checkpointing, True)
    for objective in SWEEP:
        for tokens, layout, checkpointing in sweep:
            key = f"sweep-{objective}-{tokens}-{layout}" + ("-ckpt" if checkpointing else "")
            results[key] = one_step(ranks, out, key, sweep_algo(objective), "uneven", tokens, layout, checkpointing,
                                    False, SWEEP_STALENESS)
    if ranks.main:
        with open(os.path.join(out, f"metrics-r{ranks.world}.json"), "w") as f:
            json.dump(results, f)


def publish_weights(ranks, out, sync_port, store_port):
    policy = parallelize(small_policy(seed=3), ranks, torch.bfloat16)  # model.dtype = bfloat16
    # fp32 master weights (what AdamW updates); forward in bf16 (what a decoder layer outputs), log-probs in fp32.
    master = sorted({str(p.dtype) for p in policy.parameters()})
    seen = []
    policy.lm.model.layers[0].register_forward_hook(lambda mod, args, out: seen.append(
        (out[0] if isinstance(out, tuple) else out).dtype))
    with torch.no_grad():  # as the learner's own forwards without a backward (a graded one leaves FSDP hooks armed)
        lp, _ = policy(torch.tensor([[1, 2, 3, 4]]), torch.arange(4)[None], None, torch.zeros(3, dtype=torch.long),
                       torch.arange(3), torch.tensor([2, 3, 4]))
    release(policy)  # FSDP2 keeps the root's bf16 copies gathered after a forward without backward
    dtypes = {"master": master, "compute": str(seen[0]), "logprob": str(lp.dtype)}
    broadcaster = None
    if ranks.main:
        broadcaster = WeightBroadcaster(ZmqTransport(), "127.0.0.1", sync_port, store_port, 1, "gloo", 60.0,
                                        torch.device("cpu"))
    named = list(policy.lm.state_dict().items())
    publish(named, torch.bfloat16, 4096, broadcaster, 5, torch.device("cpu"))  # 4 KiB buckets: many of them
    full = {n: full_tensor(t.detach()).numpy() for n, t in named}
    if ranks.main:
        np.savez(os.path.join(out, "published.npz"), **full)
        with open(os.path.join(out, "dtypes.json"), "w") as f:
            json.dump(dtypes, f)
        broadcaster.close()


def lora_policy(seed=0):
    from asyncor.configs.schema import LoraConfig
    from asyncor.learner.lora import apply_lora

    policy = small_policy(seed)
    apply_lora(policy.lm, LoraConfig(enabled=True, rank=3, alpha=5.0))
    torch.manual_seed(seed + 100)
    with torch.no_grad():  # peft starts B at zero (A would get no gradient): a trained-looking adapter instead
        for name, p in policy.lm.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.3)
    return policy


def lora_step(ranks, out, key, a, case, tokens, layout):
    from asyncor.learner.lora import adapter_named

    policy = parallelize(lora_policy(), ranks, torch.float32)
    frozen = {n: full_tensor(p.detach()).clone() for n, p in policy.lm.named_parameters() if not p.requires_grad}
    start = {n: full_tensor(p.detach()).clone() for n, p in adapter_named(policy.lm)}
    settings = UpdateSettings(a, 0.2, 0.2, grad_clip=1e9, pad_id=0, micro_batch_tokens=tokens, layout=layout)
    opt = torch.optim.SGD([p for p in policy.parameters() if p.requires_grad], lr=1.0)
    m = train_step(policy, opt, groups(case), settings, make_entropy_control(a.entropy), ranks, None)
    grads = {n: (start[n] - full_tensor(p.detach())).numpy() for n, p in adapter_named(policy.lm)}
    moved = [n for n, p in policy.lm.named_parameters() if not p.requires_grad
             and not torch.equal(full_tensor(p.detach()), frozen[n])]
    if ranks.main:
        np.savez(os.path.join(out, f"lora-grad-{key}-r{ranks.world}.npz"), **grads)
    return {**m, "frozen_moved": moved, "trainable": sorted(grads)}


def lora(ranks, out, variants, sync_port, store_port):
    from asyncor.learner.lora import adapter_named, load_adapter_weights

    results = {}
    for case, loss_agg in (("uneven", "token_mean"), ("lonely", "token_mean")):
        for tokens, layout, _ in variants:
            key = f"{case}-{tokens}-{layout}"
            results[key] = lora_step(ranks, out, key, algo(loss_agg), case, tokens, layout)
    policy = parallelize(lora_policy(seed=4), ranks, torch.float32)
    broadcaster = None
    if ranks.main:
        broadcaster = WeightBroadcaster(ZmqTransport(), "127.0.0.1", sync_port, store_port, 1, "gloo", 60.0,
                                        torch.device("cpu"))
    named = adapter_named(policy.lm)
    publish(named, torch.float32, 4096, broadcaster, 7, torch.device("cpu"))
    adapter = {n: full_tensor(t.detach()).numpy() for n, t in named}
    # What a resumed learner does with a checkpoint's adapter: into fresh (sharded) adapters, exactly.
    fresh = parallelize(lora_policy(seed=9), ranks, torch.float32)
    load_adapter_weights(fresh.lm, {n: torch.from_numpy(a) for n, a in adapter.items()})
    results["reloaded_exact"] = all(torch.equal(full_tensor(t.detach()), torch.from_numpy(adapter[n]))
                                    for n, t in adapter_named(fresh.lm))
    if ranks.main:
        np.savez(os.path.join(out, "lora-published.npz"), **adapter)
        with open(os.path.join(out, f"lora-metrics-r{ranks.world}.json"), "w") as f:
            json.dump(results, f)
        broadcaster.close()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["step", "publish", "lora"])
    parser.add_argument("--out", required=True)
    parser.add_argument("--variants", default="100000:varlen",
                        help="micro_batch_tokens:layout[:ckpt],... (layouts: learner/packing.py; ckpt: activation "
                             "checkpointing)")
    parser.add_argument("--sweep", default="",
                        help="the micro-batch settings (as --variants) of the algorithm sweep (`SWEEP`); empty: none")
    parser.add_argument("--ports", default="0,0")
    args = parser.parse_args()
    torch.set_num_threads(1)
    ranks = init_ranks("float32", 120.0)
    if args.mode == "step":
        settings = lambda arg: [(int(v.split(":")[0]), v.split(":")[1], v.endswith(":ckpt"))
                                for v in arg.split(",") if v]
        step(ranks, args.out, settings(args.variants), settings(args.sweep))
    elif args.mode == "lora":
        sync_port, store_port = (int(p) for p in args.ports.split(","))
        lora(ranks, args.out, [(int(v.split(":")[0]), v.split(":")[1], False) for v in args.variants.split(",")],
             sync_port, store_port)
    else:
        sync_port, store_port = (int(p) for p in args.ports.split(","))
        publish_weights(ranks, args.out, sync_port, store_port)
    ranks.close()


if __name__ == "__main__":
    main()
