"""A TCP and UDP echo server (run inside a pod) and a one-shot probe.

    python echo.py serve PORT [PORT...]     # TCP + UDP on each port, until killed
    python echo.py probe tcp|udp IP PORT [SPORT [TIMEOUT]]
                                            # exit 0 and print "ok" when the echo came back
"""
import socket
import sys
import threading


def serve_tcp(port: int) -> None:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port))
    s.listen(64)
    while True:
        conn, _ = s.accept()
        threading.Thread(target=_echo, args=(conn,), daemon=True).start()


def _echo(conn: socket.socket) -> None:
    with conn:
        while data := conn.recv(4096):
            conn.sendall(data)


def serve_udp(port: int) -> None:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", port))
    while True:
        data, peer = s.recvfrom(4096)
        s.sendto(data, peer)


def probe(proto: str, ip: str, port: int, timeout: float = 1.0, sport: int = 0) -> bool:
    """One connection (TCP) or up to three datagrams (UDP); SPORT: from this source port."""
    payload = b"capillary-probe"
    source = ("0.0.0.0", sport) if sport else None
    try:
        if proto == "tcp":
            with socket.create_connection((ip, port), timeout=timeout, source_address=source) as s:
                s.sendall(payload)
                return s.recv(64) == payload
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            if source:
                s.bind(source)
            s.settimeout(timeout)
            for _ in range(3):
                s.sendto(payload, (ip, port))
                try:
                    if s.recvfrom(64)[0] == payload:
                        return True
                except socket.timeout:
                    continue
            return False
    except OSError:
        return False


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        for port in map(int, sys.argv[2:]):
            threading.Thread(target=serve_tcp, args=(port,), daemon=True).start()
            threading.Thread(target=serve_udp, args=(port,), daemon=True).start()
        print("ready", flush=True)
        threading.Event().wait()
    else:
        extra = sys.argv[5:]
        ok = probe(sys.argv[2], sys.argv[3], int(sys.argv[4]), sport=int(extra[0]) if extra else 0,
                   timeout=float(extra[1]) if len(extra) > 1 else 1.0)
        print("ok" if ok else "fail")
        sys.exit(0 if ok else 1)
