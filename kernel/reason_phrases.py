"""Standard reason phrases on daphne's status lines.

daphne hands an ASGI response's status to Twisted's `Request.setResponseCode` without a phrase,
and Twisted looks it up in its public table `twisted.web.http.RESPONSES`, which lacks the
statuses named after it was written (422, 429, 451...): those status lines read
"HTTP/1.1 429 Unknown Status". The table is completed from the standard library's
`http.HTTPStatus` (the phrases of the RFCs, which uvicorn sends too), once per process, before
daphne serves. Phrases Twisted has are kept.
"""

from __future__ import annotations

from http import HTTPStatus


def reason_phrases_complete() -> None:
    from twisted.web import http  # daphne's dependency; only daphne's processes call this

    for status in HTTPStatus:
        http.RESPONSES.setdefault(status.value, status.phrase.encode("ascii"))
