"""UDP echo probe: RTT and loss of a paced stream, classified like real-time traffic when
sent to a realtime port. Bounded by packet count and duration.

    python -m satupintu.emulation.udpprobe server --bind IP --port 3478 --duration 60
    python -m satupintu.emulation.udpprobe client --bind IP --target IP --port 3478 --count 200 --interval 0.02
The client prints JSON: sent, received, lost, rtts_ms.
"""

from __future__ import annotations

import argparse
import json
import select
import socket
import struct
import sys
import time

_HEADER = struct.Struct("!Id")  # sequence number, send time


def serve(bind: str, port: int, duration_s: float, clients: int = 0) -> int:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((bind, port))
    deadline = time.monotonic() + duration_s
    while (remaining := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select([sock], [], [], min(remaining, 0.5))
        if ready:
            data, peer = sock.recvfrom(2048)
            sock.sendto(data, peer)
    return 0


def probe(bind: str, target: str, port: int, count: int, interval_s: float, size: int = 200,
          tos: int | None = None, linger_s: float = 1.0, source_port: int = 0) -> dict:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    if tos is not None:
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, tos)
    sock.bind((bind, source_port))
    sock.setblocking(False)
    padding = b"\x00" * max(0, size - _HEADER.size)
    rtts: dict[int, float] = {}
    start = time.monotonic()
    started_unix = time.time()
    next_send = start
    sent = 0
    end = start + count * interval_s + linger_s
    while time.monotonic() < end:
        now = time.monotonic()
        if sent < count and now >= next_send:
            sock.sendto(_HEADER.pack(sent, time.monotonic()) + padding, (target, port))
            sent += 1
            next_send += interval_s
            continue
        wait = max(0.0, min(next_send - now if sent < count else end - now, 0.05))
        ready, _, _ = select.select([sock], [], [], wait)
        if ready:
            while True:
                try:
                    data = sock.recv(2048)
                except BlockingIOError:
                    break
                sequence, sent_at = _HEADER.unpack_from(data)
                rtts.setdefault(sequence, (time.monotonic() - sent_at) * 1000)
        if sent >= count and len(rtts) >= sent:
            break
    ordered = [rtts[key] for key in sorted(rtts)]
    lost = sorted(set(range(sent)) - rtts.keys())
    return {"sent": sent, "received": len(rtts), "lost": len(lost), "lost_sequences": lost, "rtts_ms": ordered,
            "started_unix": started_unix, "interval_s": interval_s}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="udpprobe")
    sub = parser.add_subparsers(dest="mode", required=True)
    server = sub.add_parser("server")
    server.add_argument("--bind", required=True)
    server.add_argument("--port", type=int, required=True)
    server.add_argument("--duration", type=float, default=60.0)
    client = sub.add_parser("client")
    client.add_argument("--bind", required=True)
    client.add_argument("--target", required=True)
    client.add_argument("--port", type=int, required=True)
    client.add_argument("--source-port", type=int, default=0)
    client.add_argument("--count", type=int, default=100)
    client.add_argument("--interval", type=float, default=0.02)
    client.add_argument("--size", type=int, default=200)
    client.add_argument("--tos", type=int, default=None)
    args = parser.parse_args(argv)
    if args.mode == "server":
        return serve(args.bind, args.port, args.duration)
    result = probe(args.bind, args.target, args.port, args.count, args.interval, args.size, args.tos,
                   source_port=args.source_port)
    json.dump(result, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
