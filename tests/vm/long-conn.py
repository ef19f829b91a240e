#!/usr/bin/env python3
"""Holds one TCP connection to HOST:PORT and sends an HTTP/1.1 request on it each time asked.

Usage: long-conn.py HOST PORT DIR
Writes DIR/answer.1 ("POD LOCAL-ADDRESS:PORT": who answered, over which connection), then for
N = 2, 3, ... waits until DIR/go.N exists and writes DIR/answer.N from the same socket. Stops when DIR/stop exists; exits non-zero
(with the reason on stderr) when the connection breaks. A plain socket, so it cannot silently
reconnect the way http.client would.
"""
import os
import socket
import sys
import time


def request(sock, reader):
    sock.sendall(b"GET / HTTP/1.1\r\nHost: vip\r\n\r\n")
    status = reader.readline()
    if not status:
        raise ConnectionError("connection closed by the peer")
    length = 0
    while True:
        line = reader.readline()
        if line in (b"\r\n", b"\n", b""):
            break
        key, _, value = line.decode().partition(":")
        if key.strip().lower() == "content-length":
            length = int(value.strip())
    body = reader.read(length).decode().strip()
    if not status.startswith(b"HTTP/1.1 200"):
        raise ConnectionError("unexpected status %r" % status)
    return body


def main():
    host, port, ctl = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    sock = socket.create_connection((host, port), timeout=30)
    reader = sock.makefile("rb")
    local = "%s:%d" % sock.getsockname()
    n = 1
    while True:
        body = request(sock, reader)
        with open(os.path.join(ctl, "answer.%d.tmp" % n), "w") as f:
            f.write("%s %s\n" % (body, local))
        os.rename(os.path.join(ctl, "answer.%d.tmp" % n), os.path.join(ctl, "answer.%d" % n))
        n += 1
        while not os.path.exists(os.path.join(ctl, "go.%d" % n)):
            if os.path.exists(os.path.join(ctl, "stop")):
                return 0
            time.sleep(0.1)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (OSError, ValueError) as e:
        print("long-conn: %s" % e, file=sys.stderr)
        sys.exit(1)
