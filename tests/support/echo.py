"""A TCP and UDP echo server, run inside a pod (probes: prober.py).

    python echo.py serve PORT [PORT...]     # TCP + UDP on each port, until killed
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


if __name__ == "__main__":
    assert sys.argv[1] == "serve", __doc__
    for port in map(int, sys.argv[2:]):
        threading.Thread(target=serve_tcp, args=(port,), daemon=True).start()
        threading.Thread(target=serve_udp, args=(port,), daemon=True).start()
    print("ready", flush=True)
    threading.Event().wait()
