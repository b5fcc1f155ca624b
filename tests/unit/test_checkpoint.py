"""Learner checkpoints (learner/checkpoint.py) and `launch.py run --resume` (launcher/resume.py) on one CPU
rank: exact optimizer and RNG restore, whole-or-nothing and durable directories, pruning, loading that runs no
code from the checkpoint, the config a resume continues with (and the keys it refuses), and the errors a user
sees. Resuming whole runs (and a sharded learner) is tests/integration/test_resume.py; the buffer's side of a
resume is tests/unit/test_resume_safety.py."""

import json
import os
import re

import pytest
import torch

from asyncor.configs.loader import ConfigError
from asyncor.configs.schema import Config
from asyncor.launcher.resume import keep_records_before, resume_config
from asyncor.learner import checkpoint
from asyncor.learner.parallel import Ranks
from asyncor.runtime.run_dir import CheckpointError, RunDir, read_meta

ONE = Ranks(0, 1, torch.device("cpu"), sharded=False)


class Policy(torch.nn.Module):
    def __init__(self, lm):
        super().__init__()
        self.lm = lm


@pytest.fixture(scope="module")
def model_dir(small_model_dir):
    return small_model_dir


def load(path):
    from transformers import AutoModelForCausalLM

    return Policy(AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32))


def train(policy, optimizer, steps, seed):
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        ids = torch.randint(0, policy.lm.config.vocab_size, (3, 7), generator=gen)
        optimizer.zero_grad()
        policy.lm(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()


def save(run_dir, step, policy, optimizer, keep=2, protect=""):
    state = {k: v.detach().clone() for k, v in policy.lm.state_dict().items()}
    return checkpoint.save(str(run_dir), step, step, policy, optimizer, ONE, state,
                           {"version": step, "entropy_control": {"coef": 0.5}}, {"version": step},
                           policy.lm.name_or_path, keep, protect)


def test_a_resumed_optimizer_and_rng_continue_exactly(tmp_path, model_dir):
    policy = load(model_dir)
    opt = torch.optim.AdamW(policy.parameters(), lr=1e-2, weight_decay=0.1)
    train(policy, opt, 3, seed=1)
    torch.manual_seed(123)
    path = save(tmp_path, 3, policy, opt)
    after_save = torch.rand(5)

    # The checkpoint's model is a Hugging Face directory with the fp32 masters and the tokenizer.
    resumed = load(os.path.join(path, "model"))
    assert os.path.exists(os.path.join(path, "model", "tokenizer.json"))
    assert all(torch.equal(a, b) for a, b in zip(policy.parameters(), resumed.parameters()))
    opt2 = torch.optim.AdamW(resumed.parameters(), lr=1e-2, weight_decay=0.1)
    torch.manual_seed(999)  # whatever the process did before: the checkpoint's RNG state wins
    state = checkpoint.load(path, resumed, opt2, ONE)
    assert state == {"version": 3, "entropy_control": {"coef": 0.5}}
    assert torch.equal(torch.rand(5), after_save)

    train(policy, opt, 2, seed=2)
    train(resumed, opt2, 2, seed=2)
    # Adam's moments and step count came back: the two continue identically.
    assert all(torch.equal(a, b) for a, b in zip(policy.parameters(), resumed.parameters()))
    fresh = load(os.path.join(path, "model"))
    train(fresh, torch.optim.AdamW(fresh.parameters(), lr=1e-2, weight_decay=0.1), 2, seed=2)
    assert not all(torch.equal(a, b) for a, b in zip(policy.parameters(), fresh.parameters()))  # the test can fail


def test_only_complete_checkpoints_count_and_old_ones_are_pruned(tmp_path, model_dir):
    policy = load(model_dir)
    opt = torch.optim.AdamW(policy.parameters(), lr=1e-3)
    train(policy, opt, 1, seed=0)
    first = save(tmp_path, 1, policy, opt, keep=2)
    save(tmp_path, 2, policy, opt, keep=2, protect=first)
    save(tmp_path, 3, policy, opt, keep=2, protect=first)
    names = lambda: [os.path.basename(p) for p in RunDir(str(tmp_path)).complete()]  # noqa: E731
    assert names() == ["step_000001", "step_000002", "step_000003"]  # step 1 is protected (resumed from)
    save(tmp_path, 4, policy, opt, keep=2)
    assert names() == ["step_000003", "step_000004"]
    # A write that died half-way: a temp dir, or a step dir without meta.json; neither is a checkpoint.
    os.makedirs(os.path.join(tmp_path, "checkpoints", ".tmp-step_000005", "model"))
    os.makedirs(os.path.join(tmp_path, "checkpoints", "step_000006", "model"))
    assert names() == ["step_000003", "step_000004"]
    save(tmp_path, 5, policy, opt, keep=2)  # replaces the dead temp dir
    assert names() == ["step_000004", "step_000005"]
    assert not os.path.exists(os.path.join(tmp_path, "checkpoints", ".tmp-step_000005"))
    with pytest.raises(CheckpointError, match="no meta.json"):
        read_meta(os.path.join(tmp_path, "checkpoints", "step_000006"))


def make_run(tmp_path, model_dir, steps=6, ckpt_steps=(2, 4)):
    run_dir = tmp_path / "runs" / "r"
    config = Config.model_validate({"run": {"output_dir": str(tmp_path / "runs"), "name": "r"},
                                    "learner": {"steps": steps}})
    os.makedirs(run_dir / "checkpoints")
    open(RunDir(str(run_dir)).launch_config, "w").write(json.dumps(config.model_dump(mode="json")))
    resolved = config.model_copy(deep=True)
    resolved.model.path = model_dir
    (run_dir / "config.json").write_text(json.dumps(resolved.model_dump(mode="json")))
    for step in ckpt_steps:
        d = run_dir / "checkpoints" / f"step_{step:06d}"
        for part in ("model", "optimizer"):
            os.makedirs(d / part)
        for name in ("trainer_state.json", "buffer_state.json"):
            (d / name).write_text("{}")
        (d / "meta.json").write_text(json.dumps({"step": step, "version": step, "ranks": 1, "written_at": 100.0 + step}))
    return run_dir


def test_resume_picks_the_newest_checkpoint_and_keeps_the_launch_config(tmp_path, model_dir):
    run_dir = make_run(tmp_path, model_dir)
    config = resume_config(str(run_dir), ["learner.lr=3e-4"])
    assert config.checkpoint.resume_from == str(run_dir / "checkpoints" / "step_000004")
    assert config.run_dir == str(run_dir) and config.model.path == model_dir
    assert config.learner.steps == 6 and config.learner.lr == 3e-4
    assert config.policy_path == os.path.join(config.checkpoint.resume_from, "model")
    named = resume_config(str(run_dir / "checkpoints" / "step_000002"))
    assert named.checkpoint.resume_from.endswith("step_000002") and named.run_dir == str(run_dir)


def test_resume_errors_say_what_to_do(tmp_path, model_dir):
    run_dir = make_run(tmp_path, model_dir, steps=4)
    with pytest.raises(ConfigError, match=r"at step 4 and learner.steps = 4.*--set learner.steps=N with N > 4"):
        resume_config(str(run_dir))
    assert resume_config(str(run_dir), ["learner.steps=8"]).learner.steps == 8  # extending a finished run
    with pytest.raises(ConfigError, match="no complete checkpoint"):
        resume_config(str(make_run(tmp_path / "empty", model_dir, ckpt_steps=())))
    with pytest.raises(ConfigError, match="no such run"):
        resume_config(str(tmp_path / "nowhere"))
    with pytest.raises(ConfigError, match="learner.stepz"):
        resume_config(str(run_dir), ["learner.stepz=8"])


def test_resume_takes_no_config_file(tmp_path, model_dir, capsys):
    import launch

    run_dir = make_run(tmp_path, model_dir)
    assert launch.main(["run", "--resume", str(run_dir), "--config", "configs/tiny.toml"]) == 2
    assert "drop --config" in capsys.readouterr().err


def test_metrics_after_the_checkpoint_are_dropped(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"ts": ts, "step": ts}) + "\n" for ts in (1, 2, 3, 4)) + '{"ts": 5, "st')
    assert keep_records_before(str(path), 2.5) == 3  # two later records and a torn last line
    assert [json.loads(line)["ts"] for line in path.read_text().splitlines()] == [1, 2]


