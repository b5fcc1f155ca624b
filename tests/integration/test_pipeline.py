"""End to end with real processes: vLLM actors, ZeroMQ buffer, gloo broadcast, learner.

Each test runs `launch.py run` on the tiny model (warm start cached in
.cache/asyncor-tests after the first test; no eval; a few steps). The warm
start matters: a random policy never earns reward, so every advantage would be
zero and the weights would never change. and checks what users rely on: the staleness bound held for every
trained group, actors really received and used new weights, failures stop
everything without orphans.
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
pytestmark = pytest.mark.slow


def launch_args(tmp_path, name, *overrides):
    return [sys.executable, os.path.join(ROOT, "launch.py"), "run",
            "--set", f"run.name={name}", "--set", f"run.output_dir={tmp_path}",
            "--set", f"run.cache_dir={os.path.join(ROOT, '.cache', 'asyncor-tests')}",
            "--set", "eval.before_and_after=false", "--set", "eval.every_steps=0",
            "--set", "learner.prompts_per_step=4", "--set", "actors.prompts_per_chunk=4",
            "--set", "actors.group_size=4", "--set", "actors.probe=true", "--set", "run.max_wall_s=240", *overrides]


def run_launcher(tmp_path, name, *overrides, timeout=300, env=None):
    proc = subprocess.run(launch_args(tmp_path, name, *overrides), cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return os.path.join(tmp_path, name)


def metrics(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""  # gone meanwhile (a sandboxed program lives for milliseconds)


def proc_stat(pid):
    """The fields of /proc/<pid>/stat after the command name ([0] state, [1] ppid, [19] start time), or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None


def live_pids():
    """{pid: stat fields} of every process that is not a zombie."""
    found = {int(pid): proc_stat(pid) for pid in os.listdir("/proc") if pid.isdigit()}
    return {pid: stat for pid, stat in found.items() if stat and stat[0] != "Z"}


def children_of(run_dir):
    """Live processes started for this run (their command line names its config)."""
    marker = os.path.join(run_dir, "config.json")
    return [pid for pid in live_pids() if marker in cmdline(pid)]


def check_common(run_dir, eta, steps):
    with open(os.path.join(run_dir, "summary.json")) as f:
        summary = json.load(f)
    assert summary["learner"]["steps"] == steps
    assert summary["staleness"]["max_allowed"] == eta
    assert summary["staleness"]["max"] <= eta
    assert summary["actors"]["tokens_per_s"] > 0 and summary["sync"]["broadcast_s_mean"] > 0
    # Every accepted group is accounted for exactly once (trained, dropped stale or all-equal, or left).
    ledger = summary["ledger"]
    assert ledger["accepted"] >= ledger["trained"] > 0 and ledger["unaccounted"] == 0, ledger
    # Every metrics record and role summary reached the launcher as a message (none refused).
    assert not [k for k in summary["rejected_messages"] if k.startswith("telemetry_")], summary["rejected_messages"]
    assert "summary_not_acknowledged" not in open(os.path.join(run_dir, "logs", "buffer.jsonl")).read() \
        if os.path.exists(os.path.join(run_dir, "logs", "buffer.jsonl")) else True
    records = metrics(run_dir)
    learner = [r for r in records if "learner/step" in r]  # one record per step (checkpoint_s has its own)
    assert len(learner) == steps
    # Every trained group obeyed the bound (the learner logs the staleness of each batch it trained on).
    assert all(r["learner/staleness_max"] <= eta for r in learner)
    # Every actor received every broadcast and loaded new weights into vLLM (it takes the newest staged
    # version at each chunk boundary, and every broadcast ends before the actors are told to stop).
    loaded = set()
    for i in range(summary["actors"]["count"]):
        with open(os.path.join(run_dir, "roles", f"actor{i}.json")) as f:
            actor = json.load(f)
        assert actor["versions_received"] == list(range(1, steps + 1))
        assert max(actor["versions_loaded"]) > 0
        loaded |= set(actor["versions_loaded"])
    # Which versions were loaded in between depends on timing (the newest staged version replaces older
    # ones), except where the bound forces it: the last batch, trained at version steps - 1, was generated
    # by version >= steps - 1 - eta, and with eta = 0 every version 0 .. steps - 1 generated a batch.
    # (Issue 10: `len(loaded) >= 3` failed once with a busy core, the files run loading {0, 3}.)
    assert max(loaded) >= steps - 1 - eta, loaded
    if eta == 0:
        assert set(range(steps)) <= loaded, loaded
    # The engine's log-probs changed with its weights: a distinct probe value for every version loaded.
    probes = {r["step"]: r["actor/probe_logprob"] for r in records if r.get("actor/probe_logprob") is not None}
    assert set(probes) == loaded, (set(probes), loaded)
    assert len(set(probes.values())) == len(probes), probes
    return summary, learner


