"""A connected socket under one deadline, for `http.client` (tasks/http_env.py, tasks/remote_reward.py).

A socket timeout bounds each read, not their sum: a server that trickles a byte at a time could hold a request
forever. Wrapped here, every send and read gets only what is left of the request's deadline, and past it raises
TimeoutError. Install it as `conn.sock` of an `http.client.HTTPConnection` after connecting; the caller closes
the real socket once the answer is read (`close` here does nothing: http.client closes its socket before the
response is read when the server says Connection: close).
"""

from __future__ import annotations

import io
import time


class DeadlineReader(io.RawIOBase):
    """A socket's reads, each bounded by what is left of one deadline."""

    def __init__(self, sock, deadline: float):
        self.sock, self.deadline = sock, deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("HTTP request deadline")
        self.sock.settimeout(left)
        return self.sock.recv_into(buf)


class DeadlineSocket:
    """What http.client uses of a connected socket (sendall, makefile, close), under one deadline."""

    def __init__(self, sock, deadline: float):
        self.sock, self.deadline = sock, deadline

    def sendall(self, data) -> None:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("HTTP request deadline")
        self.sock.settimeout(left)
        self.sock.sendall(data)

    def makefile(self, mode="rb", *args, **kwargs):
        return io.BufferedReader(DeadlineReader(self.sock, self.deadline))

    def close(self) -> None:
        pass  # the caller closes the real socket once the answer is read
