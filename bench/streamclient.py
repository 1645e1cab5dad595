#!/usr/bin/env python3
"""Streaming load client for the Sluice benchmarks (Python standard library only).

oha measures whole responses; this client measures what oha cannot see in a stream:

  ttft   open-loop load at a fixed request rate over a fixed pool of keep-alive HTTP/1.1 connections
         (like `oha -q RATE -c CONNS`). For every request it records, with CLOCK_MONOTONIC taken in the
         socket read callback:
           headers  time until the response head (status line + headers) was read,
           ttft     time until the first SSE `data:` event of the body was read (the first token),
           total    time until the end of the chunked body (the whole stream).
         Each is measured from the moment the request was written ("send") and from the moment the
         rate limiter released it ("sched", i.e. with latency correction as in `oha
         --latency-correction`: a request that waits for a free connection counts its wait, so a
         saturated target cannot hide behind coordinated omission).
  relay  the same open loop against an upstream that stamps every chunk with its own CLOCK_MONOTONIC
         send time (bench/stamp_upstream.py): for every chunk it records receive time minus stamp, i.e.
         the time one chunk takes from the upstream's write() to the client's read(). Through a proxy it
         is the per-chunk relay time plus one extra loopback hop; minus the direct value it is the
         relay cost of the proxy.
  hold   opens N streams, waits until each one has received its first `data:` event (so the stream is
         open end to end), prints one JSON line, then keeps them open (reading and discarding) for
         --hold seconds or until SIGTERM/SIGINT, then closes them.

The event loop is plain asyncio with Protocol callbacks (no per-request coroutines) so the client can
sustain a few thousand requests per second on one core. Output: one JSON object on stdout (or --out).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import signal
import sys
import time
from collections import deque

now_ns = time.monotonic_ns  # CLOCK_MONOTONIC: comparable across processes on the same host


def build_request(host: str, port: int, path: str, body: bytes) -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\n"
        f"Host: {host}:{port}\r\n"
        "Content-Type: application/json\r\n"
        "Accept: text/event-stream\r\n"
        f"Content-Length: {len(body)}\r\n"
        "\r\n"
    )
    return head.encode() + body


class Conn(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection carrying one request at a time."""

    __slots__ = (
        "client", "transport", "buf", "state", "remaining", "chunked", "t_sched", "t_send", "t_head",
        "t_first", "status", "closed", "relay", "sse", "keep_alive", "busy", "tail", "sock", "quickack",
    )

    def __init__(self, client: "Client"):
        self.client = client
        self.transport = None
        self.buf = bytearray()
        self.closed = False
        self.busy = False
        self.relay = client.relay
        self.reset()

    def reset(self) -> None:
        self.state = "head"  # head -> size -> data -> crlf -> ... -> trailer ; or "length"
        self.remaining = 0
        self.chunked = False
        self.t_sched = self.t_send = self.t_head = self.t_first = 0
        self.status = 0
        self.sse = bytearray()
        self.tail = b""
        self.keep_alive = True

    # -- asyncio callbacks --------------------------------------------------------------------------
    def connection_made(self, transport) -> None:
        self.transport = transport
        self.sock = None
        if self.client.args.quickack:
            import socket

            self.sock = transport.get_extra_info("socket")
            self.quickack = (socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)

    def connection_lost(self, exc) -> None:
        self.closed = True
        self.client.lost(self, exc)

    def data_received(self, data: bytes) -> None:
        t = now_ns()
        if self.sock is not None:  # --quickack: acknowledge at once, never delay an ACK
            self.sock.setsockopt(*self.quickack)
        self.buf += data
        try:
            self.parse(t)
        except Exception as e:  # malformed response: count it, drop the connection
            self.client.fail(self, f"parse error: {e!r}")
            self.transport.close()

    # -- request/response ---------------------------------------------------------------------------
    def send(self, t_sched: int) -> None:
        self.reset()
        self.busy = True
        self.t_sched = t_sched
        self.t_send = now_ns()
        self.transport.write(self.client.request)

    def payload(self, data, t: int) -> None:
        if not self.t_first:
            probe = self.tail + bytes(data)
            if b"data:" in probe:
                self.t_first = t
                fut = self.client.ready_waiters.pop(self, None)
                if fut is not None and not fut.done():
                    fut.set_result(True)
            self.tail = probe[-5:]
        if self.relay:
            self.sse += data
            while True:
                i = self.sse.find(b"\n\n")
                if i < 0:
                    break
                event = bytes(self.sse[:i])
                del self.sse[: i + 2]
                j = event.find(b'"ts:')
                if j >= 0:
                    k = event.find(b'"', j + 4)
                    self.client.relay_samples.append(t - int(event[j + 4 : k]))

    def parse(self, t: int) -> None:
        buf = self.buf
        while True:
            st = self.state
            if st == "head":
                i = buf.find(b"\r\n\r\n")
                if i < 0:
                    return
                head = bytes(buf[:i]).decode("latin-1").split("\r\n")
                del buf[: i + 4]
                self.status = int(head[0].split(" ", 2)[1])
                self.t_head = t
                length = None
                for line in head[1:]:
                    name, _, value = line.partition(":")
                    name = name.strip().lower()
                    value = value.strip().lower()
                    if name == "content-length":
                        length = int(value)
                    elif name == "transfer-encoding" and "chunked" in value:
                        self.chunked = True
                    elif name == "connection" and value == "close":
                        self.keep_alive = False
                if self.chunked:
                    self.state = "size"
                elif length is not None:
                    self.state = "length"
                    self.remaining = length
                    if length == 0:
                        return self.finish(t)
                else:  # read to EOF: not expected from any target here
                    self.keep_alive = False
                    self.state = "eof"
            elif st == "length":
                take = min(self.remaining, len(buf))
                if take:
                    self.payload(buf[:take], t)
                    del buf[:take]
                    self.remaining -= take
                if self.remaining == 0:
                    return self.finish(t)
                return
            elif st == "size":
                i = buf.find(b"\r\n")
                if i < 0:
                    return
                size = int(bytes(buf[:i]).split(b";")[0], 16)
                del buf[: i + 2]
                if size == 0:
                    self.state = "trailer"
                else:
                    self.state = "data"
                    self.remaining = size
            elif st == "data":
                if not buf:
                    return
                take = min(self.remaining, len(buf))
                self.payload(buf[:take], t)
                del buf[:take]
                self.remaining -= take
                if self.remaining:
                    return
                self.state = "crlf"
            elif st == "crlf":
                if len(buf) < 2:
                    return
                del buf[:2]
                self.state = "size"
            elif st == "trailer":
                if buf[:2] == b"\r\n":
                    del buf[:2]
                    return self.finish(t)
                i = buf.find(b"\r\n\r\n")
                if i < 0:
                    return
                del buf[: i + 4]
                return self.finish(t)
            elif st == "eof":
                if buf:
                    self.payload(buf, t)
                    buf.clear()
                return
            else:
                return

    def finish(self, t: int) -> None:
        self.busy = False
        self.state = "idle"
        self.client.done(self, t)


