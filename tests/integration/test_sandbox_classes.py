"""The code sandbox against the attack classes of issue 14 item 12 and issue 26 items 13-16. Each was found with
hostile programs that the older sandbox let score 1 for wrong code, or let reach outside. Real jailed processes
(root only: that is how verifier workers run in CI and on clusters)."""

import errno
import json
import os
import socket
import subprocess
import sys
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
    listing = run("import glob\nprint(''.join(open(f).read() for f in glob.glob('*')))").stdout.decode()
    assert "assert add" not in listing


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
              f"        signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
              f"        signal.signal(signal.SIGHUP, signal.SIG_IGN)\n"
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
               f"            f.write(b'x' * (512 << 10))\n        total += 512 << 10\n"
               f"    except OSError:\n        break\n"
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


# Issue 26, items 13-16: attack classes the jail of issue 14 left open. Each hostile program below worked there.

KEY_SYSCALLS = {"x86_64": (248, 249, 250), "aarch64": (217, 218, 219)}  # add_key, request_key, keyctl
KEYS = KEY_SYSCALLS.get(os.uname().machine)
KEY_HELPERS = (f"import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\nlibc.syscall.restype = ctypes.c_long\n"
               f"ADD_KEY, REQUEST_KEY, KEYCTL = {KEYS}\nUSER, SESSION = ctypes.c_long(-4), ctypes.c_long(-3)\n"
               "def read_key(keyring, name):\n"
               "    serial = libc.syscall(KEYCTL, 10, keyring, b'user', name, 0)  # KEYCTL_SEARCH\n"
               "    if serial < 0:\n        return 'refused %d' % ctypes.get_errno()\n"
               "    buf = ctypes.create_string_buffer(64)\n"
               "    n = libc.syscall(KEYCTL, 11, ctypes.c_long(serial), buf, 64)  # KEYCTL_READ\n"
               "    return buf.raw[:n].decode() if n >= 0 else 'refused %d' % ctypes.get_errno()\n")


@pytest.mark.skipif(KEYS is None, reason="key system call numbers known for x86_64 and aarch64 only")
def test_a_key_stored_by_one_run_is_not_read_by_the_next():
    """Item 13: a key stored in the user keyring of a slot's uid was read by a later run on that uid (another
    pool's too: the same slot uids). The key system calls are refused now."""
    name = f"asyncor-key-{os.getpid()}"
    store = KEY_HELPERS + (f"n = libc.syscall(ADD_KEY, b'user', {name.encode()!r}, b'stored-by-run-1', 15, USER)\n"
                           "print('stored' if n > 0 else 'refused %d' % ctypes.get_errno())")
    steal = KEY_HELPERS + f"print(read_key(USER, {name.encode()!r}))"
    first, second = Sandbox(11, LIMITS), Sandbox(11, LIMITS)  # two pools' workers in the same slot
    assert run_in(first, store).stdout.decode().split() == ["refused", str(errno.EPERM)]
    for box in (first, second):
        assert run_in(box, steal).stdout.decode().split() == ["refused", str(errno.EPERM)]


@pytest.mark.skipif(KEYS is None, reason="key system call numbers known for x86_64 and aarch64 only")
def test_the_pools_session_keyring_is_out_of_reach():
    """Item 13: a pool started inside a session keyring holding root's key (systemd services, runc containers):
    its jailed runs inherited that keyring, and possession let them read root's key."""
    name = f"asyncor-key-{os.getpid()}"
    secret = f"root-secret-{os.getpid()}"
    pool = (KEY_HELPERS + "import sys\nfrom asyncor.tasks.code_sandbox import Sandbox, Limits\n"
            "assert libc.syscall(KEYCTL, 1, None) > 0  # KEYCTL_JOIN_SESSION_KEYRING: a fresh one\n"
            f"assert libc.syscall(ADD_KEY, b'user', {name.encode()!r}, {secret.encode()!r}, {len(secret)},"
            f" SESSION) > 0\n"
            f"assert read_key(SESSION, {name.encode()!r}) == {secret!r}\n"
            f"program = {KEY_HELPERS + f'print(read_key(SESSION, {name.encode()!r}))'!r}\n"
            "r = Sandbox(12, Limits(wall_s=4.0)).run(['/usr/bin/python3', '-I', 'p.py'], {'p.py': program})\n"
            "print(r.stdout.decode(), r.stderr.decode()[-500:])")
    out = subprocess.run([sys.executable, "-c", pool], capture_output=True, text=True, timeout=60,
                         cwd=Path(__file__).resolve().parents[2])
    assert out.returncode == 0, out.stderr[-2000:]
    assert secret not in out.stdout and out.stdout.split()[:2] == ["refused", str(errno.EPERM)], out.stdout


