"""`gateway webhooks listen`: a local receiver that verifies Standard Webhooks signatures and prints
every request that arrives, for trying a subscription without writing a receiver first.

A request that verifies (or any request, with no `--secret`) is answered `--status` (204 by
default; pass 500 to watch the gateway retry); one whose signature does not verify is answered
401 naming why, so the gateway records the failure as a receiver would.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from gateway import jsontext
from gateway.commands.output import emit, emit_json
from gateway.webhooks.signing import decode_signing_secret, verify_standard

MAX_BODY = 1 << 20


class WebhookListener:
    """The receiver as a raw ASGI app: read, verify, print, answer."""

    def __init__(
        self, secret: str | None, *, status: int = 204, as_json: bool = False, clock: Callable[[], float] = time.time
    ) -> None:
        if secret is not None:
            decode_signing_secret(secret)  # ValueError (without the secret) when malformed
        self.secret = secret
        self.status = status
        self.as_json = as_json
        self.clock = clock

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if len(body) > MAX_BODY or not message.get("more_body"):
                break
        headers = {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in scope["headers"]}
        problem = None if self.secret is None else verify_standard(self.secret, headers, body, now=self.clock())
        self.show(scope, headers, body, problem)
        status = 401 if problem else self.status
        text = (problem or "").encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(text)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": text})

    def show(self, scope: dict[str, Any], headers: dict[str, str], body: bytes, problem: str | None) -> None:
        verdict = "unchecked" if self.secret is None else ("invalid" if problem else "ok")
        try:
            parsed: Any = jsontext.loads(body) if body else None
        except ValueError:
            parsed = body.decode("utf-8", "replace")
        path = scope["path"] + (f"?{scope['query_string'].decode('latin-1')}" if scope.get("query_string") else "")
        received = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
        if self.as_json:
            emit_json(
                {
                    "received_at": received,
                    "method": scope["method"],
                    "path": path,
                    "signature": verdict,
                    "problem": problem,
                    "headers": headers,
                    "body": parsed,
                }
            )
            return
        kind = parsed.get("type") if isinstance(parsed, dict) else None
        run = parsed.get("workflow_run_id") if isinstance(parsed, dict) else None
        emit(
            f"{received}  {scope['method']} {path}  signature {verdict}{f' ({problem})' if problem else ''}"
            f"  {kind or '-'}  run={run or '-'}  webhook-id={headers.get('webhook-id', '-')}"
        )
        if body:
            emit("  " + (jsontext.dumps(parsed) if not isinstance(parsed, str) else parsed)[:4000])


def listen(host: str, port: int, listener: WebhookListener) -> int:
    """Serve `listener` until Ctrl-C."""
    import uvicorn

    config = uvicorn.Config(
        listener, host=host, port=port, log_level="warning", lifespan="off", proxy_headers=False, server_header=False
    )
    if not listener.as_json:
        check = (
            "verifying Standard Webhooks signatures" if listener.secret else "not verifying signatures (no --secret)"
        )
        emit(
            f"listening on http://{host}:{port}/ ({check}); point a webhook's url here and "
            f"allow_networks: [127.0.0.0/8]. Ctrl-C to stop"
        )
    server = uvicorn.Server(config)
    server.run()
    return 0 if server.started else 1
