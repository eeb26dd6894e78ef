"""Single packets and flows for datapath tests, run inside a pod's (or any) netns.

    python packets.py sink PORT                  # print "ready", then "SRC PAYLOAD" per datagram
    python packets.py send DST PORT PAYLOAD [--src IP] [--sport PORT] [--mark MARK]
                                                 # one UDP datagram (from IP:PORT, with skb->mark)
    python packets.py churn DST PORT FIRST_SPORT COUNT [CPU]
                                                 # COUNT datagrams, each from its own source port
                                                 # (sent from CPU, when given)
    python packets.py client DST PORT            # one TCP connection; per stdin line, send it
                                                 # and print "ok" when it echoes back, else "fail"
"""
from __future__ import annotations

import os
import select
import socket
import subprocess
import sys
from pathlib import Path

HERE = str(Path(__file__).resolve())


def sink(port: int) -> None:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", port))
    print("ready", flush=True)
    while True:
        data, peer = s.recvfrom(2048)
        print(peer[0], data.decode(errors="replace"), flush=True)


def send(dst: str, port: int, payload: str, src: str | None, mark: int | None, sport: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        if mark is not None:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, mark)
        if src or sport:
            s.bind((src or "0.0.0.0", sport))
        s.sendto(payload.encode(), (dst, port))


def churn(dst: str, port: int, first: int, count: int, cpu: int | None = None) -> None:
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    for sport in range(first, first + count):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("0.0.0.0", sport))
            s.sendto(b"churn", (dst, port))


def client(dst: str, port: int) -> None:
    with socket.create_connection((dst, port), timeout=10) as s:
        print("connected", flush=True)
        for line in sys.stdin:
            data = line.strip().encode()
            try:
                s.sendall(data)
                got = b""
                while len(got) < len(data):
                    chunk = s.recv(4096)
                    if not chunk:
                        break
                    got += chunk
                print("ok" if got == data else "fail", flush=True)
            except OSError:
                print("fail", flush=True)


def main(argv: list[str]) -> None:
    cmd, *rest = argv
    if cmd == "sink":
        sink(int(rest[0]))
    elif cmd == "send":
        opts = dict(zip(rest[3::2], rest[4::2]))
        send(rest[0], int(rest[1]), rest[2], opts.get("--src"),
             int(opts["--mark"], 0) if "--mark" in opts else None, int(opts.get("--sport", 0)))
    elif cmd == "churn":
        churn(rest[0], int(rest[1]), int(rest[2]), int(rest[3]), int(rest[4]) if len(rest) > 4 else None)
    elif cmd == "client":
        client(rest[0], int(rest[1]))
    else:
        raise SystemExit(f"unknown command {cmd}")


# ---- the test side -------------------------------------------------------------------------

def _argv(netns: str | None, *args: str) -> list[str]:
    argv = [sys.executable, HERE, *args]
    return ["nsenter", f"--net={netns}", "--", *argv] if netns else argv


def run(netns: str | None, *args: str) -> None:
    """Run one of the commands above in NETNS (None: here), to completion."""
    subprocess.run(_argv(netns, *args), check=True, capture_output=True, timeout=120)


class Sink:
    """A UDP sink in a netns: next_line() is the next datagram it received, in order."""

    def __init__(self, netns: str, port: int) -> None:
        self.proc = subprocess.Popen(_argv(netns, "sink", str(port)), stdout=subprocess.PIPE)
        self.port = port
        self._buffer = b""
        assert self.next_line() == "ready"

    def next_line(self, patience: float = 60) -> str:
        """The next line the sink printed: "SRC PAYLOAD" per datagram. The caller sends one
        that must come, so a sink silent for PATIENCE seconds fails the test, not hangs it."""
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buffer:
            if not select.select([fd], [], [], patience)[0]:
                raise AssertionError(f"nothing reached the sink on port {self.port} in {patience}s")
            chunk = os.read(fd, 4096)
            if not chunk:
                raise AssertionError(f"the sink on port {self.port} exited")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line.decode().strip()

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


class Client:
    """A long-lived TCP connection from a netns to an echo server."""

    def __init__(self, netns: str, dst: str, port: int) -> None:
        self.proc = subprocess.Popen(_argv(netns, "client", dst, str(port)), stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline().strip() == "connected"

    def echo(self, text: str) -> bool:
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline().strip() == "ok"

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


if __name__ == "__main__":
    main(sys.argv[1:])