def run_in(box: Sandbox, code: str):
    return box.run(["/usr/bin/python3", "-I", "p.py"], {"p.py": code})


def test_stdio_are_pipes_not_files_on_the_host_disk():
    """Item 14: stdin, stdout and stderr were the worker's files on the host disk, open read-write: an fallocate
    through them (FALLOC_FL_KEEP_SIZE, which no file size limit checks) reserved host disk, past every cap."""
    program = ("import ctypes, json, os, stat\nlibc = ctypes.CDLL(None, use_errno=True)\nreport = {}\n"
               "for fd in (0, 1, 2):\n"
               "    rc = libc.fallocate(fd, 1, ctypes.c_long(0), ctypes.c_long(64 << 20))  # FALLOC_FL_KEEP_SIZE\n"
               "    try:\n        os.ftruncate(fd, 1 << 20)\n        truncated = True\n"
               "    except OSError:\n        truncated = False\n"
               "    info = os.fstat(fd)\n"
               "    report[fd] = [rc, truncated, info.st_blocks * 512, stat.S_ISFIFO(info.st_mode)]\n"
               "os.write(int(os.environ['ASYNCOR_RESULT_FD']), json.dumps(report).encode())")
    r = run(program)
    report = json.loads(r.channel)
    assert report == {str(fd): [-1, False, 0, True] for fd in (0, 1, 2)}, report
    # The output cap still holds, read from the pipe: the run stops at once, the first output_bytes kept.
    start = time.monotonic()
    r = run("import sys\nwhile True:\n    sys.stdout.write('x' * 65536)")
    assert r.output_exceeded and not r.ok and r.stdout == b"x" * LIMITS.output_bytes
    assert time.monotonic() - start < LIMITS.wall_s


def sandbox_uid_processes(uid: int) -> int:
    count = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            count += os.stat(f"/proc/{pid}").st_uid == uid
        except OSError:
            pass
    return count


def test_no_two_sandboxes_on_the_host_share_a_uid():
    """Item 15: uids were 61000 + slot, the same in every pool. Now each Sandbox leases its own, host-wide."""
    here = [Sandbox(0, LIMITS) for _ in range(3)]
    code = "from asyncor.tasks.code_sandbox import Sandbox\nprint(Sandbox(0).uid)"
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                           cwd=Path(__file__).resolve().parents[2])
    uids = {box.uid for box in here} | {int(other.stdout)}
    assert len(uids) == 4, uids
    for box in here:
        box.close()


def test_process_limit_is_per_run_not_shared_with_another_pool():
    """Item 15: the process limit counted every process of the slot's uid on the host, and two pools' workers
    in the same slot shared that uid: while one run held 13 children, an honest threaded program scored 0."""
    children = LIMITS.processes - 3  # its run's cgroup also counts `unshare`: all it allows is 16 in all
    hog = (f"import os, time\nfor _ in range({children}):\n    if os.fork() == 0:\n        time.sleep(3)\n"
           f"        os._exit(0)\ntime.sleep(3)")
    honest = ("import threading\nmeet = threading.Barrier(8, timeout=2)  # 8 threads alive at once\n"
              "threads = [threading.Thread(target=meet.wait) for _ in range(8)]\n"
              "for t in threads:\n    t.start()\nfor t in threads:\n    t.join()\nprint('ok')")
    first, second = Sandbox(13, LIMITS), Sandbox(13, LIMITS)  # two pools' workers in the same slot
    holder = threading.Thread(target=run_in, args=(first, hog))
    holder.start()
    try:
        deadline = time.monotonic() + 3
        while sandbox_uid_processes(first.uid) < children + 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sandbox_uid_processes(first.uid) >= children + 1  # the hog holds its processes
        r = run_in(second, honest)
        assert r.stdout == b"ok\n", r
    finally:
        holder.join()
    assert code_reward(fenced(honest.replace("print('ok')", "def add(a, b):\n    return a + b")), ADD_TESTS,
                       second, total_s=10.0) == 1.0


