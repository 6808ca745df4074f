"""The benchmark's fake upstream: OpenAI chat completions, as fast as one Python process allows.

A bare asyncio HTTP/1.1 server (keep-alive, Content-Length request bodies) with every answer
built once at start-up, so that it is never what a benchmark measures:

- `POST .../chat/completions` with `"stream": true` in the body: a 20-chunk SSE stream (one
  content delta per chunk, then the `finish_reason` chunk, the usage chunk that OpenAI sends for
  `stream_options.include_usage`, and `data: [DONE]`), chunked transfer encoding;
- any other POST: a plain `chat.completion` JSON body with usage;
- GET: `{"object": "list", "data": [...]}` (what `/v1/models` answers), so health checks pass.

It does not look at the model, the key or the messages. Run it alone with
`python bench/upstream.py --port 9300`; it prints `listening on PORT` once it accepts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re

CHUNKS = 20
MODEL = "bench-model"
PROMPT_TOKENS = 24
STREAM_FLAG = re.compile(rb'"stream"\s*:\s*true')


def _completion_body() -> bytes:
    text = " ".join(f"word{i}" for i in range(CHUNKS))
    return json.dumps({
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": MODEL,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "finish_reason": "stop",
            "logprobs": None,
        }],
        "usage": {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": CHUNKS, "total_tokens": PROMPT_TOKENS + CHUNKS},
    }, separators=(",", ":")).encode()


def _chunk(delta: dict, finish_reason, **extra) -> dict:
    return {
        "id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1_700_000_000, "model": MODEL,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}], **extra,
    }


def _stream_body() -> bytes:
    events = [_chunk({"role": "assistant", "content": "word0"}, None)]
    events += [_chunk({"content": f" word{i}"}, None) for i in range(1, CHUNKS)]
    events.append(_chunk({}, "stop"))
    usage = {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": CHUNKS, "total_tokens": PROMPT_TOKENS + CHUNKS}
    events.append({**_chunk({}, None), "choices": [], "usage": usage})
    sse = b"".join(b"data: " + json.dumps(event, separators=(",", ":")).encode() + b"\n\n" for event in events)
    sse += b"data: [DONE]\n\n"
    # One HTTP chunk per SSE event, as a real provider flushes them.
    parts = [part + b"\n\n" for part in sse.split(b"\n\n") if part]
    return b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in parts) + b"0\r\n\r\n"


def _response(status: str, content_type: bytes, body: bytes, *, chunked: bool = False) -> bytes:
    head = b"HTTP/1.1 " + status.encode() + b"\r\ncontent-type: " + content_type + b"\r\n"
    head += b"transfer-encoding: chunked\r\n" if chunked else b"content-length: %d\r\n" % len(body)
    return head + b"connection: keep-alive\r\n\r\n" + body


JSON_RESPONSE = _response("200 OK", b"application/json", _completion_body())
STREAM_RESPONSE = _response("200 OK", b"text/event-stream", _stream_body(), chunked=True)
MODELS_RESPONSE = _response(
    "200 OK", b"application/json",
    json.dumps({"object": "list", "data": [{"id": MODEL, "object": "model", "owned_by": "bench"}]}).encode(),
)


class Upstream(asyncio.Protocol):
    """One connection: parses pipelined HTTP/1.1 requests out of a buffer, answers each at once."""

    def connection_made(self, transport):
        self.transport = transport
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end]
            length = 0
            match = re.search(rb"(?im)^content-length:\s*(\d+)", head)
            if match:
                length = int(match.group(1))
            if len(self.buffer) < end + 4 + length:
                return
            body = self.buffer[end + 4:end + 4 + length]
            self.buffer = self.buffer[end + 4 + length:]
            if head.startswith(b"GET"):
                self.transport.write(MODELS_RESPONSE)
            elif STREAM_FLAG.search(body):
                self.transport.write(STREAM_RESPONSE)
            else:
                self.transport.write(JSON_RESPONSE)


async def serve(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Upstream, host, port, backlog=2048, reuse_address=True)
    print(f"listening on {server.sockets[0].getsockname()[1]}", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9300)
    args = parser.parse_args()
    try:
        asyncio.run(serve(args.host, args.port))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
