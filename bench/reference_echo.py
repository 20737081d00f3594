"""The reference the media bridge is measured against: a bare Starlette JSON echo of Twilio media.

Run by hand:  .venv/bin/python bench/reference_echo.py --port 9200 [--variant starlette|asgi]

`starlette` (the project's reference): a Starlette WebSocket endpoint that receives each Twilio
`media` message, `json.loads` it, and sends a `media` message with the same payload back with
`json.dumps`. `asgi`: the same echo on raw ASGI `receive`/`send`, without Starlette's wrapper.
Served by uvicorn with the options `gateway serve` uses, on 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect


async def starlette_echo(ws: WebSocket) -> None:
    await ws.accept()
    sid = None
    try:
        while True:
            message = json.loads(await ws.receive_text())
            event = message.get("event")
            if event == "media":
                await ws.send_text(json.dumps({"event": "media", "streamSid": sid, "media": {"payload": message["media"]["payload"]}}))
            elif event == "start":
                sid = message["start"]["streamSid"]
            elif event == "stop":
                break
    except WebSocketDisconnect:
        return
    await ws.close()


async def asgi_echo(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    if scope["type"] != "websocket":
        await send({"type": "http.response.start", "status": 404, "headers": []})
        await send({"type": "http.response.body", "body": b""})
        return
    await receive()  # websocket.connect
    await send({"type": "websocket.accept"})
    sid = None
    while True:
        event = await receive()
        if event["type"] == "websocket.disconnect":
            return
        message = json.loads(event.get("text") or "{}")
        kind = message.get("event")
        if kind == "media":
            text = json.dumps({"event": "media", "streamSid": sid, "media": {"payload": message["media"]["payload"]}})
            await send({"type": "websocket.send", "text": text})
        elif kind == "start":
            sid = message["start"]["streamSid"]
        elif kind == "stop":
            await send({"type": "websocket.close", "code": 1000})
            return


def app_for(variant: str) -> Any:
    if variant == "asgi":
        return asgi_echo
    return Starlette(routes=[WebSocketRoute("/ws", starlette_echo)])


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--variant", choices=["starlette", "asgi"], default="starlette")
    parser.add_argument("--loop", choices=["auto", "asyncio", "uvloop"], default="auto")
    args = parser.parse_args()
    uvicorn.run(app_for(args.variant), host="127.0.0.1", port=args.port, log_level="warning", proxy_headers=False,
                server_header=False, ws_max_size=1 << 20, lifespan="on", loop=args.loop)
