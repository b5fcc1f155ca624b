"""LoRA (issue 29): the config and its fit to the model, the adapter an actor checks and merges (against float64),
the peft-format files (peft loads them: same logits as the merged model), the learner's adapters (only they
train), checkpoints holding an adapter, and a hostile adapter message refused and counted by a real receiver."""

import json
import os
import shutil
import threading

import numpy as np
import pytest
import torch

from asyncor.configs.loader import ConfigError, validate
from asyncor.configs.lora_fit import check_lora_fit, linear_shapes, model_architecture
from asyncor.configs.schema import LORA_DEFAULT_TARGETS, Config, LoraConfig
from asyncor.launcher.preflight import PreflightError, check_environment
from asyncor.learner.lora import adapter_named, apply_lora, load_adapter_weights, param_name, peft_name
from asyncor.runtime.adapter_files import AdapterFileError, AdapterSettings, read_adapter, write_adapter, write_merged
from asyncor.runtime.adapter import Adapter, AdapterRefused

TARGETS = list(LORA_DEFAULT_TARGETS)


@pytest.fixture(scope="module")
def model_dir(small_model_dir):
    return small_model_dir


def lm_of(path, dtype=torch.float32):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=dtype)


def random_adapter(lm, rank, seed=0, dtype=torch.float32):
    """Adapter tensors (peft names) with non-zero B for every default target of `lm`."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name, w in lm.state_dict().items():
        module = name[: -len(".weight")]
        if name.endswith(".weight") and w.dim() == 2 and module.rsplit(".", 1)[-1] in TARGETS:
            out[f"base_model.model.{module}.lora_A.weight"] = torch.randn(rank, w.shape[1], generator=gen).to(dtype)
            out[f"base_model.model.{module}.lora_B.weight"] = (0.3 * torch.randn(w.shape[0], rank, generator=gen)
                                                               ).to(dtype)
    return out


# ------------------------------------------------------------------ config and fit


def test_lora_config_refuses_lm_head_and_mixed_all_linear_naming_the_key():
    with pytest.raises(ConfigError, match="learner.lora.target_modules"):
        validate({"learner": {"lora": {"enabled": True, "target_modules": ["q_proj", "lm_head"]}}})
    with pytest.raises(ConfigError, match="all-linear"):
        validate({"learner": {"lora": {"target_modules": ["all-linear", "q_proj"]}}})
    with pytest.raises(ConfigError, match="learner.lora.rank"):
        validate({"learner": {"lora": {"rank": 0}}})
    assert Config().learner.lora.enabled is False and LoraConfig(rank=8, alpha=16).scaling == 2.0


def test_a_lora_config_that_does_not_fit_the_model_is_refused_before_anything_starts(tmp_path, model_dir):
    def config(**lora):
        return Config.model_validate({"run": {"output_dir": str(tmp_path)}, "model": {"path": model_dir},
                                      "learner": {"lora": {"enabled": True, **lora}}})

    check_environment(config(rank=8), local=False, gpus=0)  # fits: nothing raised
    with pytest.raises(PreflightError, match=r"learner.lora.target_modules: \['qkv_proj'\] name no linear layer.*"
                                             r"'q_proj'"):
        check_environment(config(target_modules=["q_proj", "qkv_proj"]), local=False, gpus=0)
    with pytest.raises(PreflightError, match=r"learner.lora.rank = 40 is above the width of .*\(32 x 32\).* most 32"):
        check_environment(config(rank=40), local=False, gpus=0)
    # The built-in tiny model (no model.path yet: prepare builds it) is checked from model.tiny.
    tiny = Config.model_validate({"learner": {"lora": {"enabled": True, "rank": 129}}})
    shapes = linear_shapes(model_architecture(tiny))
    assert shapes["gate_proj"][0][1:] == (512, 128)
    with pytest.raises(ValueError, match="at most 128"):
        check_lora_fit(tiny.learner.lora, shapes)
    all_linear = LoraConfig(enabled=True, rank=128, target_modules=["all-linear"])
    check_lora_fit(all_linear, shapes)


# ------------------------------------------------------------------ the actor's adapter


def test_the_merge_is_w_plus_scaled_b_a_against_float64_and_leaves_the_rest_alone(model_dir):
    base = lm_of(model_dir).state_dict()
    adapter = Adapter(base, rank=5, alpha=7.0, targets=TARGETS)
    tensors = random_adapter(lm_of(model_dir), 5, seed=3)
    merged = dict(adapter.merge(list(tensors.items())))
    assert set(merged) == set(base) and adapter.numel == sum(t.numel() for t in tensors.values())
    touched = 0
    for name, w in base.items():
        a = tensors.get(f"base_model.model.{name[:-len('.weight')]}.lora_A.weight")
        if a is None:
            assert merged[name] is w  # not copied
            continue
        b = tensors[f"base_model.model.{name[:-len('.weight')]}.lora_B.weight"]
        expected = w.double() + (7.0 / 5) * b.double() @ a.double()
        assert (merged[name].double() - expected).abs().max() / expected.abs().max() < 1e-6
        touched += 1
    assert touched == 2 * 7  # 2 layers x 7 projections
    # bfloat16 on the wire still merges in float32 and keeps the base's dtype.
    bf16 = dict(adapter.merge([(k, v.to(torch.bfloat16)) for k, v in tensors.items()]))
    assert all(bf16[k].dtype == base[k].dtype for k in base)


@pytest.mark.parametrize("spoil, reason", [
    (lambda t: t.popitem(), "wrong_names"),
    (lambda t: t.update({"base_model.model.model.layers.0.mlp.up_proj.lora_C.weight": torch.zeros(5, 32)}),
     "wrong_names"),
    (lambda t: t.update({"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": torch.zeros(4, 32)}),
     "wrong_shape"),
    (lambda t: t.update({"base_model.model.model.layers.1.mlp.down_proj.lora_B.weight": torch.zeros(48, 5)}),
     "wrong_shape"),
    (lambda t: t.update({"base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight":
                         torch.full((32, 5), float("nan"))}), "not_finite"),
    (lambda t: t.update({"base_model.model.model.layers.0.self_attn.o_proj.lora_A.weight":
                         torch.zeros(5, 32, dtype=torch.int32)}), "bad_dtype"),
])
def test_an_adapter_that_does_not_fit_is_refused_with_its_reason(model_dir, spoil, reason):
    adapter = Adapter(lm_of(model_dir).state_dict(), rank=5, alpha=7.0, targets=TARGETS)
    tensors = random_adapter(lm_of(model_dir), 5)
    spoil(tensors)
    with pytest.raises(AdapterRefused) as err:
        adapter.merge(list(tensors.items()))
    assert err.value.reason == reason


# ------------------------------------------------------------------ files (peft format)


def test_saved_adapters_load_in_peft_and_the_merged_export_gives_the_same_logits(tmp_path, model_dir):
    from peft import PeftModel

    tensors = random_adapter(lm_of(model_dir), 4, seed=1)
    settings = AdapterSettings(4, 12.0, 0.0, TARGETS, model_dir)
    write_adapter(str(tmp_path / "adapter"), tensors, settings)
    back_settings, back = read_adapter(str(tmp_path / "adapter"))
    assert back_settings == settings and all(torch.equal(back[k], tensors[k]) for k in tensors)
    ids = torch.randint(0, 10, (2, 9), generator=torch.Generator().manual_seed(0))
    peft_model = PeftModel.from_pretrained(lm_of(model_dir), str(tmp_path / "adapter")).eval()
    with torch.no_grad():
        want = peft_model(input_ids=ids).logits
        base = lm_of(model_dir)(input_ids=ids).logits
        write_merged(model_dir, settings, tensors, str(tmp_path / "merged"))
        got = lm_of(str(tmp_path / "merged")).eval()(input_ids=ids).logits
    assert (want - base).abs().max() > 0.1  # the adapter matters
    assert (got - want).abs().max() < 1e-4
    assert os.path.exists(tmp_path / "merged" / "tokenizer.json")
    write_merged(model_dir, settings, tensors, str(tmp_path / "merged16"), dtype="bfloat16")
    assert json.loads((tmp_path / "merged16" / "config.json").read_text())["dtype"] == "bfloat16"
    assert lm_of(str(tmp_path / "merged16"), dtype=None).dtype == torch.bfloat16


def test_adapter_files_that_are_not_plain_lora_safetensors_are_refused(tmp_path):
    d = tmp_path / "a"
    d.mkdir()
    with pytest.raises(AdapterFileError, match="no adapter_config.json"):
        read_adapter(str(d))
    for config, match in [({"peft_type": "IA3"}, "only LORA"), ({"peft_type": "LORA", "r": 4, "lora_alpha": 8,
                                                                "use_dora": True}, "DoRA"),
                          ({"peft_type": "LORA", "r": 0, "lora_alpha": 8}, "positive"),
                          ({"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": {"q": 1}},
                           "not a list of module names"),
                          (["LORA"], "holds a list"),
                          ({"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj"]},
                           "never a pickle")]:
        (d / "adapter_config.json").write_text(json.dumps(config))
        with pytest.raises(AdapterFileError, match=match):
            read_adapter(str(d))


# ------------------------------------------------------------------ learner


def test_only_adapters_train_and_a_saved_adapter_loads_back_exactly(model_dir):
    lm = apply_lora(lm_of(model_dir), LoraConfig(enabled=True, rank=3, alpha=6.0, dropout=0.0))
    trainable = [n for n, p in lm.named_parameters() if p.requires_grad]
    assert len(trainable) == 2 * 7 * 2 and all(".lora_" in n for n in trainable)
    named = adapter_named(lm)
    assert all(n.startswith("base_model.model.model.layers.") and ".default." not in n for n, _ in named)
    assert [param_name(n) for n, _ in named] == trainable and peft_name(trainable[0]) == named[0][0]
    # A step moves only the adapter; B starts at zero, so the policy starts exactly as the base.
    base = lm_of(model_dir)
    ids = torch.randint(0, 10, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(lm(input_ids=ids).logits, base(input_ids=ids).logits)
    frozen = {n: p.detach().clone() for n, p in lm.named_parameters() if not p.requires_grad}
    opt = torch.optim.AdamW([p for p in lm.parameters() if p.requires_grad], lr=1e-2)
    lm(input_ids=ids, labels=ids).loss.backward()
    opt.step()
    assert all(torch.equal(p, frozen[n]) for n, p in lm.named_parameters() if not p.requires_grad)
    saved = {n: t.detach().clone() for n, t in adapter_named(lm)}
    other = apply_lora(lm_of(model_dir), LoraConfig(enabled=True, rank=3, alpha=6.0))
    load_adapter_weights(other, saved)
    with torch.no_grad():
        assert torch.equal(other(input_ids=ids).logits, lm(input_ids=ids).logits)
    wrong_rank = apply_lora(lm_of(model_dir), LoraConfig(enabled=True, rank=2, alpha=6.0))
    with pytest.raises(ValueError, match="rank"):
        load_adapter_weights(wrong_rank, saved)


def test_a_lora_checkpoint_holds_the_adapter_in_peft_format_and_resumes_exactly(tmp_path, model_dir):
    from asyncor.learner import checkpoint
    from asyncor.learner.parallel import Ranks
    from asyncor.runtime.run_dir import read_meta

    class Policy(torch.nn.Module):
        def __init__(self, lm):
            super().__init__()
            self.lm = lm

    one = Ranks(0, 1, torch.device("cpu"), sharded=False)
    cfg = LoraConfig(enabled=True, rank=3, alpha=6.0)

    def fresh():
        policy = Policy(apply_lora(lm_of(model_dir), cfg))
        return policy, torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=1e-2)

    def train(policy, opt, seed):
        gen = torch.Generator().manual_seed(seed)
        for _ in range(2):
            ids = torch.randint(0, 10, (3, 7), generator=gen)
            opt.zero_grad()
            policy.lm(input_ids=ids, labels=ids).loss.backward()
            opt.step()

    policy, opt = fresh()
    train(policy, opt, 1)
    state = {n: t.detach().clone() for n, t in adapter_named(policy.lm)}
    path = checkpoint.save(str(tmp_path), 2, 2, policy, opt, one, state, {"version": 2}, {}, model_dir, 2,
                           adapter=AdapterSettings(3, 6.0, 0.0, TARGETS, model_dir))
    assert sorted(os.listdir(path)) == ["adapter", "buffer_state.json", "meta.json", "optimizer", "rng",
                                        "trainer_state.json"]
    assert read_meta(path)["lora"] is True
    resumed, opt2 = fresh()
    load_adapter_weights(resumed.lm, read_adapter(os.path.join(path, "adapter"))[1])
    checkpoint.load(path, resumed, opt2, one)
    train(policy, opt, 2)
    train(resumed, opt2, 2)
    for (n, a), (_, b) in zip(adapter_named(policy.lm), adapter_named(resumed.lm)):
        assert torch.equal(a, b), n  # Adam's moments came back with the adapter


# ------------------------------------------------------------------ a hostile adapter on the wire


def test_a_receiver_refuses_and_counts_a_bad_adapter_and_stages_the_next_good_one(model_dir):
    from asyncor.launcher.ports import free_ports
    from asyncor.learner.weight_sync import publish
    from asyncor.sync.broadcaster import WeightBroadcaster
    from asyncor.sync.receiver import WeightReceiver
    from asyncor.wire.zeromq import ZmqTransport

    sync_port, store_port = free_ports(2)
    made = {}
    learner = threading.Thread(target=lambda: made.update(b=WeightBroadcaster(
        ZmqTransport(), "127.0.0.1", sync_port, store_port, 1, "gloo", 30.0, torch.device("cpu"))), daemon=True)
    learner.start()
    base = lm_of(model_dir).state_dict()
    receiver = WeightReceiver(ZmqTransport(), 0, "127.0.0.1", sync_port, store_port, "gloo", 30.0,
                              torch.device("cpu"), adapter=Adapter(base, 4, 8.0, TARGETS))
    receiver.start()
    learner.join(timeout=60)
    broadcaster = made["b"]
    try:
        good = random_adapter(lm_of(model_dir), 4, seed=5)
        wrong_rank = random_adapter(lm_of(model_dir), 6, seed=5)
        renamed = {k.replace("layers.1.", "layers.9."): v for k, v in good.items()}
        for version, tensors in ((1, wrong_rank), (2, renamed)):
            publish(list(tensors.items()), torch.float32, 1 << 20, broadcaster, version, torch.device("cpu"))
        publish(list(good.items()), torch.float32, 1 << 20, broadcaster, 3, torch.device("cpu"))
        staged = receiver.wait_for(1, 30.0)
        assert staged is not None and staged.version == 3  # versions 1 and 2 were never staged
        assert receiver.stats["refused"] == 2 and receiver.error is None
        merged = dict(staged.tensors)
        q = "model.layers.1.self_attn.q_proj.weight"
        a, b = good[f"base_model.model.{q[:-7]}.lora_A.weight"], good[f"base_model.model.{q[:-7]}.lora_B.weight"]
        np.testing.assert_allclose(merged[q].numpy(), (base[q] + 2.0 * b @ a).numpy(), rtol=1e-5, atol=1e-6)
        assert staged.sent_bytes == sum(t.numel() * 4 for t in good.values())
    finally:
        receiver.stop()
        broadcaster.close()


# ------------------------------------------------------------------ export


def test_export_takes_adapters_checkpoints_and_runs_and_says_what_it_needs(tmp_path, model_dir):
    from asyncor.studies.export import export, find_weights

    tensors = random_adapter(lm_of(model_dir), 4, seed=2)
    write_adapter(str(tmp_path / "adapter"), tensors, AdapterSettings(4, 8.0, 0.0, TARGETS, model_dir))
    assert find_weights(str(tmp_path / "adapter")) == (str(tmp_path / "adapter"), True)
    assert find_weights(model_dir) == (model_dir, False)
    out = export(str(tmp_path / "adapter"), str(tmp_path / "merged"), dtype="bfloat16")
    merged = lm_of(out, dtype=None)
    assert merged.dtype == torch.bfloat16
    q = "model.layers.0.self_attn.q_proj.weight"
    expected = lm_of(model_dir).state_dict()[q] + 2.0 * tensors[f"base_model.model.{q[:-7]}.lora_B.weight"] @ \
        tensors[f"base_model.model.{q[:-7]}.lora_A.weight"]
    assert torch.equal(merged.state_dict()[q], expected.to(torch.bfloat16))
    # A full-weight "checkpoint" is copied (cast when asked); a run resolves to its newest checkpoint.
    ckpt = tmp_path / "run" / "checkpoints" / "step_000003"
    shutil.copytree(model_dir, ckpt / "model")
    (ckpt / "optimizer").mkdir()
    for part in ("trainer_state.json", "buffer_state.json"):
        (ckpt / part).write_text("{}")
    (ckpt / "meta.json").write_text(json.dumps({"step": 3, "version": 3, "ranks": 1}))
    assert find_weights(str(tmp_path / "run")) == (str(ckpt / "model"), False)
    copied = export(str(tmp_path / "run"), str(tmp_path / "copy"))
    assert torch.equal(lm_of(copied).state_dict()[q], lm_of(model_dir).state_dict()[q])
    with pytest.raises(ValueError, match="not a model directory, a peft adapter directory"):
        find_weights(str(tmp_path / "nothing"))
    write_adapter(str(tmp_path / "orphan"), tensors, AdapterSettings(4, 8.0, 0.0, TARGETS, "/gone"))
    with pytest.raises(ValueError, match="pass --base DIR"):
        export(str(tmp_path / "orphan"), str(tmp_path / "x"))
    assert os.path.isdir(export(str(tmp_path / "orphan"), str(tmp_path / "x"), base=model_dir))
