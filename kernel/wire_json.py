"""JSON on the request path: orjson, with the standard library for what orjson refuses.

orjson encodes and decodes several times faster than the `json` module; on a 20-chunk stream the
gateway decodes and encodes every chunk once (docs/performance.md). What it writes is compact
UTF-8 (no `\\u` escapes for non-ASCII text), as valid JSON as before. What it refuses to encode
(integers beyond 64 bits, Decimal and other types Django's encoder knows) goes through Django's
`DjangoJSONEncoder` instead, so nothing that encoded before fails now.

Request bodies from tenants are still parsed by `json` (routing.validation): its error messages
and what it accepts are part of the API's behaviour.
"""

from __future__ import annotations

import json

import orjson
from django.core.serializers.json import DjangoJSONEncoder
from django.http import HttpResponse

__all__ = ["JsonBody", "dumps", "loads"]


def dumps(value: object) -> bytes:
    try:
        return orjson.dumps(value)
    except TypeError:  # orjson.JSONEncodeError: a type or an integer it does not take
        return json.dumps(value, cls=DjangoJSONEncoder, separators=(",", ":")).encode()


def loads(data: bytes | str) -> object:
    """Raises ValueError (orjson.JSONDecodeError is a json.JSONDecodeError) on invalid JSON."""
    return orjson.loads(data)


class JsonBody(HttpResponse):
    """`JsonResponse` for the API's own bodies, encoded by `dumps`."""

    def __init__(self, data: object, **kwargs) -> None:
        kwargs.setdefault("content_type", "application/json")
        super().__init__(content=dumps(data), **kwargs)
