"""kernel.wire_json: orjson on the request path, the standard library for what it refuses."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest

from kernel import wire_json


def test_dumps_is_compact_utf8_json():
    body = {"content": "héllo ✓", "n": 1, "f": 0.5, "none": None, "list": [True, False]}
    encoded = wire_json.dumps(body)
    assert encoded == '{"content":"héllo ✓","n":1,"f":0.5,"none":null,"list":[true,false]}'.encode()
    assert json.loads(encoded) == body


def test_what_orjson_refuses_is_encoded_by_djangos_encoder():
    body = {"big": 2**70, "price": Decimal("0.10")}
    assert json.loads(wire_json.dumps(body)) == {"big": 2**70, "price": "0.10"}


def test_loads_raises_value_error_on_invalid_json():
    assert wire_json.loads('{"a": [1, 2]}') == {"a": [1, 2]}
    for bad in ("{", "NaN", b"\xff"):
        with pytest.raises(ValueError):
            wire_json.loads(bad)


def test_json_body_is_an_application_json_response():
    response = wire_json.JsonBody({"ok": True}, status=201)
    assert response.status_code == 201
    assert response["Content-Type"] == "application/json"
    assert json.loads(response.content) == {"ok": True}
