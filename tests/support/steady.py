"""Steady traffic from inside one pod, as Cilium's no-interrupted-connections check keeps it:
long-lived TCP echo connections, a 50 pps ping and a loop of connections to a denied port,
all running until told to stop. Run in the client pod's netns:

    python steady.py IP ECHO_PORT DENIED_PORT [CONNECTIONS]

Prints "ready" once every connection is up, then reads commands on stdin: "snapshot" prints
the counts so far as one JSON line; "stop" (or end of input) prints the final counts and
exits. Counts: connections (long-lived, never reopened), broken (a write missed its 1 s
deadline, a reply its 5 s timeout, or the peer closed or answered wrong), exchanges (echo
round trips), pings_sent / pings_received / pings_lost (the ICMP echo sequence numbers that
never came back; the ones still in flight are not counted), denied_tries / denied_ok (TCP
connects to the denied port that were answered: must stay 0)."""
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time

WRITE_DEADLINE = 1.0
REPLY_TIMEOUT = 5.0
INTERVAL = 0.05         # between a connection's exchanges
PING_INTERVAL = "0.02"  # 50 packets a second
DENIED_TIMEOUT = 1.0
IN_FLIGHT = 1.0         # seconds: a ping younger than this is not yet lost


class Counts:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.broken: list[str] = []
        self.exchanges = 0
        self.denied_tries = 0
        self.denied_ok = 0


class Echo(threading.Thread):
    """One long-lived connection, exchanging a line every INTERVAL until it breaks."""

    def __init__(self, n: int, ip: str, port: int, counts: Counts, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.n, self.counts, self.stop = n, counts, stop
        self.sock = socket.create_connection((ip, port), timeout=REPLY_TIMEOUT)

    def run(self) -> None:
        seq = 0
        try:
            while not self.stop.is_set():
                seq += 1
                line = f"{self.n}:{seq}\n".encode()
                self.sock.settimeout(WRITE_DEADLINE)
                self.sock.sendall(line)
                self.sock.settimeout(REPLY_TIMEOUT)
                got = b""
                while not got.endswith(b"\n"):
                    chunk = self.sock.recv(64)
                    if not chunk:
                        raise ConnectionError("closed by the peer")
                    got += chunk
                if got != line:
                    raise ConnectionError(f"wrong reply {got!r} to {line!r}")
                with self.counts.lock:
                    self.counts.exchanges += 1
                self.stop.wait(INTERVAL)
        except (OSError, ConnectionError) as exc:
            with self.counts.lock:
                self.counts.broken.append(f"connection {self.n} at exchange {seq}: {exc}")


class Pinger:
    """ping -i 0.02 -O: each request's fate is known as it happens ("no answer yet" lines
    name the ones sent so far without a reply)."""

    def __init__(self, ip: str) -> None:
        self.proc = subprocess.Popen(["ping", "-n", "-O", "-i", PING_INTERVAL, ip], stdout=subprocess.PIPE,
                                     text=True)
        self.replies: set[int] = set()
        self.highest = 0
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            m = re.search(r"icmp_seq=(\d+)", line)
            if m:
                seq = int(m.group(1))
                self.highest = max(self.highest, seq)
                if "no answer" not in line:
                    self.replies.add(seq)

    def counts(self) -> dict:
        """Requests sent at least IN_FLIGHT seconds before the last one, and their replies."""
        replies = set(self.replies)
        sent = max(self.highest - int(IN_FLIGHT / float(PING_INTERVAL)), 0)
        lost = [s for s in range(1, sent + 1) if s not in replies]
        return {"pings_sent": sent, "pings_received": sent - len(lost), "pings_lost": len(lost),
                "pings_lost_seq": lost[:20]}

    def stop(self) -> dict:
        """The final counts: every request sent so far, given IN_FLIGHT seconds (twice) to
        come back; then ping stops."""
        sent = self.highest
        time.sleep(2 * IN_FLIGHT)
        replies = set(self.replies)
        self.proc.terminate()
        self.proc.wait()
        lost = [s for s in range(1, sent + 1) if s not in replies]
        return {"pings_sent": sent, "pings_received": sent - len(lost), "pings_lost": len(lost),
                "pings_lost_seq": lost[:20]}


def denied_loop(ip: str, port: int, counts: Counts, stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            with socket.create_connection((ip, port), timeout=DENIED_TIMEOUT):
                ok = True
        except OSError:
            ok = False
        with counts.lock:
            counts.denied_tries += 1
            counts.denied_ok += ok
        if not ok:
            continue
        stop.wait(0.1)


def snapshot(counts: Counts, echoes: list[Echo], pinger: Pinger) -> dict:
    with counts.lock:
        return {"connections": len(echoes), "broken": len(counts.broken), "broken_detail": list(counts.broken),
                "exchanges": counts.exchanges, "denied_tries": counts.denied_tries,
                "denied_ok": counts.denied_ok, **pinger.counts()}


def main(ip: str, port: int, denied: int, connections: int) -> None:
    counts, stop = Counts(), threading.Event()
    echoes = [Echo(n, ip, port, counts, stop) for n in range(connections)]
    for echo in echoes:
        echo.start()
    pinger = Pinger(ip)
    threading.Thread(target=denied_loop, args=(ip, denied, counts, stop), daemon=True).start()
    print("ready", flush=True)
    for line in sys.stdin:
        if line.strip() != "snapshot":
            break
        print(json.dumps(snapshot(counts, echoes, pinger)), flush=True)
    result = snapshot(counts, echoes, pinger)
    stop.set()
    result.update(pinger.stop())
    print(json.dumps(result), flush=True)
    os._exit(0)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]) if len(sys.argv) > 4 else 5)
