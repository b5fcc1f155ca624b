"""The code sandbox against the attack classes of issue 14 item 12. Each was found with hostile programs that
the older sandbox let score 1 for wrong code, or let reach outside. Real jailed processes (root only: that
is how verifier workers run in CI and on clusters)."""

import json
import os
import socket
import threading
import time
from pathlib import Path

import pytest

from asyncor.tasks.code_reward import code_reward
from asyncor.tasks.code_sandbox import Limits, Sandbox, jail_available

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not jail_available(), reason="the jail needs root and Linux namespaces")]
DATA = Path(__file__).resolve().parents[1] / "data"
LIMITS = Limits(wall_s=4.0, cpu_s=3, memory_bytes=512 << 20, output_bytes=1 << 20, disk_bytes=4 << 20)
ADD_TESTS = {"test_code": "assert add(2, 3) == 5\nassert add(-1, 1) == 0\n"}


def fenced(code: str) -> str:
    return f"```python\n{code}\n```"


def reward(code: str, tests: dict, slot: int = 5) -> float:
    return code_reward(fenced(code), tests, Sandbox(slot, LIMITS), total_s=10.0)


def run(code: str, stdin: bytes = b"", slot: int = 6):
    return Sandbox(slot, LIMITS).run(["/usr/bin/python3", "-I", "p.py"], {"p.py": code}, stdin)


def test_assert_tests_need_the_tests_to_run_not_an_exit_status():
    assert reward("def add(a, b):\n    return a + b", ADD_TESTS) == 1.0
    assert reward("def add(a, b):\n    return a - b", ADD_TESTS) == 0.0
    # Exiting 0 before the tests run used to pass: exit status was the whole verdict.
    assert reward("import sys\nsys.exit(0)", ADD_TESTS) == 0.0
    assert reward("import os\nos._exit(0)", ADD_TESTS) == 0.0
    # The tests were in the program's own file; now they reach the harness only after the program ran.
    peek = ("import glob, os\nsrc = ''.join(open(f).read() for f in glob.glob('/work/*') + glob.glob('*'))\n"
            "if 'assert add' in src:\n    os._exit(0)\nraise SystemExit(3)")
    assert reward(peek, ADD_TESTS) == 0.0
    assert "assert add" not in run("import glob\nprint(''.join(open(f).read() for f in glob.glob('*')))").stdout.decode()


def test_problem_data_and_expected_outputs_are_not_reachable():
    row = next(json.loads(line) for line in (DATA / "code.jsonl").read_text().splitlines()
               if "inputs" in json.loads(line)["tests"] and "fn_name" not in json.loads(line)["tests"])
    tests = {"inputs": row["tests"]["inputs"][:1], "outputs": row["tests"]["outputs"][:1]}
    # Copy the expected output out of the dataset file by its host path: 1.0 in the older sandbox.
    cheat = (f"import json, sys\nrows = [json.loads(l) for l in open({str(DATA / 'code.jsonl')!r})]\n"
             f"stdin = sys.stdin.read()\nfor r in rows:\n    t = r['tests']\n"
             f"    if stdin in t.get('inputs', []):\n        print(t['outputs'][t['inputs'].index(stdin)])")
    assert reward(cheat, tests) == 0.0
    listing = run("import os\nfor d in ('/', '/work', '/tmp', '/etc'):\n    print(d, sorted(os.listdir(d)))").stdout
    assert b"main" not in listing and b"root" not in listing and b"data" not in listing
    assert run(f"open({str(DATA / 'code.jsonl')!r})").returncode != 0


def test_results_come_back_on_a_pipe_not_by_path():
    call = {"fn_name": "f", "inputs": [[1]], "outputs": [41]}
    assert reward("def f(x):\n    return 41", call) == 1.0
    # Writing the expected result file and leaving used to pass: the worker read result.json by path.
    assert reward("open('result.json', 'w').write('41')\nimport os\nos._exit(0)", call) == 0.0
    # A FIFO (or a symlink to a root-only file) where the worker reads: nothing is read by path any more.
    start = time.monotonic()
    assert reward("import os\nos.mkfifo('result.json')\nos.mkfifo('.stdout')\nos._exit(0)", call) == 0.0
    assert time.monotonic() - start < LIMITS.wall_s
    # stdout is read through the worker's own descriptor: replacing a path changes nothing.
    r = run("import os\nprint('real')\nfor p in ('.stdout', '/work/.stdout'):\n"
            "    try:\n        os.symlink('/etc/shadow', p)\n    except OSError:\n        pass")
    assert r.stdout == b"real\n"


def processes_named(name: str) -> list[int]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if name.encode() in f.read():
                    found.append(int(pid))
        except OSError:
            pass
    return found


