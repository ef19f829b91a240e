#!/usr/bin/env python3
"""A pod's server: answers every HTTP GET with the pod's name (one line), HTTP/1.1 keep-alive;
GET /client answers "NAME CLIENT-ADDRESS" (the source address the pod sees). Every UDP datagram
to the same port is answered with the pod's name.

Usage: pod-server.py NAME [PORT [ADDRESS]]   (default port 8080, address 0.0.0.0; :: for IPv6)
"""
import http.server
import socket
import sys
import threading


class Handler(http.server.BaseHTTPRequestHandler):
    # Keep-alive, so one TCP connection can carry requests across a proxy restart.
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        answer = self.server.pod_name
        if self.path == "/client":
            answer += " " + self.client_address[0]
        body = (answer + "\n").encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt, *args):
        sys.stderr.write("%s %s\n" % (self.client_address[0], fmt % args))


def main():
    name = sys.argv[1]
    port = int(sys.argv[2]) if len(sys.argv) > 2 else 8080
    address = sys.argv[3] if len(sys.argv) > 3 else "0.0.0.0"

    class Server(http.server.ThreadingHTTPServer):
        address_family = socket.AF_INET6 if ":" in address else socket.AF_INET

    server = Server((address, port), Handler)
    server.pod_name = name
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    udp = socket.socket(family, socket.SOCK_DGRAM)
    udp.bind((address, port))
    threading.Thread(target=answer_udp, args=(udp, name), daemon=True).start()
    server.serve_forever()


def answer_udp(sock, name):
    while True:
        _, peer = sock.recvfrom(2048)
        sock.sendto((name + "\n").encode(), peer)


if __name__ == "__main__":
    main()
