"""The sandbox's first process inside its namespaces (tasks/code_sandbox.py starts it as root under
`unshare --pid --mount --net --ipc --uts`). It builds the jail, drops every privilege, and execs the command.

The jail is a tmpfs (`disk_bytes` in all) mounted over /tmp of the private mount namespace. Its contents:
  /usr /lib* /bin /sbin  the host's, bind-mounted read-only, nosuid, nodev (the interpreter and its libraries)
  /dev/{null,zero,random,urandom}  bind-mounted devices, nothing else of /dev
  /work                  the run's files (read from an inherited descriptor, never from a host path), cwd
  /etc, /tmp             empty
No /proc, no host /etc, /tmp, /dev/shm, /run or home: other processes' command lines, host files and
datasets, and Unix sockets on the host are not there. Abstract Unix sockets and the network belong to the
new network namespace, which is empty.

Then: supplementary groups dropped, gid and uid set to the sandbox's leased private uid, no_new_privs (set-uid
binaries stay unprivileged), rlimits, and a parent-death signal. Last, just before the program is executed,
the seccomp filter (compiled by libseccomp in the worker, tasks/code_sandbox.py `seccomp_filter`; here only
loaded): every step above that needs a refused call (mount, chroot, ...) is done by then, and the program
and all it starts inherit the filter, which cannot be removed.

The kernel's key store: add_key, request_key and keyctl are refused outright, so no keyring is reachable from
the jail, neither the session keyring this process inherited from the pool (under systemd or runc, a root
session keyring) nor the user keyring of the sandbox uid, which outlives a run. That is why no fresh session
keyring is joined here: with those three calls refused it could not be used either, and nothing else in the
jail (no /proc, so no /proc/keys) reads keys.

Every file this code needs is the Python standard library; it runs with `python3 -I -S`. Settings arrive as
JSON in ASYNCOR_SANDBOX; the run's files and the filter arrive on a pipe (`setup_fd`), never from a host path.
"""

import ctypes
import json
import os
import resource
import signal
import sys

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 1, 2, 4, 32, 4096, 16384, 1 << 18
PR_SET_PDEATHSIG, PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 1, 38, 22, 2
HOST_DIRS = ("usr", "lib", "lib64", "lib32", "libx32", "bin", "sbin")
DEVICES = ("null", "zero", "random", "urandom")
libc = ctypes.CDLL(None, use_errno=True)


def mount(source, target, fstype, flags, data=None):
    enc = (lambda s: s.encode() if s is not None else None)
    if libc.mount(enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {source} -> {target}: {os.strerror(err)}")


def bind_read_only(source, target):
    mount(source, target, None, MS_BIND | MS_REC)
    mount(None, target, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)


def build_jail(settings, files):
    mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing below propagates to the host
    jail = "/tmp"
    mount("tmpfs", jail, "tmpfs", MS_NOSUID | MS_NODEV, f"size={settings['disk_bytes']},mode=0755")
    for name in HOST_DIRS:
        host = "/" + name
        if os.path.islink(host):
            os.symlink(os.readlink(host), os.path.join(jail, name))
        elif os.path.isdir(host):
            os.mkdir(os.path.join(jail, name))
            bind_read_only(host, os.path.join(jail, name))
    os.mkdir(os.path.join(jail, "dev"))
    for name in DEVICES:
        target = os.path.join(jail, "dev", name)
        open(target, "w").close()
        mount("/dev/" + name, target, None, MS_BIND)
    os.mkdir(os.path.join(jail, "etc"))
    os.mkdir(os.path.join(jail, "tmp"))
    os.chmod(os.path.join(jail, "tmp"), 0o1777)
    work = os.path.join(jail, "work")
    os.mkdir(work, 0o700)
    uid = settings["uid"]
    for name, text in files.items():
        path = os.path.join(work, name)
        with open(path, "w") as f:
            f.write(text)
        os.chown(path, uid, uid)
    os.chown(work, uid, uid)
    os.chown(os.path.join(jail, "tmp"), uid, uid)
    os.chdir(jail)
    os.chroot(".")
    os.chdir("/work")


def drop_privileges(settings):
    uid = settings["uid"]
    os.setgroups([])
    os.setgid(uid)
    os.setuid(uid)
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # cleared by the uid change: set again
    limits = settings["limits"]
    for name, value in limits.items():
        resource.setrlimit(getattr(resource, name), (value, value if name != "RLIMIT_CPU" else value + 1))


class SockFprog(ctypes.Structure):
    """struct sock_fprog: a BPF program for PR_SET_SECCOMP."""
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_char_p)]


def install_seccomp(bpf):
    """Load the filter (raw BPF, 8 bytes an instruction) on this process; inherited across exec and fork."""
    if not bpf or len(bpf) % 8 or len(bpf) // 8 > 4096:
        raise ValueError(f"seccomp filter: {len(bpf)} bytes is not a BPF program of 1 to 4096 instructions")
    program = SockFprog(len(bpf) // 8, bpf)
    if libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(program), 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_SECCOMP)")


def main():
    settings = json.loads(os.environ["ASYNCOR_SANDBOX"])
    with os.fdopen(settings["setup_fd"], "rb") as f:  # a pipe, read and closed: no host path
        setup = json.loads(f.read().decode())
    build_jail(settings, setup["files"])
    drop_privileges(settings)
    install_seccomp(bytes.fromhex(setup["seccomp"]))
    argv = settings["argv"]
    os.execve(argv[0], argv, settings["env"])


if __name__ == "__main__":
    try:
        main()
    except BaseException as exc:  # reported on stderr (the run's .stderr), exit 125 like `env`
        print(f"sandbox setup failed: {exc!r}", file=sys.stderr, flush=True)
        os._exit(125)