class Client:
    def __init__(self, args):
        self.args = args
        body = args.body.encode()
        self.request = build_request(args.host, args.port, args.path, body)
        self.relay = args.mode == "relay"
        self.loop = asyncio.get_running_loop()
        self.idle: deque[Conn] = deque()
        self.pending: deque[int] = deque()
        self.records: list[tuple] = []
        self.relay_samples: list[int] = []
        self.errors: dict[str, int] = {}
        self.recording = False
        self.outstanding = 0
        self.all_done = None
        self.conns: set[Conn] = set()
        self.ready_waiters: dict[Conn, asyncio.Future] = {}
        self.stopping = False

    def err(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1

    async def connect(self) -> Conn:
        _, conn = await self.loop.create_connection(lambda: Conn(self), self.args.host, self.args.port)
        self.conns.add(conn)
        return conn

    # -- open loop ----------------------------------------------------------------------------------
    def submit(self, t_sched: int) -> None:
        self.outstanding += 1
        while self.idle:
            conn = self.idle.popleft()
            if not conn.closed:
                conn.send(t_sched)
                return
        self.pending.append(t_sched)

    def release(self, conn: Conn) -> None:
        if conn.closed:
            self.loop.create_task(self.replace())
            return
        if self.pending:
            conn.send(self.pending.popleft())
        else:
            self.idle.append(conn)

    async def replace(self) -> None:
        try:
            conn = await self.connect()
        except OSError as e:
            self.err(f"connect: {e.strerror or e}")
            await asyncio.sleep(0.05)
            self.loop.create_task(self.replace())
            return
        self.release(conn)

    def settle(self) -> None:
        self.outstanding -= 1
        if self.outstanding == 0 and self.all_done is not None and not self.all_done.done():
            self.all_done.set_result(None)

    def done(self, conn: Conn, t: int) -> None:
        if self.args.mode == "hold":  # a stream that ended is not an open stream
            fut = self.ready_waiters.pop(conn, None)
            if fut is not None and not fut.done():
                fut.set_result(False)
            return
        if self.recording:
            if 200 <= conn.status < 300 and conn.t_first:
                self.records.append((conn.t_sched, conn.t_send, conn.t_head, conn.t_first, t))
            else:
                self.err(f"status {conn.status}" if conn.status >= 300 or conn.status < 200 else "no data event")
        self.settle()
        if not conn.keep_alive:
            conn.transport.close()  # connection_lost replaces it
            return
        self.release(conn)

    def fail(self, conn: Conn, why: str) -> None:
        if conn.busy:
            conn.busy = False
            if self.recording:
                self.err(why)
            self.settle()

    def lost(self, conn: Conn, exc) -> None:
        self.conns.discard(conn)
        fut = self.ready_waiters.pop(conn, None)
        if fut is not None and not fut.done():
            fut.set_result(False)
            return
        if self.args.mode == "hold" or self.stopping:
            return
        if conn.busy:
            self.fail(conn, f"connection lost: {exc!r}" if exc else "connection closed mid-response")
        if conn in self.idle:
            self.idle.remove(conn)
        self.loop.create_task(self.replace())

    async def open_loop(self, rate: float, seconds: float) -> float:
        n = int(rate * seconds)
        period = 1e9 / rate
        start = now_ns() + 20_000_000
        i = 0
        self.all_done = self.loop.create_future()
        while i < n:
            t = now_ns()
            due = min(n, int((t - start) / period) + 1) if t >= start else 0
            while i < due:  # like oha's -q: the dispatch time, not the ideal one, starts the clock
                self.submit(t)
                i += 1
            if i < n:
                wait = start + i * period - now_ns()
                await asyncio.sleep(max(wait, 0) / 1e9)
        if self.outstanding:
            try:
                await asyncio.wait_for(self.all_done, timeout=self.args.drain)
            except asyncio.TimeoutError:
                self.err("timeout at end of run")
        return (now_ns() - start) / 1e9

    # -- hold ---------------------------------------------------------------------------------------
    async def open_stream(self, sem: asyncio.Semaphore) -> bool:
        async with sem:
            try:
                conn = await self.connect()
            except OSError as e:
                self.err(f"connect: {e.strerror or e}")
                return False
            fut = self.loop.create_future()
            self.ready_waiters[conn] = fut
            conn.send(now_ns())
            try:
                ok = await asyncio.wait_for(fut, timeout=self.args.open_timeout)
            except asyncio.TimeoutError:
                self.ready_waiters.pop(conn, None)
                self.err("no first event before --open-timeout")
                conn.transport.close()
                return False
            if not ok:
                self.err(f"stream ended or failed before being held (status {conn.status})")
            return ok


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    k = max(0, min(len(values) - 1, math.ceil(q * len(values)) - 1))
    return values[k]


def stats_ms(values_ns: list[int]) -> dict:
    v = sorted(x / 1e6 for x in values_ns)
    if not v:
        return {"count": 0}
    return {
        "count": len(v),
        "mean": sum(v) / len(v),
        "min": v[0],
        "p50": pct(v, 0.50),
        "p90": pct(v, 0.90),
        "p99": pct(v, 0.99),
        "p99.9": pct(v, 0.999),
        "max": v[-1],
    }


async def run_load(args) -> dict:
    client = Client(args)
    conns = await asyncio.gather(*(client.connect() for _ in range(args.connections)))
    client.idle.extend(conns)
    if args.warmup > 0:
        client.recording = False
        await client.open_loop(args.rate, args.warmup)
    client.records.clear()
    client.relay_samples.clear()
    client.errors.clear()
    client.recording = True
    elapsed = await client.open_loop(args.rate, args.duration)
    recs = client.records
    out = {
        "mode": args.mode,
        "target": f"{args.host}:{args.port}{args.path}",
        "rate": args.rate,
        "duration_s": args.duration,
        "connections": args.connections,
        "elapsed_s": elapsed,
        "ok": len(recs),
        "errors": client.errors,
        "achieved_rps": len(recs) / elapsed if elapsed > 0 else None,
        "unit": "ms",
        "headers_send": stats_ms([r[2] - r[1] for r in recs]),
        "ttft_send": stats_ms([r[3] - r[1] for r in recs]),
        "ttft_sched": stats_ms([r[3] - r[0] for r in recs]),
        "total_send": stats_ms([r[4] - r[1] for r in recs]),
        "total_sched": stats_ms([r[4] - r[0] for r in recs]),
        "send_lag": stats_ms([r[1] - r[0] for r in recs]),
    }
    if client.relay:
        out["chunk_relay"] = stats_ms(client.relay_samples)
    client.stopping = True
    for c in list(client.conns):
        c.transport.close()
    return out


async def run_hold(args) -> dict:
    client = Client(args)
    sem = asyncio.Semaphore(args.concurrency)
    t0 = time.monotonic()
    results = await asyncio.gather(*(client.open_stream(sem) for _ in range(args.streams)))
    opened = sum(results)
    line = {
        "mode": "hold",
        "requested": args.streams,
        "open": opened,
        "open_now": sum(1 for c in client.conns if c.busy and not c.closed),
        "errors": client.errors,
        "open_seconds": time.monotonic() - t0,
    }
    print(json.dumps(line), flush=True)
    if args.ready_file:
        with open(args.ready_file, "w") as f:
            json.dump(line, f)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        client.loop.add_signal_handler(sig, stop.set)
    try:
        await asyncio.wait_for(stop.wait(), timeout=args.hold)
    except asyncio.TimeoutError:
        pass
    still = sum(1 for c in client.conns if c.busy and not c.closed)
    for c in list(client.conns):
        c.transport.close()
    await asyncio.sleep(0.2)
    line["still_open_at_end"] = still
    return line


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", choices=["ttft", "relay", "hold"])
    p.add_argument("--url", required=True, help="http://HOST:PORT/PATH (HTTP/1.1, no TLS)")
    p.add_argument("--body", default='{"model":"bench","stream":true,"messages":[{"role":"user","content":"hi"}]}')
    p.add_argument("--rate", type=float, default=500, help="requests per second (ttft, relay)")
    p.add_argument("--duration", type=float, default=15, help="measured seconds (ttft, relay)")
    p.add_argument("--warmup", type=float, default=2, help="unmeasured seconds at the same rate first")
    p.add_argument("--connections", "-c", type=int, default=50, help="keep-alive connection pool (ttft, relay)")
    p.add_argument("--drain", type=float, default=10, help="seconds to wait for outstanding requests at the end")
    p.add_argument("--streams", type=int, default=1000, help="streams to open (hold)")
    p.add_argument("--concurrency", type=int, default=200, help="streams being opened at once (hold)")
    p.add_argument("--open-timeout", type=float, default=60, help="seconds for one stream to start (hold)")
    p.add_argument("--hold", type=float, default=30, help="seconds to keep the streams open (hold)")
    p.add_argument("--ready-file", help="hold: write the JSON line here once the streams are open")
    p.add_argument("--out", help="write the JSON result here instead of stdout")
    p.add_argument("--quickack", action="store_true",
                   help="set TCP_QUICKACK after every read (diagnosis: takes the client's delayed ACK out of the picture)")
    args = p.parse_args()

    from urllib.parse import urlsplit

    u = urlsplit(args.url)
    if u.scheme != "http" or not u.hostname:
        p.error("--url must be http://HOST:PORT/PATH")
    args.host, args.port, args.path = u.hostname, u.port or 80, u.path or "/"
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        p.error("this benchmark client only talks to loopback addresses")

    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ImportError, ValueError, OSError):
        pass

    runner = run_hold if args.mode == "hold" else run_load
    result = asyncio.run(runner(args))
    text = json.dumps(result, indent=1)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    if not args.out:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
