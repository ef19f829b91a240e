#!/usr/bin/env python3
"""A UDP client that keeps one flow (one source port) sending to ADDRESS:PORT: one datagram every
INTERVAL seconds until STOP_FILE exists, each answer (a pod-server.py name) printed on a line of
its own as it arrives, "-" for a datagram that got none within the interval. Always the same
5-tuple, as a DNS client reusing its socket: a stale conntrack entry keeps such a flow on a gone
endpoint.

Usage: udp-steady.py ADDRESS PORT STOP_FILE [INTERVAL]
"""
import os
import socket
import sys


def main():
    address, port, stop = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    interval = float(sys.argv[4]) if len(sys.argv) > 4 else 0.2
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.settimeout(interval)
    while not os.path.exists(stop):
        try:
            sock.sendto(b"ping", (address, port))
            data, _ = sock.recvfrom(2048)
            print(data.decode().strip(), flush=True)
        except (socket.timeout, ConnectionRefusedError):
            # An ICMP error (no real server) surfaces as ConnectionRefusedError on the next call.
            print("-", flush=True)


if __name__ == "__main__":
    main()
