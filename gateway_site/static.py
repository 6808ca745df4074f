"""Static files (admin CSS, the playground's script) served by WhiteNoise, from ASGI.

WhiteNoise's Django middleware is synchronous: listed in MIDDLEWARE, it would make Django run the
whole middleware chain of every request, API calls and streams included, through a thread. Here
WhiteNoise keeps its file index, headers, compression choice and caching rules (configured from
the usual `WHITENOISE_*` settings through `WhiteNoiseMiddleware`), and only a request under
`STATIC_URL` leaves the event loop, to open and read its file in a worker thread.
"""

from __future__ import annotations

import warnings

from asgiref.sync import sync_to_async
from django.conf import settings
from whitenoise.middleware import WhiteNoiseMiddleware

BLOCK_SIZE = 64 * 1024


class StaticFilesApplication:
    """ASGI middleware: a GET or HEAD under STATIC_URL that WhiteNoise knows gets the file."""

    def __init__(self, application) -> None:
        self.application = application
        with warnings.catch_warnings():
            if settings.WHITENOISE_USE_FINDERS:  # embedded: no collectstatic, so no STATIC_ROOT yet
                warnings.filterwarnings("ignore", message="No directory at")
            self.whitenoise = WhiteNoiseMiddleware(get_response=None)
        self.prefix = self.whitenoise.static_prefix

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["path"].startswith(self.prefix):
            static_file = await self._find(scope["path"])
            if static_file is not None:
                await self._serve(static_file, scope, send)
                return
        await self.application(scope, receive, send)

    async def _find(self, path: str):
        if self.whitenoise.autorefresh:  # DEBUG: looks at the disk on each request
            return await sync_to_async(self.whitenoise.find_file, thread_sensitive=False)(path)
        return self.whitenoise.files.get(path)

    async def _serve(self, static_file, scope, send) -> None:
        headers = {
            "HTTP_" + name.decode("latin-1").upper().replace("-", "_"): value.decode("latin-1")
            for name, value in scope["headers"]
        }
        response = await sync_to_async(static_file.get_response, thread_sensitive=False)(
            scope["method"], headers
        )
        await send({
            "type": "http.response.start",
            "status": int(response.status),
            "headers": [(name.encode("latin-1"), value.encode("latin-1")) for name, value in response.headers],
        })
        if response.file is None:
            await send({"type": "http.response.body"})
            return
        read = sync_to_async(response.file.read, thread_sensitive=False)
        try:
            while block := await read(BLOCK_SIZE):
                await send({"type": "http.response.body", "body": block, "more_body": True})
            await send({"type": "http.response.body"})
        finally:
            response.file.close()