def test_synchronous_eta0_is_on_policy(tmp_path):
    """Also the fused Triton log-prob kernels in a real learner (interpreted on CPU)."""
    steps = 4
    run_dir = run_launcher(tmp_path, "eta0", "--set", "buffer.max_staleness=0", "--set", f"learner.steps={steps}",
                           "--set", 'learner.logprob_impl="triton"', env={**os.environ, "TRITON_INTERPRET": "1"})
    summary, learner = check_common(run_dir, 0, steps)
    with open(os.path.join(run_dir, "logs", "learner.jsonl")) as f:
        choice = [json.loads(line) for line in f if '"logprob_impl"' in line]
    assert choice and choice[0]["logprob_impl"] == "triton"
    assert summary["staleness"]["mean"] == 0.0
    # η = 0: every batch was generated by exactly the learner's current weights, so vLLM's behaviour
    # log-probs match the learner's recomputation (here by the Triton kernels). Had an actor not loaded
    # the broadcast weights, this would grow after the first step.
    assert all(r["learner/mismatch_abs_max"] < 1e-3 for r in learner), [r["learner/mismatch_abs_max"] for r in learner]
    assert all(r["learner/tokens_s0"] == r["learner/tokens"] for r in learner)


def test_two_sharded_learner_ranks_stay_on_policy(tmp_path):
    """learner.ranks = 2 (FSDP2 over gloo), several micro-batches per step: at η = 0 the actors' vLLM log-probs
    match the learner's, which holds only if every broadcast, gathered from two sets of shards, was exact. The
    objective is M2PO with the IcePop correction, whose mask and weights span the whole mini-batch: each rank's
    log-probs are gathered from both ranks (learner/update.py `gather_tokens`)."""
    steps = 3
    run_dir = run_launcher(tmp_path, "ranks2", "--set", "buffer.max_staleness=0", "--set", f"learner.steps={steps}",
                           "--set", "learner.ranks=2", "--set", "learner.micro_batch_tokens=72",
                           "--set", 'algo.objective="m2po"', "--set", 'algo.correction="icepop"',
                           "--set", 'algo.off_policy.old_logprobs="recompute"')
    summary, learner = check_common(run_dir, 0, steps)
    assert summary["learner"]["ranks"] == 2
    assert all(r["learner/ranks"] == 2 and r["learner/micro_batches"] >= 2 for r in learner)
    assert all(r["learner/mismatch_abs_max"] < 1e-3 for r in learner), [r["learner/mismatch_abs_max"] for r in learner]
    # On policy, nothing is masked: had a rank's half of the gathered log-probs been missing (zeros), its tokens
    # would show |log π_prox - log μ| = |log μ| and IcePop and M2PO would mask them.
    assert all(r["learner/correction_frac"] == 0 and r["learner/objective_masked_frac"] == 0 for r in learner)
    assert all(r["learner/is_weight_mean"] == pytest.approx(1.0, abs=1e-3) for r in learner)
    with open(os.path.join(run_dir, "logs", "learner1.jsonl")) as f:
        assert any('"sharded": true' in line for line in f)
    assert os.path.exists(os.path.join(run_dir, "final", "model.safetensors"))


