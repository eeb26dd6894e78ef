"""Probe from inside one pod; print the results as JSON.

    python prober.py TARGETS_JSON              # [[proto, ip, port], ...] -> {"proto ip port": ok}
    python prober.py loop SECONDS TARGETS_JSON # probe each target over and over, in parallel,
                                               # until SECONDS pass -> {"proto ip port": [ok, fail]}

A loop opens at most PACE connections a second to each target. Each closed client socket sits
in TIME_WAIT for 60 s and holds its source port, and a netns has 28,232 ephemeral ports: an
unpaced loop runs out of them in well under a minute, and every connect after that fails here,
in the prober, not on the network. A local error such as that one ends the prober with exit
status 2 instead of being counted as a failed probe.
"""
import errno
import json
import socket
import sys
import time
from concurrent.futures import ThreadPoolExecutor

TIMEOUT = 1.0
PAYLOAD = b"capillary-probe"
PACE = 200
LOCAL_ERRORS = {errno.EADDRNOTAVAIL, errno.EADDRINUSE, errno.EMFILE, errno.ENFILE, errno.ENOBUFS}


class LocalError(Exception):
    """The prober itself could not try: not a verdict about the network."""


def probe(proto: str, ip: str, port: int) -> bool:
    try:
        if proto == "tcp":
            with socket.create_connection((ip, port), timeout=TIMEOUT) as s:
                s.sendall(PAYLOAD)
                return s.recv(64) == PAYLOAD
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(TIMEOUT)
            for _ in range(2):
                s.sendto(PAYLOAD, (ip, port))
                try:
                    return s.recvfrom(64)[0] == PAYLOAD
                except socket.timeout:
                    continue
            return False
    except OSError as e:
        if e.errno in LOCAL_ERRORS:
            raise LocalError(f"{proto} {ip}:{port}: {e}") from e
        return False


def loop(seconds: float, targets: list) -> dict:
    deadline = time.monotonic() + seconds
    counts = {f"{p} {ip} {port}": [0, 0] for p, ip, port in targets}

    def run(target):
        key = "{} {} {}".format(*target)
        next_at = time.monotonic()
        while next_at < deadline:
            time.sleep(max(0.0, next_at - time.monotonic()))
            next_at = max(next_at + 1 / PACE, time.monotonic() - 1)
            counts[key][0 if probe(*target) else 1] += 1

    with ThreadPoolExecutor(max_workers=len(targets)) as pool:
        list(pool.map(run, targets))
    return counts


def main() -> None:
    if sys.argv[1] == "loop":
        print(json.dumps(loop(float(sys.argv[2]), json.loads(sys.argv[3]))))
        sys.exit(0)
    targets = json.loads(sys.argv[1])
    with ThreadPoolExecutor(max_workers=64) as pool:
        results = list(pool.map(lambda t: probe(*t), targets))
    print(json.dumps({f"{p} {ip} {port}": ok for (p, ip, port), ok in zip(targets, results)}))


if __name__ == "__main__":
    try:
        main()
    except LocalError as e:
        sys.exit(f"prober: {e} (a local error: nothing was learned about the network)")
