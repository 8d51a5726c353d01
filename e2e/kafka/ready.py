#!/usr/bin/env python3
"""Is a Kafka cluster serving? Exit 0 if a Metadata request to one of the
BOOTSTRAP addresses (comma-separated HOST:PORT) answers with at least
--brokers brokers, else 1 (standard library only: the
scripts call it before any client library is installed).

    ready.py HOST:PORT[,HOST:PORT...] [--brokers N] [--timeout SECONDS]

Sends Metadata v4 (request header v1, all topics) and counts the brokers in
the answer: a broker answers Metadata only once it has caught up with the
controller quorum's metadata, so this is the readiness check the e2e
scripts wait on.
"""
import argparse
import socket
import struct
import sys


def metadata_brokers(host, port, timeout):
    body = struct.pack(">hhih", 3, 4, 1, len(b"ready")) + b"ready"  # Metadata v4, header v1
    body += struct.pack(">ib", -1, 0)  # all topics, no auto-creation
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.settimeout(timeout)
        s.sendall(struct.pack(">i", len(body)) + body)
        head = recv_exact(s, 4)
        (size,) = struct.unpack(">i", head)
        data = recv_exact(s, size)
    # correlation id, throttle time, broker count
    _, _, count = struct.unpack_from(">iii", data, 0)
    return count


def recv_exact(s, n):
    out = b""
    while len(out) < n:
        chunk = s.recv(n - len(out))
        if not chunk:
            raise ConnectionError("connection closed")
        out += chunk
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("bootstrap")
    ap.add_argument("--brokers", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=3.0)
    a = ap.parse_args()
    seen = []
    for addr in a.bootstrap.split(","):
        host, _, port = addr.strip().rpartition(":")
        try:
            n = metadata_brokers(host, int(port), a.timeout)
        except (OSError, ValueError, struct.error) as e:
            seen.append(f"{addr}: {e}")
            continue
        if n >= a.brokers:
            return 0
        seen.append(f"{addr}: {n} of {a.brokers} brokers")
    print("; ".join(seen), file=sys.stderr)
    return 1

if __name__ == "__main__":
    sys.exit(main())