# ---------------------------------------------------------------------------------------------- resume safety
# (issue 26 items 5 and 12; the buffer's side of resuming is tests/unit/test_resume_safety.py)

def test_a_resumed_optimizer_takes_lr_and_weight_decay_from_the_config(tmp_path, model_dir):
    from structlog.testing import capture_logs

    policy = load(model_dir)
    opt = torch.optim.AdamW(policy.parameters(), lr=1e-2, weight_decay=0.1)
    train(policy, opt, 2, seed=1)
    path = save(tmp_path, 2, policy, opt)
    resumed = load(os.path.join(path, "model"))
    opt2 = torch.optim.AdamW(resumed.parameters(), lr=3e-4, weight_decay=0.0)  # `--resume --set learner.lr=...`
    with capture_logs() as logs:
        checkpoint.load(path, resumed, opt2, ONE)
    assert [(g["lr"], g["weight_decay"]) for g in opt2.param_groups] == [(3e-4, 0.0)]
    # The moments and step count still come from the checkpoint.
    saved, loaded = opt.state_dict()["state"], opt2.state_dict()["state"]
    assert all(torch.equal(saved[i]["exp_avg"], loaded[i]["exp_avg"]) for i in saved)
    assert all(int(saved[i]["step"]) == int(loaded[i]["step"]) == 2 for i in saved)
    event, = [e for e in logs if e["event"] == "optimizer_restored"]
    assert event["lr"] == 3e-4 and event["changed_from_checkpoint"] == {"lr": [1e-2, 3e-4], "weight_decay": [0.1, 0.0]}


