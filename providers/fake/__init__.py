"""A fake OpenAI and Anthropic provider that speaks their wire formats over real HTTP.

The gateway's demo, tests and benchmark run on machines without internet, so they talk to this
instead of the vendors. It answers the documented shapes of OpenAI's chat completions (plain and
streamed, with `stream_options.include_usage`), embeddings (float and base64), model list and
error object, and of Anthropic's Messages API (plain and streamed: message_start,
content_block_start, ping, content_block_delta, content_block_stop, message_delta, message_stop)
and its errors. Every fault a real provider can throw at the gateway (error statuses, slowness,
hangs, dropped or stalled streams, broken JSON, missing usage) is asked for per request with a
directive such as `[[fake status=429 retry_after=1]]` in the last user message or an
`x-fake-directive` header, or for every request at once with a server-wide directive
(`PUT /_fake/directive`, `--directive`); docs/fake-provider.md has the table.

The modules, in the order a request meets them:
- `app`: the pure-ASGI app (no Django import), its routes, and the timing and faults every
  endpoint shares; `build_app()` makes one for `httpx.ASGITransport` in tests;
- `exchange`: one HTTP request and response over raw ASGI;
- `directives`: parsing `[[fake ...]]` blocks, the `x-fake-directive` header and the
  server-wide directive, and merging them;
- `dialect`: the contract a vendor dialect follows; `openai` and `anthropic` implement it
  (request validation, bodies, stream frames, error shapes);
- `content`: the deterministic answer, token counts and embedding vectors;
- `respond`: the timing, faults and billing every endpoint shares (the prompt once the 200 is
  out, a stream's completion frame by frame as written);
- `ledger`: what was billed, request by request (`GET /_fake/ledger`) and in total;
- `errors`: `ApiError` and `FakeConnectionDrop`;
- `daphne`: `serve()`, which runs the app on daphne as a real server.
"""

from providers.fake.app import build_app
from providers.fake.daphne import serve

__all__ = ["build_app", "serve"]
