"""Config validation: unknown keys, wrong types, out-of-range values, overrides."""

import json

import pytest

from asyncor.configs.loader import ConfigError, dump_resolved, load_config, load_resolved


def error_of(*overrides) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(None, list(overrides))
    return str(info.value)


def test_default_config_loads():
    cfg = load_config()
    assert cfg.run.name == "tiny" and cfg.actors.count >= 1


def test_overrides_are_typed():
    cfg = load_config(None, ["buffer.max_staleness=0", "learner.lr=1e-4", 'task.operations=["+", "*"]', "run.name=x"])
    assert cfg.buffer.max_staleness == 0 and cfg.learner.lr == 1e-4 and cfg.task.operations == ["+", "*"]


def test_unknown_key_names_key_and_known_keys():
    msg = error_of("buffer.max_stalenes=1")
    assert "buffer.max_stalenes: unknown key" in msg and "max_staleness" in msg


def test_unknown_section():
    assert "learnr: unknown key" in error_of("learnr.lr=1")


def test_wrong_type_names_key():
    msg = error_of("actors.count=many")
    assert "actors.count" in msg and "'many'" in msg


def test_out_of_range_names_key_and_bound():
    msg = error_of("buffer.max_staleness=-1")
    assert "buffer.max_staleness" in msg and "greater than or equal to 0" in msg
    assert "actors.temperature" in error_of("actors.temperature=0")


def test_bad_literal_lists_accepted_values():
    msg = error_of("sync.backend=mpi")
    assert "sync.backend" in msg and "'gloo'" in msg and "'nccl'" in msg


def test_logprob_impl_choices():
    assert load_config(None, ['learner.logprob_impl="torch"']).learner.logprob_impl == "torch"
    msg = error_of('learner.logprob_impl="cuda"')
    assert "learner.logprob_impl" in msg and "triton" in msg and "auto" in msg


def test_cross_field_checks():
    assert "vLLM's CPU attention" in error_of("model.tiny.hidden_size=96", "model.tiny.num_attention_heads=6")
    assert "sync.every" in error_of("buffer.max_staleness=0", "sync.every=2")
    assert "eval.max_problems" in error_of("eval.max_problems=300", "task.heldout_size=256")


def test_malformed_override():
    assert "expected KEY=VALUE" in error_of("buffer.max_staleness")


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(str(tmp_path / "nope.toml"))


def test_resolved_round_trip(tmp_path):
    cfg = load_config(None, ["net.sync_port=1234"])
    path = tmp_path / "config.json"
    dump_resolved(cfg, str(path))
    assert load_resolved(str(path)) == cfg
    assert json.loads(path.read_text())["net"]["sync_port"] == 1234


def test_file_tasks_need_existing_files_and_resolve_them():
    assert "needs train_files" in error_of('task.kind="files"')
    assert "data files not found" in error_of('task.kind="files"', 'task.train_files=["no/such.jsonl"]')
    cfg = load_config(None, ['task.kind="files"', 'task.train_files=["tests/data/math.jsonl"]',
                             "eval.before_and_after=false", "eval.every_steps=0"])
    assert cfg.task.train_files[0].startswith("/") and cfg.task.train_files[0].endswith("tests/data/math.jsonl")
    assert "needs task.heldout_files" in error_of('task.kind="files"', 'task.train_files=["tests/data/math.jsonl"]')


def test_micro_batch_budget_below_the_longest_sequence_is_refused():
    # tiny default: 64-token prompts + 8-token responses; a later stage may be longer
    msg = error_of("learner.micro_batch_tokens=71")
    assert "learner.micro_batch_tokens (71)" in msg and "at least 72" in msg
    assert load_config(None, ["learner.micro_batch_tokens=72"]).learner.micro_batch_tokens == 72
    msg = error_of("learner.micro_batch_tokens=72", 'algo.stages=[{start_step = 10, max_response_tokens = 20}]')
    assert "at least 84" in msg


