"""The operator console: static files (plain JS modules and CSS, no build step, nothing from a
CDN) served under `/console/` with a strict Content-Security-Policy. The page signs in with the
admin API key and uses the admin API only; the key is sent as a bearer token by the page's own
scripts (kept in sessionStorage), never as a cookie, so this server side holds no state.

The policy allows scripts, styles, media and fetches from this origin only and no inline script
or style: the page renders everything it shows from calls (attacker-controlled text) as text."""

from __future__ import annotations

from pathlib import Path

from starlette.routing import Mount
from starlette.staticfiles import StaticFiles
from starlette.types import Message, Receive, Scope, Send

STATIC_DIR = Path(__file__).parent / "static"
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "media-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
HEADERS = [
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"cache-control", b"no-cache"),
]


class ConsoleFiles:
    """`StaticFiles` over the console's directory, every answer carrying `HEADERS`."""

    def __init__(self, directory: Path = STATIC_DIR) -> None:
        self.files = StaticFiles(directory=directory, html=True)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                names = {name for name, _ in HEADERS}
                kept = [(n, v) for n, v in message.get("headers", []) if n.lower() not in names]
                message = {**message, "headers": kept + HEADERS}
            await send(message)

        await self.files(scope, receive, with_headers)


routes = [Mount("/console", app=ConsoleFiles(), name="console")]
