#!/usr/bin/env python3
"""Asks HOST:PORT over and over, one new connection per request, until NAME answers.

Usage: first-answer.py HOST PORT NAME DIR
Writes DIR/ready after its first answer (so the caller knows start-up is over), then DIR/answered
holding the wall-clock time (seconds since the epoch) of the first answer from NAME. One process
for the whole wait: under emulation, starting a client per attempt costs more than the wait.
"""
import os
import socket
import sys
import time


def ask(host, port):
    with socket.create_connection((host, port), timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: vip\r\nConnection: close\r\n\r\n")
        data = b""
        while True:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    return data.partition(b"\r\n\r\n")[2].decode().strip()


def main():
    host, port, name, ctl = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    ready = False
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            body = ask(host, port)
        except OSError:
            body = None
        now = time.time()
        if body is not None and not ready:
            open(os.path.join(ctl, "ready"), "w").close()
            ready = True
        if body == name:
            with open(os.path.join(ctl, "answered"), "w") as f:
                f.write("%.3f\n" % now)
            return 0
        time.sleep(0.02)
    print("first-answer: %s never answered within 120 s" % name, file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