def test_async_eta2_respects_bound_with_two_actors_across_a_stage_switch(tmp_path):
    steps = 6
    run_dir = run_launcher(tmp_path, "eta2", "--set", "buffer.max_staleness=2", "--set", f"learner.steps={steps}",
                           "--set", "actors.count=2",
                           "--set", "algo.stages=[{start_step=3, max_response_tokens=6, group_size=3}]")
    summary, learner = check_common(run_dir, 2, steps)
    assert summary["actors"]["count"] == 2 and summary["actors"]["reported"] == 2
    assert not children_of(run_dir)
    # The schedule switched while running: the learner trained steps 3.. in stage 1, the buffer
    # announced it, and groups of the new size (3, was 4) reached the learner.
    assert [r["learner/stage"] for r in learner] == [0, 0, 0, 1, 1, 1]
    with open(os.path.join(run_dir, "logs", "buffer.jsonl")) as f:
        events = [json.loads(line) for line in f]
    assert any(e["event"] == "stage" and e["index"] == 1 and e["group_size"] == 3 for e in events)
    per_group = [r["learner/samples_per_group_mean"] for r in learner]
    assert per_group[0] == 4 and min(per_group) < 4 and all(3 <= n <= 4 for n in per_group), per_group


def test_training_on_data_files_scores_through_the_verifier_pool(tmp_path):
    """task.kind = "files": problems from jsonl, rewards from math-verify / the code sandbox in the actor's pool."""
    data = os.path.join(ROOT, "tests", "data")
    files = [os.path.join(data, name) for name in ("add_train.jsonl", "math.jsonl", "code.jsonl")]
    heldout = [os.path.join(data, name) for name in ("math.jsonl", "add_heldout.jsonl")]
    steps = 3
    run_dir = run_launcher(tmp_path, "files", "--set", 'task.kind="files"', "--set", f"task.train_files={json.dumps(files)}",
                           "--set", f"task.heldout_files={json.dumps(heldout)}", "--set", "eval.every_steps=1",
                           "--set", "eval.max_problems=16",
                           "--set", "learner.steps=3", "--set", "actors.max_prompt_tokens=192",
                           "--set", "actors.verifier_workers=1", "--set", "buffer.max_staleness=0")
    # eta = 0 makes the actor load (and evaluate) versions 1 and 2 whatever the timing; with eta = 2 a
    # busy machine once let it generate every batch at version 0 and load only version 3 (issue 10).
    summary, learner = check_common(run_dir, 0, steps)
    assert all(0 < r["reward/mean"] < 1 for r in learner)  # rejection sampling keeps groups with signal
    with open(os.path.join(run_dir, "logs", "buffer.jsonl")) as f:
        loaded = [json.loads(line) for line in f if '"training_data"' in line]
    assert loaded and loaded[0]["problems"] + loaded[0]["dropped_long_prompts"] == 612 and loaded[0]["code"] >= 1
    actor = [r for r in metrics(run_dir) if r["role"].startswith("actor") and "actor/verify_s" in r]
    assert actor and all(r["actor/verify_timeouts"] == 0 for r in actor)
    # Evaluation during RL on the held-out files, through the same verifier pool, reported per data source
    # (8 sample math problems + 8 additions); the final version is the after phase's, off here.
    evals = [r for r in metrics(run_dir) if r["role"] == "eval"]
    assert [r["step"] for r in evals] == [1, 2]
    for r in evals:
        by_source = (r["eval/accuracy/sample_math"] + r["eval/accuracy/add2"]) / 2
        assert abs(by_source - r["eval/accuracy"]) < 1e-9 and 0 <= r["eval/greedy_accuracy"] <= 1


def _wait_for_step(run_dir, proc, deadline_s=180):
    deadline = time.monotonic() + deadline_s
    path = os.path.join(run_dir, "metrics.jsonl")
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        if os.path.exists(path) and any(json.loads(l).get("learner/step") for l in open(path) if l.strip()):
            return
        time.sleep(0.5)
    pytest.fail("the run never reached its first learner step")


