"""The admin API's OpenAPI document: served, exactly the app's admin routes, and held to by a
real `gateway serve` under schemathesis (tests/api/test_openapi_fuzz.py)."""

from __future__ import annotations

import httpx
from starlette.routing import Route

from gateway.api.openapi import OPENAPI_PATH, SECURITY_SCHEME, document
from gateway.app import create_app
from gateway.config import parse_config
from support import API_KEY, base_config

NOT_ADMIN = ("/api/v1/telephony/", "/api/v1/recordings/", "/api/v1/transcripts/")


def test_the_document_names_exactly_the_admin_routes(tmp_path):
    app = create_app(parse_config(base_config(tmp_path), env={}))
    served = {(method.lower(), route.path) for route in app.routes if isinstance(route, Route)
              and route.path.startswith("/api/v1/") and not route.path.startswith(NOT_ADMIN)
              for method in route.methods or () if method != "HEAD"}
    documented = {(method, path) for path, item in document()["paths"].items() for method in item}
    assert documented == served
    for path, item in document()["paths"].items():
        for method, operation in item.items():
            if path == OPENAPI_PATH:
                assert operation["security"] == []
                continue
            assert "401" in operation["responses"], (method, path)
            assert "security" not in operation  # the document's own: the admin key


def test_served_as_openapi_3_1_with_the_admin_key_scheme(gateway_server):
    server = gateway_server()
    answer = httpx.get(server.url + OPENAPI_PATH)  # public: it holds no secret
    assert answer.status_code == 200 and answer.json() == document()
    doc = answer.json()
    assert doc["openapi"] == "3.1.0"
    assert doc["components"]["securitySchemes"][SECURITY_SCHEME] == {
        "type": "http", "scheme": "bearer", "description": "the gateway's `api_key`: `Authorization: Bearer <api_key>`"}
    assert doc["security"] == [{SECURITY_SCHEME: []}]
    # Request bodies are the very models the routes validate with.
    call_body = doc["paths"]["/api/v1/calls"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert call_body == {"$ref": "#/components/schemas/CallSpec"}
    assert set(doc["components"]["schemas"]["CallSpec"]["required"]) == {"to", "workflow_id", "user_id"}
    assert "from" in doc["components"]["schemas"]["CallSpec"]["properties"]
    assert httpx.get(server.url + "/api/v1/calls", headers={"Authorization": f"Bearer {API_KEY}"}).status_code == 200
