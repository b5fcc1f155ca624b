"""The learner's exactness at scale, with real processes: micro-batching, packing and 2 FSDP2 ranks (gloo).

One training step of a small model (entropy bonus, KL to a reference, recomputed π_old with a TIS correction on)
must give the same gradient and the same metrics whether the mini-batch runs whole, cut into micro-batches
(packed or padded), or split over two sharded ranks (with and without activation checkpointing); a rank that gets
no data must not hang the others; every objective, advantage estimator, rollout correction and loss aggregation
(the worker's `SWEEP`, in the same two worker runs) takes the same step on two ranks as on one; and what an actor
receives from two sharded ranks must equal the learner's weights.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from asyncor.wire.zeromq import ZmqTransport
from asyncor.sync.receiver import WeightReceiver
from asyncor.launcher.ports import free_port, free_ports

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
pytestmark = pytest.mark.slow
WORKER = [sys.executable, "-m", "tests.integration.learner_worker"]


def start_ranks(world, args, tmp_path):
    port = free_port()
    procs = []
    for rank in range(world):
        env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank),
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        if world == 1:  # one unsharded rank: no process group at all
            env = {k: v for k, v in env.items() if k not in ("RANK", "WORLD_SIZE", "MASTER_PORT")}
        log = open(tmp_path / f"rank{rank}.log", "w")
        procs.append(subprocess.Popen(WORKER + args, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT))
    return procs


def wait_all(procs, tmp_path, timeout=240):
    for rank, p in enumerate(procs):
        try:
            rc = p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise AssertionError(f"rank {rank} hung: {(tmp_path / f'rank{rank}.log').read_text()[-2000:]}")
        assert rc == 0, (tmp_path / f"rank{rank}.log").read_text()[-3000:]


def relative(a, b):
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


COMPARED = ("learner/loss", "learner/entropy", "learner/kl_ref", "learner/clip_frac_low", "learner/clip_frac_high",
            "learner/is_ratio_mean", "learner/is_ratio_min", "learner/is_ratio_max", "learner/is_weight_mean",
            "learner/mismatch_kl", "learner/mismatch_abs_mean", "learner/correction_frac", "learner/tokens",
            "reward/mean")
LAYOUT_ONLY = ("learner/micro_batches", "learner/padding_frac")  # how the batch was cut, not what it computed


def test_split_packed_padded_and_two_rank_steps_equal_the_unsplit_step(tmp_path):
    # 30 tokens = the longest sequence: every case needs several micro-batches (layouts: learner/packing.py).
    wait_all(start_ranks(1, ["step", "--out", str(tmp_path), "--variants",
                             "100000:varlen,30:varlen,30:rows,30:padded", "--sweep", "100000:varlen"], tmp_path), tmp_path)
    wait_all(start_ranks(2, ["step", "--out", str(tmp_path), "--variants", "30:rows,30:rows:ckpt",
                             "--sweep", "30:rows"], tmp_path), tmp_path)
    one = json.loads((tmp_path / "metrics-r1.json").read_text())
    two = json.loads((tmp_path / "metrics-r2.json").read_text())
    for case in ("uneven-token_mean", "uneven-seq_mean_token_mean", "lonely-token_mean"):
        whole = one[f"{case}-100000-varlen"]
        assert whole["learner/micro_batches"] == 1 and whole["learner/kl_ref"] > 0 and whole["learner/entropy_bonus"] > 0
        base = np.load(tmp_path / f"grad-{case}-100000-varlen-r1.npz")
        assert all(np.abs(base[k]).max() > 0 for k in base)  # every parameter gets a gradient to compare
        splits = [(f"{case}-30-{layout}-r1", one[f"{case}-30-{layout}"]) for layout in ("varlen", "rows", "padded")]
        sharded = [(f"{case}-30-rows{c}-r2", two[f"{case}-30-rows{c}"]) for c in ("", "-ckpt")]  # ckpt: checkpointing
        for split, metrics in splits + sharded:
            grads = np.load(tmp_path / f"grad-{split}.npz")
            worst = max((relative(grads[k], base[k]), k) for k in base)
            assert worst[0] < 1e-5, (split, worst)
            for name in COMPARED:
                assert metrics[name] == pytest.approx(whole[name], rel=1e-5, abs=1e-7), (split, name)
        if case != "lonely-token_mean":
            assert one[f"{case}-30-varlen"]["learner/micro_batches"] > 1
            assert one[f"{case}-30-varlen"]["learner/padding_frac"] == 0.0
            # here rows waste no more than padding (much less on long tails: tests/unit/test_packing.py)
            assert one[f"{case}-30-rows"]["learner/padding_frac"] <= one[f"{case}-30-padded"]["learner/padding_frac"]
    # One sequence, two ranks: rank 1 ran a weight-0 filler through the same collectives.
    assert two["lonely-token_mean-30-rows"]["learner/padding_frac"] > 0
    assert two["lonely-token_mean-30-rows"]["learner/micro_batches"] == 1
    # The algorithm sweep: each variant, two mini-batches split over two ranks, equals the one-rank step, gradient
    # and every metric (the mismatch by staleness, the corrections' and M2PO's shares included).
    from tests.integration.learner_worker import SWEEP, sweep_algo
    for objective in SWEEP:
        whole, sharded = one[f"sweep-{objective}-100000-varlen"], two[f"sweep-{objective}-30-rows"]
        base = np.load(tmp_path / f"grad-sweep-{objective}-100000-varlen-r1.npz")
        grads = np.load(tmp_path / f"grad-sweep-{objective}-30-rows-r2.npz")
        worst = max((relative(grads[k], base[k]), k) for k in base)
        # Two SGD steps at lr 1: the second gradient is taken at weights that already differ by float32 rounding
        # (seen: up to 8e-6 on a small layer-norm gradient). A flipped clip or mask would be ~1e-2.
        assert worst[0] < 3e-5, (objective, worst)
        assert whole["learner/sgd_steps"] == 2 and sharded["learner/micro_batches"] > whole["learner/micro_batches"]
        assert set(sharded) == set(whole) and {"learner/tokens_s0", "learner/tokens_s2", "learner/tokens_s3"} <= set(whole)
        for name, value in whole.items():
            if name not in LAYOUT_ONLY:
                assert sharded[name] == pytest.approx(value, rel=1e-5, abs=1e-7), (objective, name)
        a = sweep_algo(objective)
        if a.correction != "none":
            assert 0 < whole["learner/correction_frac"] < 1, objective
        if objective == "m2po":
            assert 0 < whole["learner/objective_masked_frac"] < 1
    assert any(one[f"sweep-{o}-100000-varlen"]["learner/clip_frac_high"] > 0 for o in SWEEP)
    assert any(one[f"sweep-{o}-100000-varlen"]["learner/clip_frac_low"] > 0 for o in SWEEP)


def test_two_sharded_bf16_ranks_keep_fp32_masters_and_publish_exactly_the_learners_weights(tmp_path):
    sync_port, store_port = free_ports(2)
    procs = start_ranks(2, ["publish", "--out", str(tmp_path), "--ports", f"{sync_port},{store_port}"], tmp_path)
    receiver = WeightReceiver(ZmqTransport(), 0, "127.0.0.1", sync_port, store_port, "gloo", 60.0, torch.device("cpu"))
    receiver.start()
    try:
        staged = receiver.wait_for(5, timeout_s=120)
        wait_all(procs, tmp_path)
    finally:
        receiver.stop()
        receiver.join(10)
    assert staged is not None and staged.version == 5, receiver.error
    # model.dtype = bfloat16: fp32 master weights, bf16 compute, fp32 log-probs, bf16 on the wire.
    assert json.loads((tmp_path / "dtypes.json").read_text()) == {
        "master": ["torch.float32"], "compute": "torch.bfloat16", "logprob": "torch.float32"}
    learner = np.load(tmp_path / "published.npz")
    received = dict(staged.tensors)
    assert sorted(received) == sorted(learner.files)
    for name in learner.files:
        expected = torch.from_numpy(learner[name]).to(torch.bfloat16)  # sent in model.dtype
        got = received[name]
        assert got.dtype == torch.bfloat16 and got.shape == expected.shape, name
        assert torch.equal(got.view(torch.int16), expected.view(torch.int16)), name  # bit-exact checksum


def test_lora_steps_are_equal_across_layouts_and_ranks_train_only_the_adapter_and_reach_an_actor_merged(tmp_path):
    """[learner.lora]: one step with adapters (B non-zero, so A and B both get gradients) gives the same adapter
    update whole, cut into micro-batches (packed or padded) and on two FSDP2 ranks; no base weight moves; and the
    adapter the ranks publish is what an actor's receiver merges into its base: W + alpha/r * B @ A."""
    from asyncor.configs.schema import LORA_DEFAULT_TARGETS
    from asyncor.runtime.adapter import Adapter
    from tests.integration.learner_worker import small_policy

    base = small_policy(seed=4).lm.state_dict()
    staged = {}
    for world, variants in ((1, "100000:varlen,30:varlen,30:rows,30:padded"), (2, "30:rows")):
        sync_port, store_port = free_ports(2)
        adapter = Adapter({k: v.clone() for k, v in base.items()}, 3, 5.0, list(LORA_DEFAULT_TARGETS))
        procs = start_ranks(world, ["lora", "--out", str(tmp_path), "--variants", variants,
                                    "--ports", f"{sync_port},{store_port}"], tmp_path)
        receiver = WeightReceiver(ZmqTransport(), 0, "127.0.0.1", sync_port, store_port, "gloo", 60.0,
                                  torch.device("cpu"), adapter=adapter)
        receiver.start()
        try:
            staged[world] = receiver.wait_for(7, timeout_s=180)
            wait_all(procs, tmp_path)
        finally:
            receiver.stop()
            receiver.join(10)
        assert staged[world] is not None and staged[world].version == 7, receiver.error
        assert receiver.stats["refused"] == 0
    one = json.loads((tmp_path / "lora-metrics-r1.json").read_text())
    two = json.loads((tmp_path / "lora-metrics-r2.json").read_text())
    assert one["reloaded_exact"] is True and two["reloaded_exact"] is True  # a resume's adapter load, sharded too
    for case in ("uneven", "lonely"):
        whole = one[f"{case}-100000-varlen"]
        assert len(whole["trainable"]) == 3 * 7 * 2  # 3 layers x 7 projections x (A, B)
        assert all(n.endswith((".lora_A.weight", ".lora_B.weight")) for n in whole["trainable"])
        ref = np.load(tmp_path / f"lora-grad-{case}-100000-varlen-r1.npz")
        assert all(np.abs(ref[k]).max() > 0 for k in ref), case
        for key, metrics in [(f"{case}-30-{layout}-r1", one[f"{case}-30-{layout}"]) for layout in
                             ("varlen", "rows", "padded")] + [(f"{case}-30-rows-r2", two[f"{case}-30-rows"])]:
            assert metrics["frozen_moved"] == [], key
            grads = np.load(tmp_path / f"lora-grad-{key}.npz")
            worst = max((relative(grads[k], ref[k]), k) for k in ref)
            assert worst[0] < 1e-5, (key, worst)
            for name in ("learner/loss", "learner/entropy", "learner/tokens", "reward/mean"):
                assert metrics[name] == pytest.approx(whole[name], rel=1e-5, abs=1e-7), (key, name)
    published = np.load(tmp_path / "lora-published.npz")
    scaling = 5.0 / 3
    for world in (1, 2):
        merged = dict(staged[world].tensors)
        assert sorted(merged) == sorted(base)  # the whole state dict, ready for the engine
        assert staged[world].sent_bytes == sum(published[k].nbytes for k in published.files)
        changed = 0
        for name, w in base.items():
            module = name[: -len(".weight")]
            a_name = f"base_model.model.{module}.lora_A.weight"
            if a_name in published.files:
                b = published[a_name.replace("lora_A", "lora_B")].astype(np.float64)
                expected = w.double().numpy() + scaling * b @ published[a_name].astype(np.float64)
                assert relative(merged[name].double().numpy(), expected) < 1e-6, name
                changed += 1
            else:
                assert torch.equal(merged[name], w), name
        assert changed == 3 * 7