FORGERS = {
    # Reads what the harness receives on its own pipe and answers for it: the nonce, or "all true".
    "answers on the harness's pipe": (
        "import json, os\nout, inp = int(os.environ['ASYNCOR_RESULT_FD']), int(os.environ['ASYNCOR_FOLLOWUP_FD'])\n"
        "os.write(out, b'R')\ndata = b''.join(iter(lambda: os.read(inp, 65536), b''))\nspec = json.loads(data)\n"
        "if isinstance(spec, dict) and 'nonce' in spec:\n    os.write(out, ('P' + spec['nonce']).encode())\n"
        "else:\n    os.write(out, json.dumps([{'done': True, 'v': True} for _ in spec]).encode())\nos._exit(0)\n"),
    "patches builtins.exec and eval": (
        "import builtins\nbuiltins.exec = lambda *a, **k: None\nbuiltins.eval = lambda *a, **k: True\n"),
    "patches the harness's own references": (
        "import sys\nharness = sys.modules['__main__']\nfor name in ('_exec', 'exec'):\n"
        "    setattr(harness, name, lambda *a, **k: None)\nfor name in ('_eval', 'eval'):\n"
        "    setattr(harness, name, lambda *a, **k: True)\n"),
    "returns an object equal to everything": (
        "class Yes:\n    def __eq__(self, other):\n        return True\n    __hash__ = None\n"
        "    def __bool__(self):\n        return True\n"
        "def add(a, b):\n    return Yes()\ndef is_palindrome(s):\n    return Yes()\n"),
}
PALINDROME = {"import_prefix": "import re", "test_code": "assert is_palindrome('abba')\n"
                                                         "assert not is_palindrome('abc')\nassert is_palindrome('')"}


@pytest.mark.parametrize("forger", list(FORGERS))
def test_assert_tests_cannot_be_forged_from_inside(forger):
    """Item 16: wrong code scored 1 on assert-style tests by answering the harness's pipe itself, or by patching
    `exec`. Now the sandbox only computes values (`add(2, 3)`), judged here against what never enters it."""
    wrong = "\ndef add(a, b):\n    return a - b\ndef is_palindrome(s):\n    return False\n"
    code = wrong + FORGERS[forger] if "Yes" not in FORGERS[forger] else FORGERS[forger]
    assert reward(code, ADD_TESTS) == 0.0
    assert reward(code, PALINDROME) == 0.0
    right = "def add(a, b):\n    return a + b\ndef is_palindrome(s):\n    return s == s[::-1]\n"
    assert reward(right, ADD_TESTS) == 1.0 and reward(right, PALINDROME) == 1.0


def test_privileged_system_calls_are_refused():
    """Item 13: the jail filtered no system calls. A user namespace (and with it capabilities over new mounts),
    tracing, other processes' memory and the like are refused now (EPERM); threads, fork and exec still work."""
    program = ("import ctypes, json, os, subprocess, threading\nlibc = ctypes.CDLL(None, use_errno=True)\n"
               "def errno_of(rc):\n    return ctypes.get_errno() if rc == -1 else 0\n"
               "calls = {'unshare a user namespace': lambda: libc.unshare(0x10000000),\n"
               "         'setns': lambda: libc.setns(0, 0),\n"
               "         'ptrace': lambda: libc.ptrace(0, 0, None, None),\n"
               "         'process_vm_readv': lambda: libc.process_vm_readv(os.getpid(), None, 0, None, 0, 0),\n"
               "         'personality': lambda: libc.personality(0xffffffff)}\n"
               "report = {name: errno_of(call()) for name, call in calls.items()}\n"
               "t = threading.Thread(target=print, args=('thread',))\nt.start()\nt.join()\n"
               "pid = os.fork()\nif pid == 0:\n    os._exit(7)\nreport['fork'] = os.waitpid(pid, 0)[1] >> 8\n"
               "report['exec'] = subprocess.run(['/usr/bin/python3', '-c', 'print(5)'], capture_output=True).stdout\n"
               "print(json.dumps(report, default=bytes.decode))")
    r = run(program)
    lines = r.stdout.decode().splitlines()
    assert lines[0] == "thread", r
    report = json.loads(lines[1])
    assert report == {"unshare a user namespace": errno.EPERM, "setns": errno.EPERM, "ptrace": errno.EPERM,
                      "process_vm_readv": errno.EPERM, "personality": errno.EPERM, "fork": 7, "exec": "5\n"}, report


def test_a_missing_seccomp_library_is_a_clear_error_not_a_weaker_jail():
    """Without pyseccomp (or libseccomp) a root host would build the jail with no filter: the pool refuses to
    start instead, saying what to install."""
    code = ("import sys\nsys.modules['pyseccomp'] = None  # as if not installed\n"
            "from asyncor.tasks.verifier_pool import VerifierPool\ntry:\n    VerifierPool().close()\n"
            "except RuntimeError as error:\n    print(error)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         cwd=Path(__file__).resolve().parents[2])
    assert "libseccomp" in out.stdout and "pip install pyseccomp" in out.stdout, out.stdout + out.stderr[-2000:]