def test_rng_is_restored_when_the_number_of_ranks_changes(tmp_path, model_dir):
    policy = load(model_dir)
    opt = torch.optim.AdamW(policy.parameters(), lr=1e-3)
    torch.manual_seed(123)
    path = save(tmp_path, 1, policy, opt)  # one rank
    after_save = torch.rand(5)
    for rank in (0, 1):  # two ranks now: both continue rank 0's stream (every rank of a run starts from one seed)
        torch.manual_seed(999)
        resumed = load(os.path.join(path, "model"))
        checkpoint.load(path, resumed, torch.optim.AdamW(resumed.parameters(), lr=1e-3),
                        Ranks(rank, 2, torch.device("cpu"), sharded=False))
        assert torch.equal(torch.rand(5), after_save)


class _Marker:
    """Unpickling it creates a directory: what a hostile checkpoint would do with os.system."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return os.mkdir, (self.path,)


def test_a_checkpoint_cannot_run_code_through_the_optimizer_metadata(tmp_path, model_dir):
    import pickle

    policy = load(model_dir)
    opt = torch.optim.AdamW(policy.parameters(), lr=1e-3)
    train(policy, opt, 1, seed=0)
    path = save(tmp_path, 1, policy, opt)
    marker = tmp_path / "code_ran"
    with open(os.path.join(path, "optimizer", ".metadata"), "wb") as f:
        pickle.dump(_Marker(str(marker)), f)
    with pytest.raises(CheckpointError, match=r"\.metadata refused: posix\.mkdir is not part of checkpoint metadata"):
        checkpoint.load(path, policy, torch.optim.AdamW(policy.parameters(), lr=1e-3), ONE)
    assert not marker.exists()


def test_a_checkpoint_cannot_run_code_through_a_non_tensor_optimizer_entry(tmp_path, model_dir):
    """The param groups' settings are stored as pickled bytes; torch's own planner loads them with
    weights_only=False. Here one of them is pointed at a hostile pickle (the metadata itself stays valid)."""
    import pickle

    from torch.distributed.checkpoint.metadata import BytesStorageMetadata

    policy = load(model_dir)
    opt = torch.optim.AdamW(policy.parameters(), lr=1e-3)
    train(policy, opt, 1, seed=0)
    path = save(tmp_path, 1, policy, opt)
    optim_dir = os.path.join(path, "optimizer")
    with open(os.path.join(optim_dir, ".metadata"), "rb") as f:
        metadata = pickle.load(f)  # written just now by this test
    marker = tmp_path / "code_ran"
    hostile = pickle.dumps(_Marker(str(marker)), protocol=2)
    with open(os.path.join(optim_dir, "hostile.distcp"), "wb") as f:
        f.write(hostile)
    fqn = next(k for k, v in metadata.state_dict_metadata.items() if isinstance(v, BytesStorageMetadata))
    index = next(i for i in metadata.storage_data if i.fqn == fqn)
    info = metadata.storage_data[index]
    info.relative_path, info.offset, info.length = "hostile.distcp", 0, len(hostile)
    with open(os.path.join(optim_dir, ".metadata"), "wb") as f:
        pickle.dump(metadata, f)
    with pytest.raises(CheckpointError, match="the optimizer state cannot be loaded"):
        checkpoint.load(path, policy, torch.optim.AdamW(policy.parameters(), lr=1e-3), ONE)
    assert not marker.exists()


def test_pickle_format_weights_in_a_checkpoint_are_refused(tmp_path, model_dir):
    run_dir = make_run(tmp_path, model_dir)
    ckpt = run_dir / "checkpoints" / "step_000004"
    (ckpt / "model" / "pytorch_model.bin").write_bytes(b"not read")
    with pytest.raises(CheckpointError, match=r"pickle-format files \['pytorch_model.bin'\]"):
        read_meta(str(ckpt))
    with pytest.raises(ConfigError, match="pytorch_model.bin"):
        resume_config(str(ckpt))


def test_a_checkpoint_is_fsynced_before_and_after_the_rename_that_completes_it(tmp_path, model_dir, monkeypatch):
    """A node crash keeps a `step_*` directory only with its contents: every file and directory is flushed
    before the rename, and the directory holding it after."""
    events = []
    real_fsync, real_rename = os.fsync, os.rename

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def rename(src, dst):
        events.append(("rename", str(src), str(dst)))
        return real_rename(src, dst)

    policy = load(model_dir)
    opt = torch.optim.AdamW(policy.parameters(), lr=1e-3)
    train(policy, opt, 1, seed=0)
    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "rename", rename)
    path = save(tmp_path, 1, policy, opt)
    monkeypatch.undo()
    done = events.index(("rename", str(RunDir(str(tmp_path)).partial_step(1)), path))
    tmp = str(RunDir(str(tmp_path)).partial_step(1))
    synced_before = {e[1].replace(tmp, path) for e in events[:done] if e[0] == "fsync"}
    everything = {path} | {os.path.join(d, n) for d, dirs, files in os.walk(path) for n in dirs + files}
    assert everything - synced_before == set()
    assert ("fsync", os.path.join(str(tmp_path), "checkpoints")) in events[done:]


def test_a_second_resume_keeps_the_first_ones_overrides(tmp_path, model_dir):
    from asyncor.configs.loader import dump_resolved

    run_dir = make_run(tmp_path, model_dir)
    first = resume_config(str(run_dir), ["learner.steps=8", "learner.lr=3e-4"])
    dump_resolved(first, RunDir(str(run_dir)).config)  # what `launch.py run` writes once the resumed run starts
    second = resume_config(str(run_dir))
    assert (second.learner.steps, second.learner.lr) == (8, 3e-4)
    assert second.checkpoint.resume_overrides == ["learner.steps=8", "learner.lr=3e-4"]
    third = resume_config(str(run_dir), ["learner.lr=1e-4"])  # a later override wins
    assert (third.learner.steps, third.learner.lr) == (8, 1e-4)
    assert json.load(open(RunDir(str(run_dir)).launch_config))["learner"]["steps"] == 6  # the launch config stays


@pytest.mark.parametrize("override, key", [("run.seed=5", "run.seed"), ("task.train_size=100", "task.train_size"),
                                           ("task.digits=3", "task.digits"), ("run.name=other", "run.name"),
                                           ("model.tiny.num_layers=3", "model.tiny.num_layers"),
                                           ("checkpoint.resume_from=/elsewhere", "checkpoint.resume_from")])
def test_resume_refuses_keys_the_saved_state_depends_on(tmp_path, model_dir, override, key):
    run_dir = make_run(tmp_path, model_dir)
    with pytest.raises(ConfigError, match=rf"cannot change these keys.*\n  {re.escape(key)}: "):
        resume_config(str(run_dir), [override])


def test_resume_applies_keys_the_saved_state_follows(tmp_path, model_dir):
    """Applied consistently where the state is restored: the buffer recomputes admission
    (tests/unit/test_resume_safety.py), the optimizer takes lr and weight decay from the config (above)."""
    run_dir = make_run(tmp_path, model_dir)
    config = resume_config(str(run_dir), ["learner.prompts_per_step=8", "learner.lr=1e-4", "learner.weight_decay=0.1",
                                          "task.heldout_size=300", "learner.ranks=2", "buffer.max_staleness=4"])
    assert (config.learner.prompts_per_step, config.task.heldout_size, config.learner.ranks) == (8, 300, 2)
