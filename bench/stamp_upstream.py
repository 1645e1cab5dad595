#!/usr/bin/env python3
"""A timestamping OpenAI-compatible upstream for the chunk-relay benchmark (standard library only).

It answers POST /v1/chat/completions. With "stream": true it sends a chunked SSE stream of --tokens
chunks, one every --token-delay-ms, whose delta content is "ts:<CLOCK_MONOTONIC ns>" taken right
before the chunk is written to the socket; then a usage chunk and `data: [DONE]`. The client
(streamclient.py relay) subtracts the stamp from its own CLOCK_MONOTONIC read time: same host, same
clock, so the difference is the time the chunk spent between the upstream's write() and the client's
read(), directly or through a proxy. Without "stream" it answers one small JSON completion.

It is deliberately simple and not fast: use it at a few thousand chunks per second at most.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

now_ns = time.monotonic_ns


def frame(payload: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(payload), payload)


def chunk(model: str, content: str | None, finish: str | None, role: bool = False) -> bytes:
    delta: dict = {}
    if role:
        delta["role"] = "assistant"
    if content is not None:
        delta["content"] = content
    obj = {
        "id": "chatcmpl-stamp",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


class Server(asyncio.Protocol):
    def __init__(self, args):
        self.args = args
        self.buf = bytearray()
        self.transport = None
        self.task = None

    def connection_made(self, transport):
        self.transport = transport

    def connection_lost(self, exc):
        if self.task:
            self.task.cancel()

    def data_received(self, data):
        self.buf += data
        while True:
            i = self.buf.find(b"\r\n\r\n")
            if i < 0:
                return
            head = bytes(self.buf[:i]).decode("latin-1").split("\r\n")
            length = 0
            for line in head[1:]:
                k, _, v = line.partition(":")
                if k.strip().lower() == "content-length":
                    length = int(v.strip())
            if len(self.buf) < i + 4 + length:
                return
            body = bytes(self.buf[i + 4 : i + 4 + length])
            del self.buf[: i + 4 + length]
            self.handle(head[0], body)

    def handle(self, request_line: str, body: bytes):
        try:
            req = json.loads(body or b"{}")
        except ValueError:
            req = {}
        model = req.get("model", "stamp")
        if request_line.startswith("GET /healthz"):
            self.transport.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            return
        if not request_line.startswith("POST ") or "/chat/completions" not in request_line:
            msg = b'{"error":{"message":"not found"}}'
            self.transport.write(
                b"HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                % (len(msg), msg)
            )
            return
        if req.get("stream"):
            self.transport.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
                b"transfer-encoding: chunked\r\n\r\n"
            )
            self.task = asyncio.get_running_loop().create_task(self.stream(model, bool(req.get("stream_options"))))
        else:
            obj = {
                "id": "chatcmpl-stamp",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "ts:%d" % now_ns()},
                             "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
            }
            msg = json.dumps(obj).encode()
            self.transport.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (len(msg), msg)
            )

    async def stream(self, model: str, usage: bool):
        delay = self.args.token_delay_ms / 1000
        write = self.transport.write
        if self.args.ttft_ms:
            await asyncio.sleep(self.args.ttft_ms / 1000)
        for n in range(self.args.tokens):
            if delay and n:
                await asyncio.sleep(delay)
            if self.transport.is_closing():
                return
            write(frame(chunk(model, "ts:%d" % now_ns(), None, role=(n == 0))))
        tail = chunk(model, None, "stop")
        if usage:
            u = {"id": "chatcmpl-stamp", "object": "chat.completion.chunk", "created": int(time.time()),
                 "model": model, "choices": [],
                 "usage": {"prompt_tokens": 1, "completion_tokens": self.args.tokens,
                           "total_tokens": self.args.tokens + 1}}
            tail += b"data: " + json.dumps(u, separators=(",", ":")).encode() + b"\n\n"
        tail += b"data: [DONE]\n\n"
        write(frame(tail) + b"0\r\n\r\n")
        self.task = None


async def main_async(args):
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Server(args), args.host, args.port, backlog=4096)
    async with server:
        await server.serve_forever()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--listen", default="127.0.0.1:18090", help="HOST:PORT (loopback)")
    p.add_argument("--tokens", type=int, default=20)
    p.add_argument("--token-delay-ms", type=float, default=5)
    p.add_argument("--ttft-ms", type=float, default=0, help="extra delay before the first chunk")
    p.add_argument("--no-record", action="store_true", help="accepted for command-line compatibility with sluice-mock-upstream")
    args = p.parse_args()
    args.host, _, port = args.listen.rpartition(":")
    args.port = int(port)
    try:
        asyncio.run(main_async(args))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