def test_dead_actor_without_restarts_left_stops_everything_without_orphans(tmp_path):
    run_dir = os.path.join(tmp_path, "crash")
    proc = subprocess.Popen(launch_args(tmp_path, "crash", "--set", "learner.steps=10000",
                                        "--set", "actors.max_restarts=0"), cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_step(run_dir, proc)
        actor = [p for p in children_of(run_dir) if "-m asyncor.actors " in cmdline(p)]
        assert actor
        os.kill(actor[0], signal.SIGKILL)
        killed_at = time.monotonic()
        out, err = proc.communicate(timeout=30)
        assert time.monotonic() - killed_at < 10
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1
    assert "actor0" in err and "exited with code" in err
    time.sleep(0.5)
    assert not children_of(run_dir)


def descendants(root):
    """{pid: start time} of every live process below `root` (ppid links)."""
    live = live_pids()
    found, frontier = {}, {root}
    while frontier:
        frontier = {pid for pid, stat in live.items() if int(stat[1]) in frontier and pid not in found}
        found.update({pid: live[pid][19] for pid in frontier})
    return found


def still_alive(processes):
    """Those of `processes` ({pid: start time}) still running: same pid, same start time, not a zombie."""
    live = live_pids()
    return [pid for pid, start in processes.items() if pid in live and live[pid][19] == start]


def _ignore_sigint():
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@pytest.mark.parametrize("sig, scenario", [
    # Issue 10: a non-interactive shell starts background jobs (`launch.py run &`, CI runners, harnesses)
    # with SIGINT ignored and Python keeps that, so the launcher ignored the signal and this test timed
    # out in communicate() (30 s). Run here with the inherited SIG_IGN and a busy core beside it.
    pytest.param(signal.SIGINT, "sigint_inherited_ignored_busy_core", id="sigint_inherited_ignored_busy_core"),
    # SIGTERM (kill, scancel, a job's time limit) on the files task: the actor's verifier processes
    # must go too.
    pytest.param(signal.SIGTERM, "sigterm_files_task", id="sigterm_files_task"),
])
def test_stop_signal_stops_every_process_within_10s(tmp_path, sig, scenario):
    run_dir = os.path.join(tmp_path, "stop")
    overrides = ["--set", "learner.steps=10000"]
    if scenario == "sigterm_files_task":
        data = os.path.join(ROOT, "tests", "data")
        files = [os.path.join(data, name) for name in ("add_train.jsonl", "math.jsonl", "code.jsonl")]
        overrides += ["--set", 'task.kind="files"', "--set", f"task.train_files={json.dumps(files)}",
                      "--set", "actors.max_prompt_tokens=192", "--set", "actors.verifier_workers=2"]
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if "busy" in scenario else None
    proc = subprocess.Popen(launch_args(tmp_path, "stop", *overrides), cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=_ignore_sigint if "inherited_ignored" in scenario else None)
    try:
        _wait_for_step(run_dir, proc)
        started = descendants(proc.pid)
        if scenario == "sigterm_files_task":
            pool = [p for p in started if "multiprocessing.spawn" in cmdline(p)]
            assert len(pool) >= 2, "the verifier processes should be running"
        proc.send_signal(sig)
        sent_at = time.monotonic()
        # communicate() returns once the launcher exited and nothing holds its stdout / stderr.
        out, err = proc.communicate(timeout=30)
        took = time.monotonic() - sent_at
    finally:
        if busy is not None:
            busy.kill()
            busy.wait()
        if proc.poll() is None:
            proc.kill()
    assert took < 10, took
    assert proc.returncode == 128 + sig, (proc.returncode, err[-2000:])
    assert f"interrupted ({signal.Signals(sig).name})" in err
    assert len(started) >= 3  # buffer, learner, actor (and what they started)
    assert not still_alive(started), [cmdline(p) for p in still_alive(started)]
    assert not children_of(run_dir)
    with open(os.path.join(run_dir, "logs", "actor0.jsonl")) as f:
        actor_events = [json.loads(line)["event"] for line in f]
    assert "stopped" in actor_events  # the actor unwound on SIGTERM instead of waiting for SIGKILL


def test_bad_config_is_refused_before_any_process_starts(tmp_path):
    start = time.monotonic()
    proc = subprocess.run(launch_args(tmp_path, "bad", "--set", "buffer.max_staleness=-3", "--set", "actors.cont=2"),
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "buffer.max_staleness" in proc.stderr and "actors.cont: unknown key" in proc.stderr
    assert not os.path.exists(os.path.join(tmp_path, "bad"))
    assert time.monotonic() - start < 10


def test_a_phase_past_its_configured_deadline_fails_naming_the_key(tmp_path):
    proc = subprocess.run(launch_args(tmp_path, "late", "--set", "eval.before_and_after=true",
                                      "--set", "run.eval_timeout_s=0.5"),
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "eval_before did not finish within 0.5 s (raise run.eval_timeout_s)" in proc.stderr
    assert not children_of(os.path.join(tmp_path, "late"))  # the evaluation's process was stopped


def test_default_path_with_warm_start_and_eval_writes_the_documented_summary(tmp_path):
    """Also evaluation during RL. With learner.lr = 0 every version has the starting weights, so the actor's
    evaluations at versions 1 and 2 (its own engine, weights received by broadcast) must give exactly the
    before / after phases' numbers (a fresh engine on the saved policy): one protocol, one curve."""
    steps = 3
    run_dir = run_launcher(tmp_path, "full", "--set", "eval.before_and_after=true", "--set", "eval.max_problems=16",
                           "--set", f"learner.steps={steps}", "--set", "eval.every_steps=1", "--set", "learner.lr=0",
                           "--set", "buffer.max_staleness=0")
    with open(os.path.join(run_dir, "summary.json")) as f:
        summary = json.load(f)
    for section, keys in {"eval": ["before", "after", "n"], "learner": ["steps", "tokens_per_s", "wait_for_batch_frac"],
                          "actors": ["count", "tokens_per_s"], "staleness": ["max_allowed", "mean", "max", "dropped"],
                          "sync": ["broadcast_s_mean", "load_s_mean"],
                          "filtering": ["solve_all", "solve_none", "online_filtered"]}.items():
        assert set(keys) <= set(summary[section]), section
    assert summary["eval"]["n"] == 16 and 0.0 <= summary["eval"]["before"] <= 1.0 and summary["wall_s"] > 0
    # Where each role's wall time went: named activities plus "other" add up to its wall time.
    learner_time, (actor_time,) = summary["time"]["learner"], summary["time"]["actors"]
    assert {"waiting_for_batch", "training", "broadcasting"} <= set(learner_time)
    assert {"generating", "waiting_for_grant", "evaluating"} <= set(actor_time)
    for t in (learner_time, actor_time):
        assert sum(v for k, v in t.items() if k != "wall") == pytest.approx(t["wall"], rel=1e-6)
        assert all(v >= 0 for v in t.values())
    assert actor_time["evaluating"] > 0 and learner_time["training"] > 0
    curve = summary["eval_curve"]
    assert [p["version"] for p in curve] == [0, 1, 2, steps]  # before, every step in between, after
    assert len({(p["accuracy"], p["greedy_accuracy"], p["pass_at_k"]) for p in curve}) == 1, curve
    assert curve[0]["accuracy"] == summary["eval"]["before"]
    evals = [r for r in metrics(run_dir) if r["role"] == "eval"]
    assert all(r["eval/version"] == r["step"] and r["eval/accuracy/arithmetic"] == r["eval/accuracy"] for r in evals)
    with open(os.path.join(run_dir, "roles", "actor0.json")) as f:
        actor = json.load(f)
    assert actor["evaluated_versions"] == [1, 2] and actor["eval_s"] > 0
    assert actor["time_outbox"]["scoring"] > 0 and actor["time_outbox"]["sending"] > 0  # beside the decode loop
    with open(os.path.join(run_dir, "config.json")) as f:
        resolved = json.load(f)
    assert resolved["model"]["path"] and all(resolved["net"][k] for k in ("buffer_actor_port", "store_port"))
    for role in ("prepare", "eval_before", "buffer", "learner", "actor0", "eval_after"):
        assert os.path.getsize(os.path.join(run_dir, "logs", f"{role}.jsonl")) > 0, role
    assert os.path.exists(os.path.join(run_dir, "final", "model.safetensors"))
