"""The fake's two exceptions: an error answer in the vendor's shape, and a deliberately cut wire."""

from __future__ import annotations


class FakeConnectionDrop(Exception):
    """Raised inside the app to make the server drop the connection mid-response.

    An ASGI app has no other way to say "cut the wire"; servers answer a crash after the response
    started by closing the connection, which leaves a chunked body incomplete. (`serve()` makes
    daphne do so; under `httpx.ASGITransport` the exception reaches the test instead.)
    """


class ApiError(Exception):
    """An error response; the dialect decides how its vendor spells it."""

    def __init__(
        self, status: int, message: str | None = None, *, param: str | None = None,
        code: str | None = None, retry_after: int | None = None,
    ) -> None:
        super().__init__(message or f"HTTP {status}")
        self.status, self.message, self.param = status, message, param
        self.code, self.retry_after = code, retry_after