def test_bf16_adamw_without_master_weights_is_refused_with_the_reason():
    msg = error_of('learner.master_dtype="bfloat16"')
    assert "learner.master_dtype" in msg and "1/256" in msg


def test_a_store_smaller_than_the_admission_window_is_refused_naming_the_key():
    """(η + 1) x prompts_per_step groups may exist at once; a smaller store would refuse granted groups."""
    message = error_of("buffer.max_groups=40", "buffer.max_staleness=2", "learner.prompts_per_step=16")
    assert "buffer.max_groups (40)" in message and "at least 48" in message
    load_config(None, ["buffer.max_groups=48", "buffer.max_staleness=2", "learner.prompts_per_step=16"])


def test_inflight_sequences_below_a_group_are_refused():
    """An engine kept at fewer sequences than one group never has room for a grant: the actor would wait for ever."""
    with pytest.raises(ConfigError, match=r"actors.inflight_sequences \(4\) is below the largest group size \(8\)"):
        load_config(None, ["actors.inflight_sequences=4", "actors.group_size=8"])
    with pytest.raises(ConfigError, match=r"largest group size \(16\)"):  # a later stage's group counts
        load_config(None, ["actors.inflight_sequences=8", "actors.group_size=8", "learner.steps=100",
                           "algo.stages=[{start_step = 50, group_size = 16}]"])
    assert load_config(None, ["actors.inflight_sequences=8", "actors.group_size=8"]).actors.inflight_sequences == 8
    assert load_config(None, ["actors.inflight_sequences=4", "actors.group_size=8", 'actors.update_mode="chunk"'])


def test_every_shipped_config_loads_with_room_for_its_largest_group():
    """configs/*.toml pass the cross-field checks (their data paths aside: check_files=False), the inflight
    engine size among them: 0 (the default size) or at least the largest group of any stage."""
    from pathlib import Path

    from asyncor.configs.stages import stages

    shipped = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.toml"))
    assert len(shipped) >= 4
    for path in shipped:
        cfg = load_config(str(path), check_files=False)
        largest = max(stage.group_size for stage in stages(cfg))
        assert cfg.actors.inflight_sequences == 0 or cfg.actors.inflight_sequences >= largest, path.name


@pytest.mark.parametrize("kind", ["objective", "advantage", "correction", "loss_agg"])
def test_every_algorithm_key_lists_its_choices_and_refuses_others(kind, capsys):
    """`launch.py config` lists each registry key with every registered choice; a bad choice is refused
    naming the key and the choices (configs/algorithms.py is the one list)."""
    from asyncor.configs.algorithms import REGISTRY
    from asyncor.launcher.cli import config_command

    config_command(None)
    line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith(f"algo.{kind} = "))
    assert line.endswith(f"(one of: {', '.join(REGISTRY[kind])})")
    msg = error_of(f'algo.{kind}="nope"')
    assert f"algo.{kind}" in msg and all(f"'{name}'" in msg for name in REGISTRY[kind])


def test_variant_requirements_are_refused_naming_the_keys():
    assert "algo.off_policy.old_logprobs = 'recompute'" in error_of('algo.correction="tis"')
    msg = error_of('algo.objective="decoupled"', 'algo.off_policy.old_logprobs="recompute"')
    assert "algo.objective = 'decoupled'" in msg and "algo.correction" in msg
    cfg = load_config(None, ['algo.objective="decoupled"', 'algo.correction="mis"',
                             'algo.off_policy.old_logprobs="recompute"'])
    assert cfg.algo.objective == "decoupled"


def test_keys_from_before_the_registry_still_load():
    """A saved config of an older run (resume) spells algo.aggregation and algo.off_policy.correction."""
    cfg = load_config(None, ['algo.aggregation="sequence"', 'algo.off_policy.correction="decoupled"',
                             'algo.off_policy.old_logprobs="recompute"'])
    assert (cfg.algo.loss_agg, cfg.algo.correction) == ("seq_mean_token_mean", "mis")
    assert "set algo.loss_agg only" in error_of('algo.aggregation="token"', 'algo.loss_agg="seq_mean_token_mean"')
