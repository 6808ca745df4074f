"""The OpenAPI schema at /api/schema/: valid OpenAPI 3, and every public route is in it.

A route added to the URLconf without a schema description fails
`test_every_public_route_is_in_the_schema`; docs/operator-api.md says how to describe one.
"""

from __future__ import annotations

import re

import pytest
from django.contrib.staticfiles import finders
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver
from openapi_spec_validator import validate

# Routes that are pages for people (admin, dashboards, login, the docs themselves), not API.
NOT_API = ("admin/", "dashboard/", "playground/", "accounts/", "api/schema/", "api/docs/", "api/redoc/", "static/")
FRONT_DOOR = ""  # `/`, the front door: a page too (gateway_site/front_door.py)
CATCH_ALL = ".*"
# Routes whose owners are adding their schema description now (docs/operator-api.md, "The
# schema"); remove a route from here once it is described: the test fails while it is listed.
AWAITING_DESCRIPTION: set[str] = set()


def public_routes(patterns=None, prefix: str = "") -> set[str]:
    """Every URL pattern as an OpenAPI-style path with `{}` for parameters, pages left out."""
    routes: set[str] = set()
    for pattern in patterns if patterns is not None else get_resolver().url_patterns:
        route = prefix + str(pattern.pattern).lstrip("^").rstrip("$")
        if route.startswith(NOT_API) or (route == FRONT_DOOR and isinstance(pattern, URLPattern)):
            continue
        if isinstance(pattern, URLResolver):
            routes |= public_routes(pattern.url_patterns, route)
        elif isinstance(pattern, URLPattern) and not route.endswith(CATCH_ALL):
            routes.add(normalise(route))
    return routes


def normalise(route: str) -> str:
    route = re.sub(r"\(\?P<\w+>[^)]*\)", "{}", route)
    route = re.sub(r"<(?:\w+:)?\w+>", "{}", route)
    return "/" + route.replace("\\", "")


@pytest.fixture(scope="module")
def schema(django_db_blocker) -> dict:
    with django_db_blocker.unblock():
        response = Client().get("/api/schema/", {"format": "json"})
    assert response.status_code == 200, response.content[:500]
    return response.json()


def test_schema_is_valid_openapi_3(schema):
    assert schema["openapi"].startswith("3.")
    validate(schema)


def test_every_public_route_is_in_the_schema(schema):
    documented = {normalise(re.sub(r"{\w+}", "{}", path).lstrip("/")) for path in schema["paths"]}
    routes = public_routes()
    assert {"/v1/chat/completions", "/v1/providers/{}/health", "/health", "/v1/usage"} <= routes
    missing = sorted(routes - documented - AWAITING_DESCRIPTION)
    assert not missing, f"routes without a schema entry (describe them, see docs/operator-api.md): {missing}"
    described = sorted(AWAITING_DESCRIPTION & documented)
    assert not described, f"described now: remove them from AWAITING_DESCRIPTION: {described}"


def test_operations_declare_their_error_responses(schema):
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            codes = set(operation["responses"])
            if path in ("/health", "/ready", "/metrics"):  # service probes: 200, 503 or 403, no API errors
                continue
            assert codes & {"400", "401", "404"}, (method, path, codes)
            if operation.get("security") != [{}]:
                assert "401" in codes, (method, path)
            for code in codes - {"200", "201", "204"}:
                content = operation["responses"][code]["content"]["application/json"]["schema"]["$ref"]
                assert content.endswith(("/Error", "/AnthropicError", "/CohereError")), (method, path, code)
    chat = schema["paths"]["/v1/chat/completions"]["post"]
    assert {"400", "401", "403", "404", "413", "429", "502", "503"} <= set(chat["responses"])
    assert "text/event-stream" in chat["responses"]["200"]["content"]
    assert chat["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/CreateChatCompletionRequest")


def test_request_schemas_list_what_the_validators_accept(schema):
    from routing.anthropic_format import REQUEST_KEYS
    from routing.validation import CHAT_FIELDS, COMPLETION_FIELDS, EMBEDDING_FIELDS

    components = schema["components"]["schemas"]
    assert set(components["CreateChatCompletionRequest"]["properties"]) == CHAT_FIELDS
    assert set(components["CreateEmbeddingRequest"]["properties"]) == EMBEDDING_FIELDS
    assert set(components["CreateCompletionRequest"]["properties"]) == COMPLETION_FIELDS
    assert set(components["AnthropicCreateMessageRequest"]["properties"]) == REQUEST_KEYS
    assert components["CreateChatCompletionRequest"]["required"] == ["messages", "model"]
    assert components["AnthropicCreateMessageRequest"]["required"] == ["max_tokens", "messages", "model"]


def test_secrets_are_write_only_in_the_schema(schema):
    components = schema["components"]["schemas"]
    assert "secret" not in components["ProviderKey"]["properties"]
    assert "secret" in components["ProviderKeyRequest"]["properties"]
    assert "key" not in components["TenantApiKey"]["properties"]
    assert "key" in components["TenantApiKeyWithSecret"]["properties"]
    for name, component in components.items():
        assert "hashed_key" not in component.get("properties", {}) and "encrypted_secret" not in component.get(
            "properties", {}), name


@pytest.mark.django_db
def test_docs_pages_work_offline():
    swagger = Client().get("/api/docs/")
    assert swagger.status_code == 200
    assert b"/static/drf_spectacular_sidecar/swagger-ui-dist/swagger-ui-bundle.js" in swagger.content
    assert finders.find("drf_spectacular_sidecar/swagger-ui-dist/swagger-ui-bundle.js")
    redoc = Client().get("/api/redoc/")
    assert redoc.status_code == 200 and b"drf_spectacular_sidecar/redoc" in redoc.content


@pytest.mark.django_db
def test_the_schema_is_served_the_same_once_generated():
    """The first request generates the schema (drf-spectacular's own response), later ones serve
    the process's copy: the same body, under the same file name, in the negotiated format."""
    client = Client()
    answers = [client.get("/api/schema/", HTTP_ACCEPT=accept)
               for accept in ("application/vnd.oai.openapi+json", "application/vnd.oai.openapi+json",
                              "application/vnd.oai.openapi")]
    assert [answer.status_code for answer in answers] == [200] * 3
    first, second, yaml_answer = answers
    assert second.content == first.content
    assert second["Content-Disposition"] == first["Content-Disposition"]
    assert re.fullmatch(r'inline; filename=".+\.json"', second["Content-Disposition"])
    assert re.fullmatch(r'inline; filename=".+\.yaml"', yaml_answer["Content-Disposition"])
    assert yaml_answer.content.startswith(b"openapi:")