def test_nothing_outlives_its_run_and_set_uid_gains_nothing():
    marker = f"asyncor-daemon-{os.getpid()}"
    daemon = (f"import os, signal, sys, time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
              f"        signal.signal(signal.SIGTERM, signal.SIG_IGN)\n        signal.signal(signal.SIGHUP, signal.SIG_IGN)\n"
              f"        os.execv(sys.executable, [sys.executable, '-c', 'import time; time.sleep(60)', {marker!r}])\n"
              f"    os._exit(0)\ntime.sleep(0.3)\n"
              # set-uid root binaries run without privileges (no_new_privs, nosuid mounts)
              f"import subprocess\nr = subprocess.run(['/usr/bin/su', '-c', 'id -u'], capture_output=True)\n"
              f"print('su', r.returncode)")
    r = run(daemon)
    assert r.returncode == 0 and b"su 0" not in r.stdout, r
    time.sleep(0.2)
    assert processes_named(marker) == []
    # The slot's process allowance is whole for the next run.
    forks = "import os\npids = [os.fork() or os._exit(0) for _ in range(8)]\nprint('ok')"
    assert run(forks).stdout == b"ok\n"


def test_files_written_anywhere_vanish_and_count_against_one_cap():
    name = f"asyncor-sandbox-test-{os.getpid()}"
    program = (f"import os\nfor d in ('/tmp', '/dev/shm', '/work'):\n    try:\n"
               f"        open(os.path.join(d, {name!r}), 'w').write('x')\n        print('wrote', d)\n"
               f"    except OSError as e:\n        print('refused', d)\n"
               f"total = 0\nfor i in range(40):\n    try:\n        with open(f'/tmp/f{{i}}', 'wb') as f:\n"
               f"            f.write(b'x' * (512 << 10))\n        total += 512 << 10\n    except OSError:\n        break\n"
               f"print('total', total)")
    before = set(os.listdir("/tmp"))
    r = run(program)
    out = r.stdout.decode()
    total = int(out.split("total ")[1])
    assert total <= LIMITS.disk_bytes, out  # 40 files of 512 KiB, each under the per-file limit: capped at 4 MiB
    assert not os.path.exists(f"/tmp/{name}") and not os.path.exists(f"/dev/shm/{name}")
    assert set(os.listdir("/tmp")) - before == set()  # no work directory on the host at all


def test_memory_is_capped_for_all_of_a_runs_processes():
    from asyncor.tasks.code_sandbox import RunCgroup

    probe = RunCgroup(f"asyncor-sandbox-probe-{os.getpid()}", LIMITS)
    has_cgroup = bool(probe.dirs)
    probe.remove()
    if not has_cgroup:
        pytest.skip("no writable memory cgroup here: the limit is per process (RLIMIT_AS)")
    # Six processes of 200 MB each: 1.2 GB against a 512 MB limit for the run.
    program = ("import os\nkids = []\nfor i in range(6):\n    pid = os.fork()\n    if pid == 0:\n"
               "        x = b'y' * (200 << 20)\n        import time; time.sleep(1.0)\n        os._exit(0)\n"
               "    kids.append(pid)\nok = sum(os.waitpid(p, 0)[1] == 0 for p in kids)\nprint('alive', ok)")
    r = run(program)
    alive = int(r.stdout.decode().split("alive ")[1]) if b"alive" in r.stdout else 0
    assert alive <= 2, r  # 512 MB / 200 MB


def test_other_processes_and_host_unix_sockets_are_out_of_reach(tmp_path):
    path = str(tmp_path / "world.sock")
    server = socket.socket(socket.AF_UNIX)
    server.bind(path)
    os.chmod(path, 0o777)
    os.chmod(tmp_path, 0o755)
    abstract = socket.socket(socket.AF_UNIX)
    abstract.bind(f"\0asyncor-test-{os.getpid()}")
    for s in (server, abstract):
        s.listen(4)
    accepted = []
    for s in (server, abstract):
        threading.Thread(target=lambda s=s: accepted.append(s.accept()), daemon=True).start()
    program = (f"import _socket, os\nfor target in ({path!r}, '\\0asyncor-test-{os.getpid()}'):\n"
               f"    s = _socket.socket(_socket.AF_UNIX)\n    try:\n        s.connect(target)\n"
               f"        print('connected')\n    except OSError:\n        print('refused')\n"
               f"try:\n    print(len(os.listdir('/proc')))\nexcept OSError:\n    print('no /proc')")
    try:
        r = run(program)
        assert r.stdout.decode().split() == ["refused", "refused", "no", "/proc"], r
        assert not accepted
    finally:
        server.close()
        abstract.close()
