"""Probe from inside one pod; print the results as JSON.

    python prober.py TARGETS_JSON              # [[proto, ip, port], ...] -> {"proto ip port": ok}
    python prober.py loop SECONDS TARGETS_JSON # probe each target over and over, in parallel,
                                               # until SECONDS pass -> {"proto ip port": [ok, fail]}
"""
import json
import socket
import sys
from concurrent.futures import ThreadPoolExecutor

TIMEOUT = 1.0
PAYLOAD = b"capillary-probe"


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
    except OSError:
        return False


def loop(seconds: float, targets: list) -> dict:
    import time
    deadline = time.monotonic() + seconds
    counts = {f"{p} {ip} {port}": [0, 0] for p, ip, port in targets}

    def run(target):
        key = "{} {} {}".format(*target)
        while time.monotonic() < deadline:
            counts[key][0 if probe(*target) else 1] += 1

    with ThreadPoolExecutor(max_workers=len(targets)) as pool:
        list(pool.map(run, targets))
    return counts


if __name__ == "__main__":
    if sys.argv[1] == "loop":
        print(json.dumps(loop(float(sys.argv[2]), json.loads(sys.argv[3]))))
        sys.exit(0)
    targets = json.loads(sys.argv[1])
    with ThreadPoolExecutor(max_workers=64) as pool:
        results = list(pool.map(lambda t: probe(*t), targets))
    print(json.dumps({f"{p} {ip} {port}": ok for (p, ip, port), ok in zip(targets, results)}))
